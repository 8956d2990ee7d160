"""Several replicas of every role on one PostgreSQL: `keyrelay dev up --postgres DSN --replicas 2`
starts two gateways, two shared nodes, two dedicated nodes and two relays as processes.

- alice sends through relay A while bob is subscribed on relay B: every message arrives once,
  promptly (LISTEN/NOTIFY, not the periodic recheck);
- a key created through gateway A is usable through gateway B at once;
- every server connection terminated (`pg_terminate_backend`) in the middle of a load: the services
  reconnect by themselves and nothing acknowledged (key, record, message) is lost.

The cluster runs in a PostgreSQL database of its own, dropped at the end.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
import time
import uuid
from dataclasses import dataclass, field

import pytest

from client_sdk import KmsClient, RelayClient
from client_sdk.credentials import load_profile
from client_sdk.types import SealedPublicKey
from dev_stack_run import DevStackRun, free_port_base
from foundation.errors import KeyrelayError, ResourceExhaustedError

pytestmark = pytest.mark.e2e

MESSAGES = 500


@dataclass
class Database:
    """A database of this test's own on the test server."""

    name: str
    dsn: str
    admin: object

    def terminate_every_backend(self) -> int:
        """pg_terminate_backend on every other connection to this database; how many it ended."""
        with self.admin() as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.name,),
            ).fetchall()
        return sum(1 for (done,) in rows if done)


@pytest.fixture(scope="module")
def database(postgres_admin):
    name = f"kr_e2e_{uuid.uuid4().hex[:10]}"
    with postgres_admin() as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield Database(name, postgres_admin.url.rsplit("/", 1)[0] + f"/{name}", postgres_admin)
    finally:
        with postgres_admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, e2e_tools, database):
    run = DevStackRun(tmp_path_factory.mktemp("replicas") / "state", free_port_base(40))
    with run.running("--postgres", database.dsn, "--replicas", "2"):
        yield run


def _address(cluster: DevStackRun, name: str) -> str:
    return cluster.stack().load_state()["daemons"][name].address


def _kms(cluster: DevStackRun, profile: str, gateway: str) -> KmsClient:
    return KmsClient(_address(cluster, gateway), profile=load_profile(cluster.profiles[profile]), timeout=20)


def _relay(cluster: DevStackRun, name: str, token: str | None = None) -> RelayClient:
    return RelayClient(_address(cluster, name), device_token=token, timeout=10, retry_seconds=60)


def test_two_of_each_role_serve_on_postgres(cluster):
    state = cluster.stack().load_state()
    assert set(state["order"]) == {
        "shared-1", "shared-2", "dedicated", "dedicated-2", "gateway", "gateway-2", "relay", "relay-2"
    }
    assert set(state["postgres"]) == {"shared", "dedicated", "relay"}
    status = cluster.stack().status()
    assert status.all_serving, status


def test_a_key_created_through_one_gateway_is_usable_through_the_other_at_once(cluster):
    for instance in ("", "dev-dedicated"):
        with _kms(cluster, "admin", "gateway") as admin_a:
            key = admin_a.create_key(description="made through gateway A", instance_id=instance)
        with _kms(cluster, "app", "gateway-2") as app_b, _kms(cluster, "admin", "gateway-2") as admin_b:
            assert admin_b.describe_key(key.key_id).instance_id == instance
            blob = app_b.encrypt(key.key_id, b"through B", context={"via": "b"}).ciphertext_blob
            assert app_b.decrypt(blob, context={"via": "b"}).plaintext == b"through B"


