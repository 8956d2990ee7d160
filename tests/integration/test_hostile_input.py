"""Hostile input at every entry point, each case a request a fuzzing run found answered wrongly:

1. crafted page tokens (a 400-digit number, 100,000 nested lists) answered INTERNAL;
2. uint64 fields at 2^63 and above answered INTERNAL by the relay's store;
3. bodies that do not parse answered UNKNOWN, without reason or request id, unaudited, with a
   traceback in the log;
4. error messages echoing a megabyte of the request, lost to gRPC's metadata limit;
6. a Subscribe stream cancelled mid-backlog logging a traceback.

(Memory under floods of maximum-size requests is measured on real processes in
tests/e2e/test_request_flood.py.) Each is tried at the gateway and the private endpoint of a real
in-process cluster on SoftHSM, and at a real relay.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid

import grpc
import pytest

from foundation import audit
from foundation.errors import QUOTE_CHARS
from foundation.grpc_server import MAX_STATUS_MESSAGE
from foundation.wire import REASON_METADATA_KEY, REQUEST_ID_METADATA_KEY
from inprocess_cluster import InProcessCluster
from proto_fuzz import varint
from keyrelay.v1 import admin_pb2, directory_pb2, kms_pb2, relay_pb2
from test_relay_rpc import auth, relay, sealed_record  # noqa: F401 - the relay fixture

pytestmark = pytest.mark.hsm

INSTANCE = "acme-vault"
KMS = "/keyrelay.v1.KeyManagementService/"
ADMIN = "/keyrelay.v1.AdminService/"

# Wire bytes a protobuf library never writes.
CORRUPT = b"\x01"
BAD_UTF8 = b"\x0a\x02\xff\xfe"  # field 1 (a string in every request below) holding invalid UTF-8
DEEP_GROUPS = b"\x0b" * 200 + b"\x0c" * 200  # groups nested 200 deep


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


CRAFTED_TOKENS = [_b64(b"[1" + b"0" * 400 + b', "x"]'), _b64(b"[" * 100000)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, softhsm):
    served = InProcessCluster(tmp_path_factory.mktemp("hostile"), instance_id=INSTANCE).start()
    served.acme = served.owned_by("acme")
    yield served
    served.stop()


def call(channel: grpc.Channel, path: str, body: bytes, request_id: str | None = None):
    """Send `body` as is; (code, reason, request id, details) of the answer."""
    metadata = [(REQUEST_ID_METADATA_KEY, request_id)] if request_id else []
    try:
        channel.unary_unary(path)(body, timeout=30, metadata=metadata)
    except grpc.RpcError as exc:
        trailers = dict(exc.trailing_metadata() or ())
        return exc.code(), trailers.get(REASON_METADATA_KEY, ""), trailers.get(REQUEST_ID_METADATA_KEY, ""), exc.details()
    return grpc.StatusCode.OK, "", "", ""


def entry_points(cluster):
    """(name, channel, audit log path) of the gateway and the private endpoint, with acme's credential."""
    return [
        ("gateway", cluster.acme.channel(cluster.zone_targets["public"]), cluster.audit),
        ("private endpoint", cluster.acme.channel(cluster.private_target), cluster.private_audit),
    ]


