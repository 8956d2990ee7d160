"""`KmsClient` and `AsyncKmsClient` on in-process fake channels: retries of idempotent calls on
UNAVAILABLE under one request id and within the deadline, and the routing of cryptography on
dedicated keys to their instance's private endpoint (learned from DescribeKey, cached)."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

import client_sdk as kr
from client_sdk import _retry
from fake_channel import FakeChannel, FakeRpcError, FakeTime
from foundation.blob_formats import encode_header
from foundation.errors import REQUEST_ID_METADATA_KEY
from keyrelay.v1 import kms_pb2

KMS = "/keyrelay.v1.KeyManagementService/"
SHARED_KEY, DEDICATED_KEY = str(uuid.UUID(int=1)), str(uuid.UUID(int=2))


def blob_of(key_id: str) -> bytes:
    return encode_header(key_id, 1, bytes(12)) + bytes(32)


def unavailable(times: int, answer, reason: str = "UPSTREAM_UNAVAILABLE"):
    """A handler failing `times` times with UNAVAILABLE, then answering `answer(request)`."""
    left = [times]

    def handle(request):
        if left[0] > 0:
            left[0] -= 1
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused", reason)
        return answer(request)

    return handle


def encrypted(request):
    """Answers with the key named in the request (an alias stands for the dedicated key)."""
    key_id = SHARED_KEY if request.key_id == SHARED_KEY else DEDICATED_KEY
    return kms_pb2.EncryptResponse(ciphertext_blob=blob_of(key_id), key_id=request.key_id, key_version=1)


def described(request):
    instance = "dedicated-1" if request.key_id in (DEDICATED_KEY, "alias/payroll") else ""
    key_id = DEDICATED_KEY if instance else SHARED_KEY
    aliases = ["alias/payroll"] if instance else []
    return kms_pb2.DescribeKeyResponse(key_metadata=kms_pb2.KeyMetadata(key_id=key_id, instance_id=instance, aliases=aliases))


@pytest.fixture
def fake_time(monkeypatch):
    clock = FakeTime()
    monkeypatch.setattr(_retry, "time", clock)
    monkeypatch.setattr("client_sdk.kms_client.time.sleep", clock.sleep)
    return clock


@pytest.fixture
def gateway():
    channel = FakeChannel()
    channel.handlers[KMS + "DescribeKey"] = described
    channel.handlers[KMS + "Encrypt"] = encrypted
    return channel


def test_idempotent_calls_retry_unavailable_under_one_request_id(gateway, fake_time):
    gateway.handlers[KMS + "Encrypt"] = unavailable(2, encrypted, reason="HSM_UNAVAILABLE")
    kms = kr.KmsClient(channel=gateway, timeout=10)
    assert kms.encrypt(SHARED_KEY, b"x").key_id == SHARED_KEY
    attempts = gateway.calls_to("Encrypt")
    assert len(attempts) == 3
    assert len({call[3][REQUEST_ID_METADATA_KEY] for call in attempts}) == 1  # one request, three attempts
    assert len(fake_time.sleeps) == 2 and fake_time.sleeps[1] > fake_time.sleeps[0] * 0.9
    # Each attempt gets what is left of the deadline.
    assert attempts[0][2] == pytest.approx(10) and attempts[2][2] < 10


def test_retries_stop_within_the_deadline_with_the_servers_error(gateway, fake_time):
    gateway.handlers[KMS + "Encrypt"] = unavailable(10**6, encrypted)
    kms = kr.KmsClient(channel=gateway, timeout=3)
    with pytest.raises(kr.UnavailableError, match="connection refused"):
        kms.encrypt(SHARED_KEY, b"x")
    assert sum(fake_time.sleeps) <= 3
    assert len(gateway.calls_to("Encrypt")) > 3


@pytest.mark.parametrize("method, call", [
    ("RotateKey", lambda kms: kms.rotate_key(SHARED_KEY)),
    ("CreateKey", lambda kms: kms.create_key()),
    ("CreateAlias", lambda kms: kms.create_alias("alias/a", SHARED_KEY)),
])
def test_calls_that_are_not_idempotent_are_not_retried(gateway, fake_time, method, call):
    gateway.handlers[KMS + method] = unavailable(1, lambda r: None)
    with pytest.raises(kr.UnavailableError):
        call(kr.KmsClient(channel=gateway, timeout=10))
    assert len(gateway.calls_to(method)) == 1 and fake_time.sleeps == []


def test_application_errors_are_not_retried(gateway, fake_time):
    def missing(request):
        raise FakeRpcError(grpc.StatusCode.NOT_FOUND, "no key", "KEY_NOT_FOUND")

    gateway.handlers[KMS + "Encrypt"] = missing
    with pytest.raises(kr.KeyNotFoundError):
        kr.KmsClient(channel=gateway, timeout=10).encrypt(SHARED_KEY, b"x")
    assert len(gateway.calls_to("Encrypt")) == 1


@pytest.fixture
def routed(gateway, monkeypatch):
    """A client with one private endpoint; its channel is a second fake."""
    private = FakeChannel()
    private.handlers[KMS + "Encrypt"] = encrypted
    opened = []

    def open_channel(self, target=None):
        opened.append(target)
        return private

    monkeypatch.setattr(kr.KmsClient, "_open_channel", open_channel)
    kms = kr.KmsClient(channel=gateway, timeout=10, private_endpoints={"dedicated-1": "10.0.2.21:7202"})
    return kms, private, opened


def test_crypto_on_a_dedicated_key_goes_to_its_private_endpoint(routed, gateway):
    kms, private, opened = routed
    assert kms.encrypt("alias/payroll", b"x").key_id == "alias/payroll"
    assert kms.encrypt(DEDICATED_KEY, b"y").key_id == DEDICATED_KEY
    assert kms.encrypt(SHARED_KEY, b"z").key_id == SHARED_KEY
    assert [c[1].key_id for c in private.calls_to("Encrypt")] == ["alias/payroll", DEDICATED_KEY]
    assert [c[1].key_id for c in gateway.calls_to("Encrypt")] == [SHARED_KEY]
    assert opened == ["10.0.2.21:7202"]
    # The instance was learned once per key (the alias's answer also taught the key id).
    assert [c[1].key_id for c in gateway.calls_to("DescribeKey")] == ["alias/payroll", SHARED_KEY]
    # Management stays at the gateway.
    gateway.handlers[KMS + "RotateKey"] = lambda r: kms_pb2.RotateKeyResponse()
    kms.rotate_key(DEDICATED_KEY)
    assert private.calls_to("RotateKey") == []


def test_blobs_route_by_the_key_inside_and_batches_split_and_merge(routed, gateway):
    kms, private, _ = routed

    def decrypt_all(label):
        def handle(request):
            return kms_pb2.BatchDecryptResponse(
                results=[kms_pb2.BatchDecryptResult(plaintext=label + bytes([i]), key_id=label.decode())
                         for i, _ in enumerate(request.items)]
            )
        return handle

    for channel, label in ((gateway, b"shared"), (private, b"dedicated")):
        channel.handlers[KMS + "Decrypt"] = lambda r, label=label: kms_pb2.DecryptResponse(plaintext=label)
        channel.handlers[KMS + "BatchDecrypt"] = decrypt_all(label)
    assert kms.decrypt(blob_of(DEDICATED_KEY)).plaintext == b"dedicated"
    assert kms.decrypt(blob_of(SHARED_KEY)).plaintext == b"shared"
    # A malformed blob is the gateway's to refuse.
    assert kms.decrypt(b"junk").plaintext == b"shared"
    results = kms.batch_decrypt([blob_of(SHARED_KEY), blob_of(DEDICATED_KEY), blob_of(SHARED_KEY), blob_of(DEDICATED_KEY)])
    assert [r.value.key_id for r in results] == ["shared", "dedicated", "shared", "dedicated"]
    assert [len(c[1].items) for c in private.calls_to("BatchDecrypt")] == [2]
    assert [len(c[1].items) for c in gateway.calls_to("BatchDecrypt")] == [2]


def test_a_key_the_gateway_cannot_describe_is_left_to_the_gateway(routed, gateway):
    kms, private, _ = routed

    def forbidden(request):
        raise FakeRpcError(grpc.StatusCode.NOT_FOUND, "no such key", "KEY_NOT_FOUND")

    gateway.handlers[KMS + "DescribeKey"] = forbidden
    gateway.handlers[KMS + "Encrypt"] = forbidden
    with pytest.raises(kr.KeyNotFoundError, match="no such key"):
        kms.encrypt("alias/elsewhere", b"x")
    assert private.calls == []


def test_without_private_endpoints_nothing_is_described(gateway):
    kms = kr.KmsClient(channel=gateway, timeout=10)
    kms.encrypt(DEDICATED_KEY, b"x")
    assert gateway.calls_to("DescribeKey") == []


def test_requests_larger_than_the_kms_takes_are_refused_before_any_call(gateway):
    from foundation.errors import BatchTooLargeError, PayloadTooLargeError
    from foundation.wire import MAX_KMS_REQUEST_BYTES

    kms = kr.KmsClient(channel=gateway, timeout=10)
    blobs = [blob_of(SHARED_KEY) + b"\0" * 1000] * (MAX_KMS_REQUEST_BYTES // 1000 + 1)
    with pytest.raises(BatchTooLargeError, match="split the batch"):
        kms.batch_decrypt(blobs)
    with pytest.raises(PayloadTooLargeError, match=str(MAX_KMS_REQUEST_BYTES)):
        kms.encrypt(SHARED_KEY, b"x" * MAX_KMS_REQUEST_BYTES)
    assert gateway.calls == []


class AsyncFakeChannel(FakeChannel):
    """The fake channel for grpc.aio stubs: every call is awaited."""

    def _method(self, path, request_serializer, response_deserializer, streaming):
        sync = super()._method(path, request_serializer, response_deserializer, streaming)

        async def invoke(request, timeout=None, metadata=None, **kwargs):
            return sync(request, timeout=timeout, metadata=metadata)

        return invoke

    async def close(self):
        self.closed = True


async def test_async_client_has_the_same_methods_retries_and_routing(monkeypatch):
    gateway, private = AsyncFakeChannel(), AsyncFakeChannel()
    gateway.handlers[KMS + "DescribeKey"] = described
    gateway.handlers[KMS + "Encrypt"] = unavailable(1, encrypted)
    private.handlers[KMS + "Encrypt"] = encrypted
    monkeypatch.setattr(kr.AsyncKmsClient, "_open_channel", lambda self, target=None: private)
    async with kr.AsyncKmsClient(channel=gateway, timeout=10, private_endpoints={"dedicated-1": "h:1"}) as kms:
        shared, dedicated = await asyncio.gather(kms.encrypt(SHARED_KEY, b"x"), kms.encrypt("alias/payroll", b"y"))
        assert (shared.key_id, dedicated.key_id) == (SHARED_KEY, "alias/payroll")
        assert len(gateway.calls_to("Encrypt")) == 2 and len(private.calls_to("Encrypt")) == 1
        gateway.handlers[KMS + "ListKeys"] = lambda r: kms_pb2.ListKeysResponse(
            keys=[kms_pb2.KeyMetadata(key_id=SHARED_KEY)], next_page_token="" if r.page_token else "p2"
        )
        assert [k.key_id async for k in kms.iter_keys()] == [SHARED_KEY, SHARED_KEY]
    with pytest.raises(TypeError, match="async with"):
        with kr.AsyncKmsClient(channel=gateway):
            pass
