"""Envelope encryption and the data-key cache against an in-process node on a real SoftHSM pool,
counting GenerateDataKey calls on the server."""

from __future__ import annotations

import io
import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

import client_sdk as kr
from client_sdk.datakey_cache import DataKeyCache
from client_sdk.envelope import EnvelopeInfo, decrypt_stream, encrypt_stream


def _served(served_node, operation: str) -> float:
    """How many `operation` calls the node has answered (any status), from its own metrics."""
    families = text_string_to_metric_families(served_node.node.metrics.render().decode())
    return sum(
        s.value
        for family in families if family.name == "keyrelay_requests"
        for s in family.samples
        if s.name == "keyrelay_requests_total" and s.labels["operation"] == operation
    )


def _seal(kms, key_id: str, text: bytes, **kwargs) -> tuple[bytes, EnvelopeInfo]:
    out = io.BytesIO()
    info = encrypt_stream(kms, key_id, io.BytesIO(text), out, **kwargs)
    return out.getvalue(), info


def _open(kms, envelope: bytes, **kwargs) -> bytes:
    out = io.BytesIO()
    decrypt_stream(kms, io.BytesIO(envelope), out, **kwargs)
    return out.getvalue()


def test_a_cache_of_100_messages_makes_10_generate_data_key_calls_for_1000_envelopes(kms, served_node):
    key = kms.create_key(alias="alias/cached")
    now = [0.0]
    cache = DataKeyCache(max_age_seconds=300, max_messages=100, clock=lambda: now[0])
    context = {"app": "cache-test"}
    before = _served(served_node, "GenerateDataKey")

    sealed = [_seal(kms, "alias/cached", b"message %d" % i, context=context, cache=cache) for i in range(1000)]

    assert _served(served_node, "GenerateDataKey") - before == 10
    assert sum(not info.data_key_cached for _, info in sealed) == 10
    # Every envelope is sound: the first and last of each key's run, decrypted by the KMS.
    for i in (0, 99, 100, 555, 999):
        envelope, info = sealed[i]
        assert info.key_id == key.key_id
        assert _open(kms, envelope, context=context) == b"message %d" % i

    # The 10th key has served its 100 messages: the next message gets an 11th, made at t=0.
    _seal(kms, "alias/cached", b"message 1000", context=context, cache=cache)
    assert _served(served_node, "GenerateDataKey") - before == 11
    now[0] += 299
    assert _seal(kms, "alias/cached", b"still young", context=context, cache=cache)[1].data_key_cached
    assert _served(served_node, "GenerateDataKey") - before == 11
    now[0] += 1  # the 11th key is now max_age old
    envelope, info = _seal(kms, "alias/cached", b"after max age", context=context, cache=cache)
    assert _served(served_node, "GenerateDataKey") - before == 12
    assert not info.data_key_cached
    assert _open(kms, envelope) == b"after max age"


def test_without_a_cache_every_envelope_asks_the_kms(kms, served_node):
    key = kms.create_key()
    before = _served(served_node, "GenerateDataKey")
    for _ in range(3):
        _seal(kms, key.key_id, b"x")
    assert _served(served_node, "GenerateDataKey") - before == 3


def test_a_file_round_trips_through_the_kms(kms, tmp_path):
    key = kms.create_key(alias="alias/files")
    data = os.urandom(3 * 1024 * 1024 + 12345)
    (tmp_path / "plain").write_bytes(data)
    written = encrypt_stream(
        kms, "alias/files", tmp_path / "plain", tmp_path / "sealed", context={"file": "plain"}, chunk_size=256 * 1024
    )
    read = decrypt_stream(kms, tmp_path / "sealed", tmp_path / "back", context={"file": "plain"}, key_id=key.key_id)
    assert (tmp_path / "back").read_bytes() == data
    assert written.key_id == read.key_id == key.key_id and read.key_version == 1
    assert read.chunks == 13 and read.plaintext_bytes == len(data)
    assert read.ciphertext_bytes == (tmp_path / "sealed").stat().st_size


def test_a_wrong_context_is_refused_and_a_forged_one_fails_in_the_kms(kms):
    key = kms.create_key()
    envelope, _ = _seal(kms, key.key_id, b"data", context={"app": "aaaa"})
    with pytest.raises(kr.CiphertextAuthenticationError, match="context given does not match"):
        _open(kms, envelope, context={"app": "bbbb"})
    # The same context edited inside the header: the KMS no longer opens the data key.
    with pytest.raises(kr.CiphertextAuthenticationError):
        _open(kms, envelope.replace(b"aaaa", b"bbbb"))


def test_an_altered_wrapped_key_fails_in_the_kms_and_leaves_no_output(kms, tmp_path):
    tmp_path = tmp_path / "files"  # the node's database lives in tmp_path
    tmp_path.mkdir()
    key = kms.create_key()
    envelope, info = _seal(kms, key.key_id, b"data")
    forged = bytearray(envelope)
    forged[info.header_bytes - 20] ^= 0x01  # inside the wrapped DEK (the header tag is the last 16 bytes)
    (tmp_path / "forged").write_bytes(forged)
    with pytest.raises(kr.CiphertextAuthenticationError):
        decrypt_stream(kms, tmp_path / "forged", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_decrypt_under_another_key_id_or_a_disabled_key_is_refused(kms, tmp_path):
    tmp_path = tmp_path / "files"
    tmp_path.mkdir()
    key, other = kms.create_key(), kms.create_key()
    envelope, _ = _seal(kms, key.key_id, b"data")
    (tmp_path / "sealed").write_bytes(envelope)
    with pytest.raises(kr.InvalidArgumentError, match=f"made under key {key.key_id}, not {other.key_id}"):
        decrypt_stream(kms, tmp_path / "sealed", tmp_path / "out", key_id=other.key_id)
    kms.disable_key(key.key_id)
    with pytest.raises(kr.KeyDisabledError):
        decrypt_stream(kms, tmp_path / "sealed", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sealed"]
