"""Every RPC of every daemon, fed hostile request bodies, answers with a deliberate status.

The daemons run in this process on loop threads: the KMS as `InProcessCluster` (gateway with
zones public, vpc and ops; the dedicated instance's private endpoint; the shared node's internal
port, reached with the gateway's own internal certificate, as only the gateway can), and a relay.
Each daemon is fuzzed on every method of every service its server code registers, in two
phases, with bodies sent exactly as built (the channels' multicallables have no serializers):

- the sweep, the same bodies every run (`proto_fuzz.sweep_bodies`): a workable request per
  method, then that request with each field in turn at the extremes of its type, real blobs and
  page tokens changed in fixed ways, and two bodies that must not parse;
- hypothesis: a method, a caller and a body from `proto_fuzz.request_bodies` (well-formed
  messages with extreme field values, a workable request with one field drawn so, hostile wire
  bytes), as many as the daemon's share of the calls leaves.

Most callers hold real power (an admin access point of tenant acme, which owns the keys; a relay
account's device token), and hints fill fields with real key ids, ciphertexts, sealed records
and page tokens, and mutations of them, so that requests get past authentication and the first
lookups into the handlers.

A call fails the run when it answers INTERNAL or UNKNOWN (an unexpected exception, or a body
the server could not parse and did not refuse as INVALID_ARGUMENT), or when a record at ERROR or
above reaches the log while it runs. Every daemon must still answer its health check and one
ordinary request afterwards.

Failures are collected per daemon and reported together at the end, grouped by status, details
and logged exception, each with the methods that met it and the smallest bodies that triggered
it, rather than stopping at the first.

Environment:

- KEYRELAY_FUZZ_EXAMPLES: calls in all, sweeps included, shared out between the daemons by their
  number of methods (default 3000; `make fuzz` makes 50000).
- KEYRELAY_FUZZ_SEED: replay a run with the seed its report names (default: a fresh seed).
- KEYRELAY_FUZZ_SHRINK=1: stop at the first failing call instead. A failing sweep call is the same
  every run; a drawn one hypothesis shrinks and keeps in its example database (.hypothesis/),
  which replays it first on the next run.
"""

from __future__ import annotations

import base64
import logging
import os
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import proto_fuzz as pf
from client_sdk import KmsClient
from foundation.pki import make_key_and_csr
from foundation.wire import ACCESS_POINT_METADATA_KEY, TENANT_METADATA_KEY
from inprocess_cluster import Credentials, InProcessCluster
from keyrelay.v1 import directory_pb2, directory_pb2_grpc, kms_pb2, kms_pb2_grpc, relay_pb2, relay_pb2_grpc
from kms_gateway import server as gateway_server
from kms_node import server as node_server
from loop_thread import LoopThread
from relay import server as relay_server
from relay.config import RateLimitConfig, RelayConfig, StoreConfig

EXAMPLES = int(os.environ.get("KEYRELAY_FUZZ_EXAMPLES", "3000"))
SEED = os.environ.get("KEYRELAY_FUZZ_SEED", "")
SHRINK = os.environ.get("KEYRELAY_FUZZ_SHRINK", "") == "1"

INSTANCE = "acme-vault"
#: Long enough for any honest call on a slow machine; a call that takes longer answers
#: DEADLINE_EXCEEDED, which is no failure, but shows among the statuses the report counts.
CALL_TIMEOUT = 20.0
#: How long a Subscribe stream is read (a few messages, or until this deadline) before it is left.
STREAM_WINDOW = 0.1
STREAM_ITEMS = 3
STREAM_SETTLE = 0.02
BAD_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})

#: Methods that change the key they name: they get keys kept for them, so that the keys the other
#: methods use stay enabled, undeleted and decryptable for the whole run.
KEY_CHANGING = frozenset({
    "EnableKey", "DisableKey", "ScheduleKeyDeletion", "CancelKeyDeletion", "RotateKey", "UpdateKey", "CreateAlias",
    "DeleteAlias", "CommitKey", "AbortKey", "UpdateKeyRecord",
})


# What each daemon serves, as its server code lists it for health and reflection, so that a
# service added there is fuzzed here too.
GATEWAY_SERVICES = gateway_server.SERVICE_NAMES
PRIVATE_ENDPOINT_SERVICES = [node_server.KMS_SERVICE_NAME]
SHARED_NODE_SERVICES = [node_server.KMS_SERVICE_NAME, *node_server.SHARED_SERVICE_NAMES]
RELAY_SERVICES = relay_server.SERVICE_NAMES


def methods_of(service_names) -> list:
    """Every method of the named services."""
    pool = descriptor_pool.Default()
    return [m for name in service_names for m in pool.FindServiceByName(name).methods]


