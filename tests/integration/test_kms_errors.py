"""Every bad request gets its own status, reason and a message a person can act on, and the node
stays healthy after each (real SoftHSM pool, real gRPC server on a loopback port)."""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import client_sdk as kr


def _assert_healthy(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def _flip(blob: bytes, index: int) -> bytes:
    data = bytearray(blob)
    data[index] ^= 0x01
    return bytes(data)


@pytest.fixture
def key(kms):
    return kms.create_key(description="errors")


CASES = {
    "tampered ciphertext": (
        lambda kms, key: kms.decrypt(_flip(kms.encrypt(key.key_id, b"x").ciphertext_blob, -3)),
        kr.CiphertextAuthenticationError, grpc.StatusCode.INVALID_ARGUMENT, "altered",
    ),
    "tampered header": (
        lambda kms, key: kms.decrypt(_flip(kms.encrypt(key.key_id, b"x").ciphertext_blob, 0)),
        kr.MalformedCiphertextError, grpc.StatusCode.INVALID_ARGUMENT, "format",
    ),
    "truncated ciphertext": (
        lambda kms, key: kms.decrypt(kms.encrypt(key.key_id, b"x").ciphertext_blob[:20]),
        kr.MalformedCiphertextError, grpc.StatusCode.INVALID_ARGUMENT, "truncated",
    ),
    "wrong encryption context": (
        lambda kms, key: kms.decrypt(
            kms.encrypt(key.key_id, b"x", context={"order": "1"}).ciphertext_blob, context={"order": "2"}
        ),
        kr.CiphertextAuthenticationError, grpc.StatusCode.INVALID_ARGUMENT, "encryption context",
    ),
    "unknown key": (
        lambda kms, key: kms.encrypt("00000000-0000-4000-8000-000000000000", b"x"),
        kr.KeyNotFoundError, grpc.StatusCode.NOT_FOUND, "no key",
    ),
    "unknown alias": (
        lambda kms, key: kms.encrypt("alias/nope", b"x"),
        kr.AliasNotFoundError, grpc.StatusCode.NOT_FOUND, "alias/nope",
    ),
    "malformed key id": (
        lambda kms, key: kms.encrypt("not a key", b"x"),
        kr.InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT, "UUID",
    ),
    "disabled key": (
        lambda kms, key: (kms.disable_key(key.key_id), kms.encrypt(key.key_id, b"x")),
        kr.KeyDisabledError, grpc.StatusCode.FAILED_PRECONDITION, "EnableKey",
    ),
    "pending-deletion key": (
        lambda kms, key: (kms.schedule_key_deletion(key.key_id, pending_window_days=7), kms.encrypt(key.key_id, b"x")),
        kr.KeyPendingDeletionError, grpc.StatusCode.FAILED_PRECONDITION, "CancelKeyDeletion",
    ),
    "plaintext over 4096 bytes": (
        lambda kms, key: kms.encrypt(key.key_id, b"x" * 4097),
        kr.PayloadTooLargeError, grpc.StatusCode.INVALID_ARGUMENT, "4096",
    ),
    "batch over 1000": (
        lambda kms, key: kms.batch_generate_data_key([key.key_id] * 1001),
        kr.BatchTooLargeError, grpc.StatusCode.INVALID_ARGUMENT, "1000",
    ),
    "reserved context key": (
        lambda kms, key: kms.encrypt(key.key_id, b"x", context={"keyrelay:purpose": "x"}),
        kr.InvalidEncryptionContextError, grpc.StatusCode.INVALID_ARGUMENT, "reserved",
    ),
    "bad data key size": (
        lambda kms, key: kms.generate_data_key(key.key_id, number_of_bytes=24),
        kr.InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT, "16, 32 or 64",
    ),
    "deletion window out of range": (
        lambda kms, key: kms.schedule_key_deletion(key.key_id, pending_window_days=3),
        kr.InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT, "7-30",
    ),
    "sealed record opened for another user": (
        lambda kms, key: kms.open_public_key(
            _relabel(kms.seal_public_key(key.key_id, "alice", b"alice-public-bundle", 1), user_id="bob")
        ),
        kr.SealedRecordMismatchError, grpc.StatusCode.INVALID_ARGUMENT, "bob",
    ),
    "sealed record with another version": (
        lambda kms, key: kms.open_public_key(
            _relabel(kms.seal_public_key(key.key_id, "alice", b"alice-public-bundle", 1), bundle_version=2)
        ),
        kr.SealedRecordMismatchError, grpc.StatusCode.INVALID_ARGUMENT, "version 2",
    ),
    "alias taken": (
        lambda kms, key: (kms.create_alias("alias/dup", key.key_id), kms.create_alias("alias/dup", key.key_id)),
        kr.AliasExistsError, grpc.StatusCode.ALREADY_EXISTS, "taken",
    ),
    "cancel deletion of a live key": (
        lambda kms, key: kms.cancel_key_deletion(key.key_id),
        kr.KeyStateConflictError, grpc.StatusCode.FAILED_PRECONDITION, "not scheduled",
    ),
}


def _relabel(sealed: kr.SealedPublicKey, **changes) -> kr.SealedPublicKey:
    from dataclasses import replace

    return replace(sealed, **changes)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_gets_its_status_and_the_node_stays_healthy(case, kms, key, served_node):
    action, error_class, code, hint = CASES[case]
    with pytest.raises(error_class) as caught:
        action(kms, key)
    err = caught.value
    assert type(err) is error_class, f"{case}: got {type(err).__name__}: {err}"
    assert err.code == code
    assert hint.lower() in err.message.lower(), err.message
    assert err.request_id, "every error carries the request id"
    _assert_healthy(served_node.target)
    # The node still serves real work after the bad request.
    fresh = kms.create_key()
    assert kms.decrypt(kms.encrypt(fresh.key_id, b"ok").ciphertext_blob).plaintext == b"ok"


def test_batch_reports_errors_per_item(kms, key):
    good = kms.encrypt(key.key_id, b"one", context={"k": "v"}).ciphertext_blob
    results = kms.batch_decrypt([(good, {"k": "v"}), (good, {"k": "other"}), (b"junk", {})])
    assert results[0].ok and results[0].value.plaintext == b"one"
    assert isinstance(results[1].error, kr.CiphertextAuthenticationError)
    assert isinstance(results[2].error, kr.MalformedCiphertextError)


def test_unknown_errors_answer_internal_without_details(kms, served_node, caplog):
    # Break the store underneath the service: the client must see INTERNAL and a request id only.
    served_node.node.store.close()
    served_node.node.store._local = threading.local()
    served_node.node.store.path = "/proc/no-such-dir/x.db"
    with pytest.raises(kr.InternalError) as caught:
        kms.create_key()
    assert "request id" in caught.value.message
    assert "proc" not in caught.value.message