def test_messages_sent_on_relay_a_reach_a_subscriber_on_relay_b_once_and_promptly(cluster):
    suffix = uuid.uuid4().hex[:6]
    with _relay(cluster, "relay") as alice:
        alice.create_account(f"alice-{suffix}")
        with _relay(cluster, "relay-2") as bob:
            bob.create_account(f"bob-{suffix}")
            received: dict[str, float] = {}
            duplicates: list[str] = []
            subscription = bob.subscribe()
            ready = threading.Event()

            def follow() -> None:
                ready.set()
                for message in subscription:
                    cid = message.client_message_id
                    if cid in received:
                        duplicates.append(cid)
                    received.setdefault(cid, time.monotonic())
                    if len(received) >= MESSAGES:
                        return

            reader = threading.Thread(target=follow, daemon=True)
            reader.start()
            ready.wait(10)
            time.sleep(0.5)  # the stream is open on relay B before the first send
            sent_at: dict[str, float] = {}
            for index in range(MESSAGES):
                cid = f"m-{index:04d}"
                alice.send(f"bob-{suffix}", os.urandom(256), client_message_id=cid)
                sent_at[cid] = time.monotonic()
                time.sleep(0.002)  # a steady stream, not one burst
            reader.join(timeout=60)
            subscription.cancel()
    assert len(received) == MESSAGES, f"{MESSAGES - len(received)} messages did not arrive on relay B"
    assert not duplicates
    latencies = sorted(received[cid] - sent_at[cid] for cid in sent_at)
    p99 = latencies[int(0.99 * len(latencies)) - 1]
    print(f"relay A -> relay B: p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    assert p99 < 1.0, f"p99 {p99:.3f}s"


@dataclass
class Acknowledged:
    """What the services acknowledged during the load (and so must still hold afterwards)."""

    keys: list[str] = field(default_factory=list)
    records: list[tuple[str, int]] = field(default_factory=list)
    messages: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _paced(call):
    """`call()`, waiting out the relay's per-account rate limit (the checks read thousands of records)."""
    while True:
        try:
            return call()
        except ResourceExhaustedError:
            time.sleep(0.05)


def test_terminating_every_connection_mid_load_loses_nothing_acknowledged(cluster, database):
    suffix = uuid.uuid4().hex[:6]
    acked = Acknowledged()
    stop = threading.Event()
    with _relay(cluster, "relay") as setup:
        recipient = setup.create_account(f"inbox-{suffix}")

    def keys() -> None:
        with _kms(cluster, "admin", "gateway") as kms:
            while not stop.is_set():
                try:
                    key = kms.create_key(description="load")
                except KeyrelayError as exc:  # an outage may fail a call; it must not lose one
                    with acked.lock:
                        acked.failures.append(f"CreateKey: {exc.reason}")
                    continue
                with acked.lock:
                    acked.keys.append(key.key_id)

    def messages(relay: str, sender: str) -> None:
        with _relay(cluster, relay) as client:
            client.create_account(sender)
            index = 0
            while not stop.is_set():
                cid = f"{sender}-{index}"
                index += 1
                try:
                    client.send(recipient.user_id, os.urandom(128), client_message_id=cid)
                except KeyrelayError as exc:
                    with acked.lock:
                        acked.failures.append(f"Send: {exc.reason}")
                    continue
                with acked.lock:
                    acked.messages.add(cid)

    def records(relay: str, user: str) -> None:
        with _relay(cluster, relay) as client:
            client.create_account(user)
            version = 0
            while not stop.is_set():
                version += 1
                sealed = SealedPublicKey(user, version, os.urandom(64), os.urandom(40))
                try:
                    client.publish_record(sealed, "load-key")
                except KeyrelayError as exc:
                    # Not acknowledged (it may still have been stored: an UNAVAILABLE from a
                    # commit whose answer was lost); the next version comes after it either way.
                    with acked.lock:
                        acked.failures.append(f"PublishRecord: {exc.reason}")
                    continue
                with acked.lock:
                    acked.records.append((user, version))

    workers = [
        threading.Thread(target=keys),
        threading.Thread(target=messages, args=("relay", f"sender-a-{suffix}")),
        threading.Thread(target=messages, args=("relay-2", f"sender-b-{suffix}")),
        threading.Thread(target=records, args=("relay-2", f"writer-{suffix}")),
    ]
    for worker in workers:
        worker.start()
    terminated = []
    try:
        for _ in range(3):
            time.sleep(2.0)
            terminated.append(database.terminate_every_backend())
        time.sleep(3.0)  # the load goes on after the last outage
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=120)
    assert all(count > 0 for count in terminated), terminated
    with acked.lock:
        counts = (len(acked.keys), len(acked.messages), len(acked.records))
    print(f"acknowledged keys/messages/records: {counts}; connections terminated: {terminated}; "
          f"failed calls: {dict(Counter(acked.failures))}")
    assert min(counts) > 0

    # The services answer again without a restart: every daemon is healthy.
    assert cluster.stack().status().all_serving

    # Nothing acknowledged is lost: keys, directory records, messages.
    with _kms(cluster, "admin", "gateway-2") as kms:
        for key_id in acked.keys:
            assert kms.describe_key(key_id).state == "ENABLED"
    with _relay(cluster, "relay", recipient.device_token) as reader:
        for user, version in acked.records:
            assert _paced(lambda: reader.get_record(user, version)).record_version == version
    with _relay(cluster, "relay-2", recipient.device_token) as inbox:
        stored: set[str] = set()
        subscription = inbox.subscribe(timeout=30)
        try:
            for message in subscription:
                stored.add(message.client_message_id)
                if stored >= acked.messages:
                    break
        finally:
            subscription.cancel()
    assert acked.messages <= stored, f"{len(acked.messages - stored)} acknowledged messages are missing"