def records(path) -> list[dict]:
    """The audit records written so far."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def assert_no_errors_logged(caplog):
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not bad, "\n".join(f"{r.name}: {r.getMessage()}" for r in bad)


# -- 1. page tokens ---------------------------------------------------------------------------


@pytest.mark.parametrize("token", CRAFTED_TOKENS, ids=["huge-number", "deep-nesting"])
def test_crafted_page_tokens_are_invalid_page_token(cluster, token, caplog):
    lists = [
        (KMS + "ListKeys", kms_pb2.ListKeysRequest(page_token=token)),
        (ADMIN + "ListAccessPoints", admin_pb2.ListAccessPointsRequest(tenant_id="acme", page_token=token)),
        (ADMIN + "ListInstances", admin_pb2.ListInstancesRequest(page_token=token)),
    ]
    for name, channel, _ in entry_points(cluster):
        for path, request in lists:
            if name == "private endpoint" and "AdminService" in path:
                continue
            code, reason, request_id, details = call(channel, path, request.SerializeToString())
            assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN"), (name, path, details)
            assert request_id and "page_token" in details
    assert_no_errors_logged(caplog)


# -- 3. bodies that do not parse --------------------------------------------------------------


@pytest.mark.parametrize("body", [CORRUPT, BAD_UTF8, DEEP_GROUPS], ids=["corrupt", "bad-utf8", "deep-groups"])
def test_unparseable_bodies_are_malformed_request_with_id_audit_and_one_warning(cluster, body, caplog):
    caplog.set_level(logging.WARNING)
    for name, channel, log_path in entry_points(cluster):
        before = len(records(log_path))
        for method in ("Encrypt", "DescribeKey", "GenerateDataKey"):
            code, reason, request_id, details = call(channel, KMS + method, body, request_id=f"bad-{method}")
            assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"), (name, method, details)
            assert request_id == f"bad-{method}"
            assert "not a valid keyrelay.v1." in details
        audited = records(log_path)[before:]
        assert [(r["operation"], r["status"], r["reason"], r["tenant"]) for r in audited] == [
            (method, "INVALID_ARGUMENT", "MALFORMED_REQUEST", "acme") for method in ("Encrypt", "DescribeKey", "GenerateDataKey")
        ], name
        assert audit.verify(log_path).ok
    # The same rules apply as to a body that parses: key management is not served at a private
    # endpoint, whatever the body held.
    private = cluster.acme.channel(cluster.private_target)
    code, reason, _, details = call(private, KMS + "CreateKey", body)
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"), details
    assert_no_errors_logged(caplog)
    assert not any(r.exc_info for r in caplog.records), "a refused body must not log a traceback"


def test_a_flood_of_bad_bodies_writes_one_warning_line(cluster, caplog):
    caplog.set_level(logging.WARNING)
    channel = cluster.acme.channel(cluster.zone_targets["public"])
    for _ in range(50):
        assert call(channel, KMS + "Encrypt", CORRUPT)[1] == "MALFORMED_REQUEST"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "refused a request" in r.getMessage()]
    assert len(warnings) <= 2, [r.getMessage() for r in warnings]


def test_every_request_is_audited_once_whatever_it_held(cluster):
    """Well-formed, malformed, refused and unknown-method requests: one audit record each, at the
    gateway and at the private endpoint."""
    sent = [
        (KMS + "GenerateRandom", kms_pb2.GenerateRandomRequest(number_of_bytes=8).SerializeToString(), "OK"),
        (KMS + "GenerateRandom", kms_pb2.GenerateRandomRequest(number_of_bytes=5000).SerializeToString(), "INVALID_ARGUMENT"),
        (KMS + "Decrypt", CORRUPT, "INVALID_ARGUMENT"),
        (KMS + "NoSuchMethod", b"", "UNIMPLEMENTED"),
        ("/keyrelay.v1.NoSuchService/Call", b"\x01\x02", "UNIMPLEMENTED"),
    ]
    for name, channel, log_path in entry_points(cluster):
        before = len(records(log_path))
        ids = []
        for path, body, expected in sent:
            request_id = uuid.uuid4().hex
            code, _, answered_id, details = call(channel, path, body, request_id)
            assert code.name == expected, (name, path, details)
            assert code == grpc.StatusCode.OK or answered_id == request_id
            ids.append(request_id)
        audited = records(log_path)[before:]
        assert [r["request_id"] for r in audited] == ids, name
        assert [r["status"] for r in audited] == [expected for _, _, expected in sent], name
        assert audited[-1]["operation"] == "unknown"  # never the caller's path: it is not ours to record
        assert audit.verify(log_path).ok


# -- 4. messages stay bounded and keep their status -------------------------------------------


def test_huge_fields_are_never_echoed_and_keep_their_status(cluster, caplog):
    big = "u" * 500_000
    cases = [
        (KMS + "OpenPublicKey", kms_pb2.OpenPublicKeyRequest(sealed=kms_pb2.SealedPublicKey(user_id=big, bundle_version=1,
                                                                                          sealed_bundle=b"x", wrapped_dek=b"y"))),
        (KMS + "OpenPublicKey", kms_pb2.OpenPublicKeyRequest(sealed=kms_pb2.SealedPublicKey(user_id="u" * 10_000))),
        (KMS + "CreateKey", kms_pb2.CreateKeyRequest(instance_id="p" * 20_000)),
        (KMS + "DescribeKey", kms_pb2.DescribeKeyRequest(key_id="alias/" + "a" * 500_000)),
    ]
    for name, channel, _ in entry_points(cluster):
        for path, request in cases:
            code, reason, request_id, details = call(channel, path, request.SerializeToString())
            assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED), (
                name, path, code, details[:200])
            assert reason and reason != "RATE_LIMITED" and request_id, (name, path, reason)
            assert len(details) <= MAX_STATUS_MESSAGE
            assert "u" * (QUOTE_CHARS + 1) not in details and "p" * (QUOTE_CHARS + 1) not in details
    assert_no_errors_logged(caplog)


# -- the relay: 2, 3, 4 and 6 -----------------------------------------------------------------


async def _raw(served, path: str, body: bytes, token: str | None = None):
    metadata = list(auth(token)) if token else []
    try:
        await served.channel.unary_unary(path)(body, metadata=metadata, timeout=30)
    except grpc.aio.AioRpcError as exc:
        trailers = dict(exc.trailing_metadata() or ())
        return exc.code(), trailers.get(REASON_METADATA_KEY, ""), trailers.get(REQUEST_ID_METADATA_KEY, ""), exc.details()
    return grpc.StatusCode.OK, "", "", ""


async def test_relay_refuses_numbers_its_store_cannot_hold(relay, caplog):  # noqa: F811 - the fixture
    alice = await relay.account("alice")
    user = directory_pb2.GetRecordRequest(user_id="alice").SerializeToString()
    for version in (2**63, 2**64 - 1):
        body = user + directory_pb2.GetRecordRequest(record_version=version).SerializeToString()
        code, reason, request_id, details = await _raw(relay, "/keyrelay.v1.DirectoryService/GetRecord", body, alice)
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"), details
        assert "record_version" in details and request_id
    # -1 written as a 10-byte varint: what a client with a signed type sends.
    minus_one = user + b"\x10" + varint(-1)
    code, reason, _, _ = await _raw(relay, "/keyrelay.v1.DirectoryService/GetRecord", minus_one, alice)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
    record = sealed_record("alice", 1)
    record.record_version = record.sealed.bundle_version = 2**63
    publish = directory_pb2.PublishRecordRequest(record=record).SerializeToString()
    code, reason, _, details = await _raw(relay, "/keyrelay.v1.DirectoryService/PublishRecord", publish, alice)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"), details
    # The largest value a store holds still works.
    record.record_version = record.sealed.bundle_version = 2**63 - 1
    publish = directory_pb2.PublishRecordRequest(record=record).SerializeToString()
    assert (await _raw(relay, "/keyrelay.v1.DirectoryService/PublishRecord", publish, alice))[0] == grpc.StatusCode.OK
    await relay.assert_healthy()
    assert_no_errors_logged(caplog)


async def test_relay_answers_unparseable_bodies_before_authentication(relay, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING)
    for path in ("/keyrelay.v1.RelayService/CreateAccount", "/keyrelay.v1.RelayService/Send",
                 "/keyrelay.v1.DirectoryService/PublishRecord"):
        for body in (CORRUPT, BAD_UTF8, DEEP_GROUPS):
            code, reason, request_id, details = await _raw(relay, path, body)
            assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"), (path, details)
            assert request_id
    assert_no_errors_logged(caplog)
    assert not any(r.exc_info for r in caplog.records)
    assert sum("refused a request" in r.getMessage() for r in caplog.records) <= 2


async def test_relay_messages_do_not_echo_huge_user_ids(relay, caplog):  # noqa: F811
    alice = await relay.account("alice")
    record = sealed_record("alice", 1)
    record.user_id = "x" * 10_000
    publish = directory_pb2.PublishRecordRequest(record=record).SerializeToString()
    code, reason, _, details = await _raw(relay, "/keyrelay.v1.DirectoryService/PublishRecord", publish, alice)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and reason, details
    assert len(details) <= MAX_STATUS_MESSAGE and "x" * (QUOTE_CHARS + 1) not in details
    assert_no_errors_logged(caplog)


async def test_cancelling_a_subscribe_mid_backlog_is_quiet(relay, caplog):  # noqa: F811
    alice, bob = await relay.account("alice"), await relay.account("bob")
    for n in range(5):
        await relay.send(alice, "bob", b"m" * 1000, f"m-{n}")
    for _ in range(3):
        stream = relay.relay.Subscribe(relay_pb2.SubscribeRequest(), metadata=auth(bob))
        async for _item in stream:
            break  # one message of the backlog read, the rest still pending
        stream.cancel()
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.5)  # let the server finalise the abandoned streams
    await relay.assert_healthy()
    assert_no_errors_logged(caplog)


async def test_health_watch_streams_through_the_skeleton(relay, caplog):  # noqa: F811
    """A streaming handler that writes for itself (grpc's health Watch) is served, not INTERNAL."""
    from grpc_health.v1 import health_pb2

    stream = relay.health.Watch(health_pb2.HealthCheckRequest())
    async for answer in stream:
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        break
    stream.cancel()
    await asyncio.sleep(0.2)
    assert_no_errors_logged(caplog)