#: Methods fuzzed in all, over which the examples are shared out.
TOTAL_METHODS = sum(
    len(methods_of(names))
    for names in (GATEWAY_SERVICES, PRIVATE_ENDPOINT_SERVICES, SHARED_NODE_SERVICES, RELAY_SERVICES)
)


def method_path(method) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


# -- callers and calls ------------------------------------------------------------------------------


@dataclass
class Caller:
    """Who a call comes from: a channel (its TLS identity) and call metadata."""

    label: str
    channel: grpc.Channel
    metadata: tuple[tuple[str, str], ...] = ()
    multicallables: dict[str, object] = field(default_factory=dict)  # method path -> its multicallable

    def __repr__(self) -> str:  # hypothesis prints draws: the label, not the token
        return f"Caller({self.label!r})"


@dataclass
class Daemon:
    """What one daemon serves and how to fuzz it."""

    name: str
    methods: list  # MethodDescriptors of every service it serves
    callers: list[tuple[int, Caller]]  # (weight, caller); the first also makes the sweep's calls
    hints: Callable[[object], pf.Hints]  # a method's field hints
    sweep: Callable[[object], list[pf.Body]]  # a method's sweep bodies
    probe: Callable[[], list[str]]  # after the run: health and one normal request; problems found


def settle() -> None:
    """Let a server finish with a stream we have left, so that what it logs then is charged to
    its call: it closes its side of a cancelled or expired stream after we return."""
    time.sleep(STREAM_SETTLE)


def send(caller: Caller, method, body: bytes) -> tuple[grpc.StatusCode, str]:
    """Send `body` as is; the status and details of the answer. A server stream is read for a
    few messages or STREAM_WINDOW, then left."""
    path = method_path(method)
    if path not in caller.multicallables:
        make = caller.channel.unary_stream if method.server_streaming else caller.channel.unary_unary
        caller.multicallables[path] = make(path)  # no serializers: the body goes out byte for byte
    multicallable = caller.multicallables[path]
    try:
        if method.server_streaming:
            stream = multicallable(body, metadata=caller.metadata, timeout=STREAM_WINDOW)
            try:
                for count, _ in enumerate(stream, 1):
                    if count >= STREAM_ITEMS:
                        stream.cancel()
                        break
            finally:
                settle()
        else:
            multicallable(body, metadata=caller.metadata, timeout=CALL_TIMEOUT)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def health_problems(name: str, channel: grpc.Channel) -> list[str]:
    try:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    except grpc.RpcError as exc:
        return [f"{name}: health check failed: {exc.code().name} {exc.details()}"]
    if status != health_pb2.HealthCheckResponse.SERVING:
        return [f"{name}: health check answers {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}"]
    return []


def normal_request(name: str, request: Callable[[], object]) -> list[str]:
    try:
        request()
    except grpc.RpcError as exc:
        return [f"{name}: an ordinary request failed: {exc.code().name} {exc.details()}"]
    except Exception as exc:  # noqa: BLE001 - the SDK's own errors: any failure is the finding
        return [f"{name}: an ordinary request failed: {type(exc).__name__}: {exc}"]
    return []


# -- findings -------------------------------------------------------------------------------------

_TYPES = re.compile(r"\bkeyrelay\.v1\.\w+")
_ADDRESSES = re.compile(r"\b0x[0-9a-f]+\b|\bTask-\d+\b")
_IDS = re.compile(r"\b[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\b|\b[0-9a-f]{16,}\b", re.I)
_NUMBERS = re.compile(r"\d{3,}")
_METHODS = re.compile(r"/keyrelay\.v1\.\w+/\w+")


def normalize(text: str) -> str:
    """Details or a log line without what differs between calls of one failure: ids, long
    numbers, addresses, the method's and its request type's names."""
    text = _TYPES.sub("<type>", _METHODS.sub("<method>", text))
    return _NUMBERS.sub("N", _IDS.sub("<id>", _ADDRESSES.sub("0x?", text)))[:300]


#: Thread id -> the daemon whose event loop runs on it, to say where a record was logged.
DAEMON_THREADS: dict[int, str] = {}


def log_line(record: logging.LogRecord) -> str:
    where = f" (on the {DAEMON_THREADS[record.thread]})" if record.thread in DAEMON_THREADS else ""
    line = f"{record.levelname} {record.name}{where}: {record.getMessage().splitlines()[0]}"
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        line += f" [{type(exc).__module__}.{type(exc).__qualname__}: {str(exc)[:200]}]"
    return line


