"""`keyrelay dev up|status|down` as a user runs them, and server reflection on every daemon it starts."""

from __future__ import annotations

import json
import socket

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from client_sdk import KmsClient
from devstack.stack import START_ORDER
from keyrelay.v1 import admin_pb2, directory_pb2, kms_pb2, registry_pb2, relay_pb2
from dev_stack_run import DevStackRun, free_port_base

pytestmark = pytest.mark.e2e

DAEMONS = set(START_ORDER)


def _json(done) -> dict:
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def _pids(report: dict) -> dict[str, int]:
    return {d["name"]: d["pid"] for d in report["daemons"]}


@pytest.fixture
def dev(tmp_path, e2e_tools):
    run = DevStackRun(tmp_path / "state", free_port_base())
    yield run
    run.run("down")
    run.kill_all()


def test_up_twice_down_twice_and_up_again_keeps_the_keys(dev):
    first = dev.run("up", "--port-base", str(dev.port_base), "-o", "json")
    assert first.returncode == 0, first.stderr
    report = _json(first)
    assert set(report["started"]) == DAEMONS
    assert {d["state"] for d in report["daemons"]} == {"serving"}
    assert all(path.exists() for path in dev.profiles.values())
    assert dev.state_dir.stat().st_mode & 0o777 == 0o700  # CA keys, credentials, DSNs: owner only
    with KmsClient(profile=dev.profiles["admin"]) as kms:
        sealing_key = kms.describe_key("alias/directory").key_id

    # Up again while up: nothing started, the same processes reported.
    again = dev.up()
    assert again.returncode == 0, again.stderr
    assert "already up" in again.stdout
    status = _json(dev.run("status", "-o", "json"))
    assert _pids(status) == _pids(report)
    assert dev.run("status").returncode == 0

    down = dev.run("down", "-o", "json")
    assert down.returncode == 0, down.stderr
    outcomes = _json(down)["stopped"]
    assert set(outcomes) == DAEMONS and all(o.startswith("stopped") for o in outcomes.values()), outcomes
    state = dev.stack().load_state()
    assert all(d.pid is None for d in state["daemons"].values())
    for name, pid in _pids(report).items():
        assert not _process_running(pid), f"{name} (pid {pid}) still runs after dev down"

    # Down again: nothing to stop, and it says so.
    twice = dev.run("down")
    assert twice.returncode == 0, twice.stderr
    assert "no dev cluster is running" in twice.stdout
    stopped = dev.run("status", "-o", "json")
    assert stopped.returncode == 1
    assert {d["state"] for d in _json(stopped)["daemons"]} == {"stopped"}

    # Up after down: the same cluster, with the same keys, from the same state directory.
    restarted = dev.up()
    assert restarted.returncode == 0, restarted.stderr
    with KmsClient(profile=dev.profiles["admin"]) as kms:
        assert kms.describe_key("alias/directory").key_id == sealing_key


def _process_running(pid: int) -> bool:
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _listen(port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_up_with_a_port_taken_names_the_port_and_the_fix_and_starts_nothing(dev):
    with _listen(dev.port_base + 5):
        done = dev.up()
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("keyrelay: ") and f"{dev.port_base + 5} (relay)" in line and "--port-base" in line, line
    assert not dev.stack().exists()  # nothing prepared, nothing started

    assert dev.up().returncode == 0
    assert dev.run("down").returncode == 0
    # With the cluster prepared, a taken port stops `up` before any daemon starts.
    with _listen(dev.port_base):
        done = dev.up()
    assert done.returncode == 1
    assert f"{dev.port_base} (gateway)" in done.stderr and "ss -ltnp" in done.stderr, done.stderr
    state = dev.stack().load_state()
    assert all(d.pid is None for d in state["daemons"].values())
    assert {d["state"] for d in _json(dev.run("status", "-o", "json"))["daemons"]} == {"stopped"}


# Every service each daemon serves, as server reflection lists them.
HEALTH, REFLECTION = "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"
KMS = "keyrelay.v1.KeyManagementService"
REGISTRY, ACCESS_REGISTRY = "keyrelay.v1.KeyRegistryService", "keyrelay.v1.AccessRegistryService"
EXPECTED_SERVICES = {
    "shared-1": {KMS, REGISTRY, ACCESS_REGISTRY, "keyrelay.v1.AdminService", HEALTH, REFLECTION},
    "shared-2": {KMS, REGISTRY, ACCESS_REGISTRY, "keyrelay.v1.AdminService", HEALTH, REFLECTION},
    "dedicated": {KMS, HEALTH, REFLECTION},
    "private-endpoint": {KMS, HEALTH, REFLECTION},
    "gateway": {KMS, "keyrelay.v1.AdminService", HEALTH, REFLECTION},
    "relay": {"keyrelay.v1.DirectoryService", "keyrelay.v1.RelayService", HEALTH, REFLECTION},
}


def _list_services(target: str, credentials: grpc.ChannelCredentials | None) -> set[str]:
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        return {service.name for response in responses for service in response.list_services_response.service}


def test_reflection_lists_every_service_of_every_daemon(dev_stack):
    from client_sdk.credentials import load_profile
    from foundation.tls import channel_credentials_from_pem

    state = dev_stack.stack().load_state()
    daemons = state["daemons"]
    listed = {name: _list_services(daemons[name].address, daemons[name].credentials()) for name in START_ORDER}
    app = load_profile(dev_stack.profiles["app"]).credentials
    listed["private-endpoint"] = _list_services(
        state["private_endpoints"]["dev-dedicated"],
        channel_credentials_from_pem(app.ca_cert, app.client_cert, app.client_key),
    )
    assert listed == EXPECTED_SERVICES
    # And every service the protos define is served by some daemon.
    defined = {
        service.full_name
        for module in (admin_pb2, directory_pb2, kms_pb2, registry_pb2, relay_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
    }
    assert defined <= set().union(*listed.values())