@dataclass
class Hit:
    """One failing call."""

    method: str
    caller: str
    code: str
    details: str
    body: pf.Body
    described: str
    logs: list[str]
    previous: str  # the call before, which a late log record may belong to

    @property
    def bad_status(self) -> bool:
        return self.code in {c.name for c in BAD_CODES}

    def render(self) -> str:
        data = self.body.data
        lines = [
            f"{self.method} as {self.caller}: {self.code} {self.details[:200]!r}",
            f"    body: {len(data)} bytes {data[:32].hex()}{'...' if len(data) > 32 else ''} ({self.body.kind})",
            f"    as a message: {self.described}",
        ]
        lines += [f"    log: {line[:400]}" for line in self.logs[:3]]
        if not self.bad_status:
            lines.append(f"    (the record may come from the call before: {self.previous})")
        return "\n".join(lines)


@dataclass
class Failure:
    """Failing calls that share a status, details and logged exception (whatever the method)."""

    code: str
    details: str
    logs: tuple[str, ...]
    smallest: dict[str, Hit] = field(default_factory=dict)  # method -> its smallest triggering call
    count: int = 0

    def render(self, index: int) -> str:
        methods = sorted(self.smallest)
        head = f"{index}. {self.code} {self.details!r}: {self.count} call(s), {len(methods)} method(s)"
        if self.logs:
            head += "\n   logged: " + "\n           ".join(line[:300] for line in self.logs)
        shown = methods if len(methods) <= 4 else sorted(methods, key=lambda m: len(self.smallest[m].body.data))[:3]
        examples = "\n".join("   e.g. " + self.smallest[m].render().replace("\n", "\n   ") for m in shown)
        rest = "" if len(methods) <= 4 else "\n   every method: " + ", ".join(m.rpartition("/")[2] for m in methods)
        return f"{head}\n{examples}{rest}"


class Findings:
    """The failing calls of one daemon's run, grouped into distinct failures."""

    def __init__(self, daemon: str, seed_value: int) -> None:
        self.daemon = daemon
        self.seed = seed_value
        self.failures: dict[tuple, Failure] = {}
        self.calls = 0
        self.codes: dict[str, int] = {}
        self.problems: list[str] = []

    def count(self, code: grpc.StatusCode) -> None:
        self.calls += 1
        self.codes[code.name] = self.codes.get(code.name, 0) + 1

    def add(self, hit: Hit) -> None:
        logs = tuple(sorted({normalize(line) for line in hit.logs}))
        # A call answered with a deliberate status but something logged an error: the record
        # makes the failure, whatever the status.
        key = (hit.code, normalize(hit.details), logs) if hit.bad_status else ("ERROR logged", "", logs)
        failure = self.failures.setdefault(key, Failure(*key))
        failure.count += 1
        known = failure.smallest.get(hit.method)
        if known is None or len(hit.body.data) < len(known.body.data):
            failure.smallest[hit.method] = hit

    def __bool__(self) -> bool:
        return bool(self.failures or self.problems)

    def report(self) -> str:
        codes = ", ".join(f"{name} {n}" for name, n in sorted(self.codes.items(), key=lambda kv: -kv[1]))
        lines = [
            f"{self.daemon}: {len(self.failures)} distinct failure(s) in {self.calls} calls ({codes})",
            f"seed {self.seed}: replay with KEYRELAY_FUZZ_SEED={self.seed} KEYRELAY_FUZZ_EXAMPLES={EXAMPLES}"
            f" (KEYRELAY_FUZZ_SHRINK=1 to shrink the first failure)",
        ]
        lines += [f"after the run: {problem}" for problem in self.problems]
        ordered = sorted(self.failures.values(), key=lambda f: (f.code, -len(f.smallest), f.details))
        lines += [failure.render(i) for i, failure in enumerate(ordered, 1)]
        return "\n".join(lines)


def examples_for(daemon: Daemon) -> int:
    """The daemon's share of the calls: in proportion to its methods, and at least a fifth (the
    relay has few methods, but each with much behind it)."""
    return max(EXAMPLES // 5, round(EXAMPLES * len(daemon.methods) / TOTAL_METHODS), 1)


class Campaign:
    """The calls of one daemon's run: each is sent, checked, and its failure recorded."""

    def __init__(self, daemon: Daemon, caplog, seed_value: int) -> None:
        self.daemon = daemon
        self.caplog = caplog
        self.findings = Findings(daemon.name, seed_value)
        self.previous = "none"

    def call(self, method, caller: Caller, body: pf.Body) -> None:
        path = method_path(method)
        logged = len(self.caplog.records)
        code, details = send(caller, method, body.data)
        self.findings.count(code)
        # The servers run on this process's loop threads: their records reach caplog, and a call's
        # own are in before its answer (servers log an error before they send its status).
        errors = [log_line(r) for r in self.caplog.records[logged:] if r.levelno >= logging.ERROR]
        if code in BAD_CODES or errors:
            hit = Hit(path, caller.label, code.name, details, body, pf.describe(method.input_type, body.data), errors,
                      self.previous)
            self.findings.add(hit)
            if SHRINK:
                raise AssertionError(f"{self.daemon.name} (seed {self.findings.seed}):\n{hit.render()}")
        self.previous = f"{path} as {caller.label}, {body!r}, answered {code.name}"


def fuzz(daemon: Daemon, caplog) -> None:
    """Run the daemon's share of the calls, then probe it; fail with every distinct failure.

    First the sweep (the same bodies every run, from the most powerful caller), then as many
    calls as the share leaves, drawn by hypothesis."""
    examples = examples_for(daemon)
    campaign = Campaign(daemon, caplog, int(SEED) if SEED else random.getrandbits(32))
    sweep = [(m, body) for m in daemon.methods for body in daemon.sweep(m)]
    if len(sweep) > examples:  # a small budget: a sample of the sweep, every method's part of it
        sweep = sweep[:: -(-len(sweep) // examples)]
    for method, body in sweep:
        campaign.call(method, daemon.callers[0][1], body)

    paths = {method_path(m): m for m in daemon.methods}
    bodies = {path: pf.request_bodies(m.input_type, daemon.hints(m)) for path, m in paths.items()}
    callers = pf.weighted(*((weight, st.just(caller)) for weight, caller in daemon.callers))

    @settings(
        max_examples=max(1, examples - len(sweep)),
        deadline=None,
        derandomize=False,
        # A run is a few thousand network calls with large bodies on purpose: no health check of
        # hypothesis's applies to it.
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @seed(campaign.findings.seed)
    @given(st.data())
    def run(data) -> None:
        path = data.draw(st.sampled_from(sorted(paths)), label="method")
        caller = data.draw(callers, label="caller")
        campaign.call(paths[path], caller, data.draw(bodies[path], label="body"))

    # One database entry per daemon, as hypothesis's pytest plugin keeps one per parameter.
    run.hypothesis.inner_test._hypothesis_internal_add_digest = daemon.name.encode()
    if examples > len(sweep):
        run()
    findings = campaign.findings
    logged = len(caplog.records)
    findings.problems += daemon.probe()
    findings.problems += [f"logged: {log_line(r)[:400]}" for r in caplog.records[logged:] if r.levelno >= logging.ERROR]
    assert not findings, findings.report()


# -- the KMS ----------------------------------------------------------------------------------


@dataclass
class Kms:
    """The running cluster, the callers' credentials, and real values for the hints."""

    cluster: InProcessCluster
    admin_point: str
    admin: Credentials
    crypto_point: str
    crypto: Credentials
    # Keys by where they live, "shared" or "dedicated", as ids and aliases:
    stable_refs: dict[str, list[str]]  # for every method but the KEY_CHANGING ones
    victim_refs: dict[str, list[str]]  # for the KEY_CHANGING methods
    sentinels: dict[str, str]  # a key id no fuzzed call names, for the probe
    blobs: dict[str, list[bytes]]  # ciphertexts under the stable keys
    sealed: dict[str, list[kms_pb2.SealedPublicKey]]  # records sealed under them
    foreign_refs: list[str]  # tenant globex's
    page_tokens: list[str]
    victim_points: list[str]
    victim_serials: list[str]
    victim_fingerprints: list[str]
    csr_pem: str
    channels: list[grpc.Channel] = field(default_factory=list)

    def channel(self, credentials: Credentials, target: str) -> grpc.Channel:
        channel = credentials.channel(target)
        self.channels.append(channel)
        return channel

    def internal_channel(self) -> grpc.Channel:
        channel = self.cluster.internal_channel(self.cluster.shared_target)
        self.channels.append(channel)
        return channel


@pytest.fixture(scope="module")
def kms(tmp_path_factory, softhsm):
    """The whole KMS for the module: acme's dedicated instance, access points of acme (admin,
    crypto user, three to be deleted and revoked) and of globex, keys of both kinds (to use, to
    change, and sentinels for the probes), real blobs, sealed records and page tokens."""
    cluster = InProcessCluster(tmp_path_factory.mktemp("fuzz-kms")).start()
    # The cluster keeps its servers' loop threads to itself; the reports name where a record was logged.
    for thread, server in cluster._threads:
        DAEMON_THREADS[thread.thread.ident] = (
            "gateway" if isinstance(server, gateway_server.GatewayServer) else f"{server.config.mode} node"
        )
    world = None
    try:
        with cluster.admin() as operator:
            operator.register_instance(INSTANCE, "acme", [cluster.dedicated_target], cluster.private_target)
            # A second instance of acme's, so that listing instances a page at a time gives a page
            # token; nothing answers at its endpoints, and no hint names it.
            operator.register_instance("acme-spare", "acme", ["127.0.0.1:1"], "127.0.0.1:1")
            admin_point = operator.create_access_point("acme", "fuzz-admin", ["admin"], ["*"]).access_point_id
            crypto_point = operator.create_access_point("acme", "fuzz-app", ["crypto-user"], ["*"]).access_point_id
            globex_point = operator.create_access_point("globex", "fuzz-globex", ["admin"], ["*"]).access_point_id
            admin, crypto = cluster.issue(admin_point, operator), cluster.issue(crypto_point, operator)
            globex = cluster.issue(globex_point, operator)
            victim_points, serials, fingerprints = [], [], []
            for n in range(3):
                point = operator.create_access_point("acme", f"fuzz-victim-{n}", ["crypto-user"], ["*"])
                issued = operator.issue_credential(point.access_point_id)
                victim_points.append(point.access_point_id)
                serials.append(issued.credential.serial)
                fingerprints.append(issued.credential.fingerprint_sha256)
        with KmsClient(cluster.zone_targets["ops"], credentials=admin.bundle, timeout=30,
                       private_endpoints={INSTANCE: cluster.private_target}) as acme:
            made = {}
            for alias, instance in (
                ("alias/fuzz-shared", ""), ("alias/fuzz-vault", INSTANCE),
                ("alias/fuzz-victim-a", ""), ("alias/fuzz-victim-b", ""), ("alias/fuzz-victim-vault", INSTANCE),
                ("alias/fuzz-sentinel", ""), ("alias/fuzz-sentinel-vault", INSTANCE),
            ):
                made[alias] = acme.create_key(alias=alias, instance_id=instance).key_id
            blobs, sealed = {}, {}
            for kind, alias in (("shared", "alias/fuzz-shared"), ("dedicated", "alias/fuzz-vault")):
                key_id = made[alias]
                blobs[kind] = [
                    acme.encrypt(key_id, b"fuzz payload").ciphertext_blob,
                    acme.encrypt(key_id, b"x", context={"purpose": "fuzz"}).ciphertext_blob,
                    acme.generate_data_key(key_id, number_of_bytes=32).ciphertext_blob,
                ]
                record = acme.seal_public_key(key_id, "alice", b"alice's public keys", 1)
                sealed[kind] = [kms_pb2.SealedPublicKey(
                    user_id=record.user_id, bundle_version=record.bundle_version,
                    sealed_bundle=record.sealed_bundle, wrapped_dek=record.wrapped_dek,
                )]
            tokens = [acme.list_keys(page_size=1).next_page_token]
        with cluster.admin(admin) as acme_admin:
            tokens.append(acme_admin.list_access_points("acme", page_size=1).next_page_token)
            tokens.append(acme_admin.list_instances(page_size=1).next_page_token)
        assert all(tokens), f"a listing gave no page token: {tokens}"
        with KmsClient(cluster.zone_targets["ops"], credentials=globex.bundle, timeout=30) as other:
            foreign = other.create_key(alias="alias/fuzz-shared").key_id
        world = Kms(
            cluster=cluster, admin_point=admin_point, admin=admin, crypto_point=crypto_point, crypto=crypto,
            stable_refs={"shared": [made["alias/fuzz-shared"], "alias/fuzz-shared"],
                         "dedicated": [made["alias/fuzz-vault"], "alias/fuzz-vault"]},
            victim_refs={"shared": [made["alias/fuzz-victim-a"], made["alias/fuzz-victim-b"], "alias/fuzz-victim-a"],
                         "dedicated": [made["alias/fuzz-victim-vault"], "alias/fuzz-victim-vault"]},
            sentinels={"shared": made["alias/fuzz-sentinel"], "dedicated": made["alias/fuzz-sentinel-vault"]},
            blobs=blobs, sealed=sealed, foreign_refs=[foreign], page_tokens=tokens, victim_points=victim_points,
            victim_serials=serials, victim_fingerprints=fingerprints, csr_pem=make_key_and_csr()[1].decode(),
        )
        yield world
    finally:
        for channel in world.channels if world else ():
            channel.close()
        cluster.stop()


def _csr_variants(pem: str) -> st.SearchStrategy[str]:
    """A real CSR, its DER changed and wrapped as PEM again, and its PEM text cut short."""
    lines = pem.strip().splitlines()
    der = base64.b64decode("".join(lines[1:-1]))

    def rewrap(changed: bytes) -> str:
        return f"{lines[0]}\n{base64.encodebytes(changed).decode()}{lines[-1]}\n"

    return st.one_of(
        st.just(pem),
        pf.mutations(st.just(der)).map(rewrap),
        st.integers(0, len(pem)).map(lambda n: pem[:n]),
        st.just(pem * 2),
    )


def kms_hints(world: Kms, method, kinds=("shared", "dedicated")) -> pf.Hints:
    """Real values for the KMS's fields, chosen per method, naming keys of the given kinds."""
    refs = world.victim_refs if method.name in KEY_CHANGING else world.stable_refs
    keys = [ref for kind in kinds for ref in refs[kind]]
    stable = [ref for kind in kinds for ref in world.stable_refs[kind]]
    key_refs = pf.choice(keys + world.foreign_refs + ["", "alias/fuzz-nothing", str(uuid.uuid4())])
    # Aliases to make, move or delete: another key's too, except where the call could take it away.
    aliases = ["alias/fuzz-victim-b", "alias/fuzz-new"] + ([] if method.name in KEY_CHANGING else ["alias/fuzz-shared"])
    blobs = pf.choice([blob for kind in kinds for blob in world.blobs[kind]])
    sealed = pf.choice([record for kind in kinds for record in world.sealed[kind]])
    return {
        "key_id": key_refs,
        "key_ref": key_refs,
        "destination_key_id": pf.choice(stable),
        "alias": pf.weighted((1, pf.choice(aliases)), (1, pf.texts().map(lambda s: "alias/" + s))),
        "instance_id": pf.choice([INSTANCE, "", "globex-vault", "fuzz-nothing"]),
        "tenant_id": pf.choice(["acme", "globex", "operator", ""]),
        "ciphertext_blob": pf.weighted((1, blobs), (3, pf.mutations(blobs))),
        "encryption_context": pf.choice([{}, {"purpose": "fuzz"}]),
        "number_of_bytes": pf.choice([16, 32, 64, 1024]),
        "sealed": sealed,
        "SealedPublicKey.user_id": pf.choice(["alice", "bob", ""]),
        "SealedPublicKey.bundle_version": pf.choice([0, 1, 2]),
        "SealedPublicKey.sealed_bundle": pf.mutations(sealed.map(lambda s: s.sealed_bundle)),
        "SealedPublicKey.wrapped_dek": pf.mutations(sealed.map(lambda s: s.wrapped_dek)),
        "page_token": pf.page_tokens(world.page_tokens),
        "access_point_id": pf.choice(world.victim_points + [str(uuid.uuid4()), ""]),
        "serial": pf.choice(world.victim_serials + [s.upper() for s in world.victim_serials]),
        "fingerprint_sha256": pf.choice(world.victim_fingerprints + [f.upper() for f in world.victim_fingerprints]),
        "certificate_signing_request_pem": _csr_variants(world.csr_pem),
        # Endpoints that refuse at once: a registered instance is never dialled where nothing answers.
        "node_endpoints": st.lists(pf.choice(["127.0.0.1:1", "[::1]:1", "localhost:1"]), min_size=1, max_size=3),
        "private_endpoint": pf.choice(["127.0.0.1:1", ""]),
        "key_patterns": st.lists(pf.choice(["*", "alias/*", "alias/fuzz-*", "alias/fuzz-shared"]), max_size=3),
        "allowed_zones": st.lists(pf.choice(["public", "vpc", "ops", "private"]), max_size=3),
        "allowed_cidrs": st.lists(pf.choice(["127.0.0.0/8", "::1/128", "0.0.0.0/0", "10.0.0.0/33"]), max_size=3),
    }


def kms_sweep(world: Kms, method, kinds=("shared", "dedicated")) -> list[pf.Body]:
    """The sweep's bodies for a KMS method: a baseline naming real keys, blobs, records and
    access points (the first of each kind), each field in turn set to extreme values, and real
    blobs, records and page tokens changed in fixed ways."""
    refs = world.victim_refs if method.name in KEY_CHANGING else world.stable_refs
    blob, record = world.blobs[kinds[0]][0], world.sealed[kinds[0]][0]
    baseline = {
        "key_id": refs[kinds[0]][0], "key_ref": refs[kinds[0]][0], "destination_key_id": world.stable_refs[kinds[0]][0],
        "alias": "alias/fuzz-new", "instance_id": INSTANCE, "tenant_id": "acme", "ciphertext_blob": blob,
        "plaintext": b"fuzz payload", "number_of_bytes": 32, "sealed": record, "user_id": "alice",
        "public_key_bundle": b"alice's public keys", "bundle_version": 1, "page_token": world.page_tokens[0],
        "access_point_id": world.victim_points[0], "serial": world.victim_serials[0],
        "fingerprint_sha256": world.victim_fingerprints[0], "certificate_signing_request_pem": world.csr_pem,
        "node_endpoints": ["127.0.0.1:1"], "private_endpoint": "127.0.0.1:1", "name": "fuzz-sweep",
        "key_patterns": ["alias/fuzz-*"],
    }
    extras = {
        "page_token": pf.page_token_sweep(world.page_tokens),
        "ciphertext_blob": pf.blob_sweep(blob),
        "SealedPublicKey.sealed_bundle": pf.blob_sweep(record.sealed_bundle),
        "SealedPublicKey.wrapped_dek": pf.blob_sweep(record.wrapped_dek),
    }
    return pf.sweep_bodies(method.input_type, baseline, extras)


@pytest.mark.hsm
def test_gateway(kms, caplog):
    """The gateway's three zones, as acme's administrator and crypto user and as the operator."""
    cluster = kms.cluster
    callers = [(3, Caller(f"acme admin at {zone}", kms.channel(kms.admin, target)))
               for zone, target in cluster.zone_targets.items()]
    callers += [(2, Caller("acme crypto-user at public", kms.channel(kms.crypto, cluster.zone_targets["public"]))),
                (2, Caller("bootstrap operator at ops", kms.channel(cluster.operator, cluster.zone_targets["ops"])))]

    def probe() -> list[str]:
        def encrypt_decrypt():
            with KmsClient(cluster.zone_targets["public"], credentials=kms.admin.bundle, timeout=30) as acme:
                blob = acme.encrypt(kms.sentinels["shared"], b"still here").ciphertext_blob
                assert acme.decrypt(blob).plaintext == b"still here"

        return health_problems("gateway", callers[0][1].channel) + normal_request("gateway", encrypt_decrypt)

    daemon = Daemon("gateway", methods_of(GATEWAY_SERVICES), callers, hints=lambda m: kms_hints(kms, m),
                    sweep=lambda m: kms_sweep(kms, m), probe=probe)
    fuzz(daemon, caplog)


@pytest.mark.hsm
def test_private_endpoint(kms, caplog):
    """The dedicated instance's private endpoint, as acme's administrator and crypto user."""
    target = kms.cluster.private_target
    callers = [(4, Caller("acme admin", kms.channel(kms.admin, target))),
               (1, Caller("acme crypto-user", kms.channel(kms.crypto, target)))]

    def probe() -> list[str]:
        def encrypt():
            stub = kms_pb2_grpc.KeyManagementServiceStub(callers[0][1].channel)
            stub.Encrypt(kms_pb2.EncryptRequest(key_id=kms.sentinels["dedicated"], plaintext=b"still here"), timeout=30)

        return health_problems("private endpoint", callers[0][1].channel) + normal_request("private endpoint", encrypt)

    # The private endpoint serves cryptography on its instance's keys only.
    daemon = Daemon("private endpoint", methods_of(PRIVATE_ENDPOINT_SERVICES), callers,
                    hints=lambda m: kms_hints(kms, m, ("dedicated",)),
                    sweep=lambda m: kms_sweep(kms, m, ("dedicated",)), probe=probe)
    fuzz(daemon, caplog)


@pytest.mark.hsm
def test_shared_node_internal_port(kms, caplog):
    """The shared node as the gateway calls it: the gateway's internal certificate, and the tenant
    and access point the gateway would forward (trusted, since only the gateway gets in)."""
    channel = kms.internal_channel()
    callers = [
        (4, Caller("gateway for acme admin", channel,
                   ((TENANT_METADATA_KEY, "acme"), (ACCESS_POINT_METADATA_KEY, kms.admin_point)))),
        (1, Caller("gateway for acme crypto-user", channel,
                   ((TENANT_METADATA_KEY, "acme"), (ACCESS_POINT_METADATA_KEY, kms.crypto_point)))),
        (1, Caller("gateway for globex", channel, ((TENANT_METADATA_KEY, "globex"),))),
        (1, Caller("gateway without metadata", channel)),
    ]

    def probe() -> list[str]:
        def describe():
            stub = kms_pb2_grpc.KeyManagementServiceStub(channel)
            stub.DescribeKey(kms_pb2.DescribeKeyRequest(key_id=kms.sentinels["shared"]), timeout=30,
                             metadata=((TENANT_METADATA_KEY, "acme"),))

        return health_problems("shared node", channel) + normal_request("shared node", describe)

    daemon = Daemon("shared node", methods_of(SHARED_NODE_SERVICES), callers, hints=lambda m: kms_hints(kms, m),
                    sweep=lambda m: kms_sweep(kms, m), probe=probe)
    fuzz(daemon, caplog)


# -- the relay ----------------------------------------------------------------------------------


@dataclass
class Relay:
    """The running relay's channel, its accounts' device tokens, and messages sent to fuzz-alice."""

    channel: grpc.Channel
    tokens: dict[str, str]  # user -> device token
    message_ids: list[str]  # the first five of fuzz-alice's messages


def _record(user: str, version: int) -> directory_pb2.DirectoryRecord:
    sealed = kms_pb2.SealedPublicKey(user_id=user, bundle_version=version, sealed_bundle=b"sealed", wrapped_dek=b"dek")
    return directory_pb2.DirectoryRecord(user_id=user, record_version=version, kms_key_id="k-1", sealed=sealed)


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    """A relay for the module, with accounts fuzz-alice, fuzz-bob and fuzz-carol, records of
    fuzz-alice and fuzz-carol, and mail for fuzz-alice."""
    root = tmp_path_factory.mktemp("fuzz-relay")
    config = RelayConfig(listen="127.0.0.1:0", shutdown_grace_seconds=1, store=StoreConfig(str(root / "relay.db")),
                         rate_limit=RateLimitConfig(requests_per_second=0, account_creations_per_minute=0))
    thread, server = LoopThread(), relay_server.RelayServer(config)
    port = thread.call(server.start())
    DAEMON_THREADS[thread.thread.ident] = "relay"
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub, directory = relay_pb2_grpc.RelayServiceStub(channel), directory_pb2_grpc.DirectoryServiceStub(channel)
        tokens = {user: stub.CreateAccount(relay_pb2.CreateAccountRequest(user_id=user), timeout=30).device_token
                  for user in ("fuzz-alice", "fuzz-bob", "fuzz-carol")}
        for user in ("fuzz-alice", "fuzz-carol"):
            directory.PublishRecord(directory_pb2.PublishRecordRequest(record=_record(user, 1)),
                                    metadata=_bearer(tokens[user]), timeout=30)
        # Enough mail that fuzz-alice's Subscribe calls stream (and are left mid-stream) however
        # many of the first five her Ack calls delete.
        ids = [
            stub.Send(relay_pb2.SendRequest(recipient_user_id="fuzz-alice", envelope=b"env %d" % n,
                                            client_message_id=f"setup-{n}"),
                      metadata=_bearer(tokens["fuzz-bob"]), timeout=30).message_id
            for n in range(20)
        ]
        yield Relay(channel, tokens, ids[:5])
    finally:
        channel.close()
        thread.stop(server)


def relay_hints(world: Relay, method) -> pf.Hints:
    """Real values for the relay's fields: its users, message ids and key ids."""
    users = pf.choice(["fuzz-alice", "fuzz-bob", "nobody"])
    return {
        "CreateAccountRequest.user_id": st.from_regex(r"[a-z0-9._-]{1,64}", fullmatch=True),
        "GetRecordRequest.user_id": users,
        "recipient_user_id": users,
        # PublishRecord takes the caller's own record: mostly alice's, who calls most.
        "DirectoryRecord.user_id": users,
        "SealedPublicKey.user_id": users,
        "kms_key_id": pf.choice(["k-1", str(uuid.uuid4())]),
        "message_ids": st.lists(pf.choice(world.message_ids + [str(uuid.uuid4())]), max_size=3),
        "client_message_id": pf.choice(["m-1", "setup-0", ""]),
    }


def relay_sweep(world: Relay, method) -> list[pf.Body]:
    """The sweep's bodies for a relay method: a baseline as fuzz-alice would send it (her own
    record, a message to fuzz-bob), each field in turn set to extreme values."""
    baseline = {
        "CreateAccountRequest.user_id": "fuzz-sweep", "GetRecordRequest.user_id": "fuzz-alice",
        "DirectoryRecord.user_id": "fuzz-alice", "SealedPublicKey.user_id": "fuzz-alice", "record_version": 2,
        "bundle_version": 2, "sealed_bundle": b"sealed", "wrapped_dek": b"dek", "kms_key_id": "k-1",
        "recipient_user_id": "fuzz-bob", "envelope": b"envelope", "client_message_id": "sweep",
        "message_ids": world.message_ids[:1],
    }
    return pf.sweep_bodies(method.input_type, baseline)


def test_relay(relay, caplog):
    """The relay, as two accounts with their device tokens, without a token and with a made-up one."""
    callers = [
        (4, Caller("fuzz-alice", relay.channel, _bearer(relay.tokens["fuzz-alice"]))),
        (2, Caller("fuzz-bob", relay.channel, _bearer(relay.tokens["fuzz-bob"]))),
        (1, Caller("no token", relay.channel)),
        (1, Caller("made-up token", relay.channel, _bearer("krt_" + "A" * 43))),
    ]

    def probe() -> list[str]:
        def get_record():
            directory_pb2_grpc.DirectoryServiceStub(relay.channel).GetRecord(
                directory_pb2.GetRecordRequest(user_id="fuzz-carol"), metadata=_bearer(relay.tokens["fuzz-carol"]),
                timeout=30,
            )

        return health_problems("relay", relay.channel) + normal_request("relay", get_record)

    daemon = Daemon("relay", methods_of(RELAY_SERVICES), callers, hints=lambda m: relay_hints(relay, m),
                    sweep=lambda m: relay_sweep(relay, m), probe=probe)
    fuzz(daemon, caplog)

