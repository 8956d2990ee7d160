"""Envelope encryption (`client_sdk.envelope`) against a fake KMS: the format, tamper detection,
atomic output, streaming reads and writes."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from client_sdk.datakey_cache import DataKeyCache
from client_sdk.envelope import (
    CHUNK_OVERHEAD,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    decode_context,
    decrypt_stream,
    encode_context,
    encrypt_stream,
)
from client_sdk.types import DataKey, DecryptResult
from foundation.errors import (
    CiphertextAuthenticationError,
    InvalidArgumentError,
    InvalidEncryptionContextError,
    KeyrelayError,
    MalformedCiphertextError,
)

CHUNK = MIN_CHUNK_SIZE  # small chunks: several of them in a few KiB
CONTEXT = {"app": "backup", "tenant": "acme"}


class FakeKms:
    """GenerateDataKey and Decrypt as the KMS does them: the DEK wrapped by AES-GCM under a master
    key with the canonical context as AAD; a wrong context or an altered blob fails to decrypt."""

    def __init__(self) -> None:
        self._master = AESGCM(os.urandom(32))
        self.generated = 0
        self.decrypted = 0
        self.deks: list[bytes] = []
        self.decrypt_key_ids: list[str] = []

    def generate_data_key(self, key_id, *, number_of_bytes=32, context=None, timeout=None) -> DataKey:
        self.generated += 1
        dek = os.urandom(number_of_bytes)
        self.deks.append(dek)
        nonce = os.urandom(12)
        blob = key_id.encode().ljust(16, b"\0") + nonce + self._master.encrypt(nonce, dek, encode_context(context or {}))
        return DataKey(dek, blob, key_id, 1)

    def decrypt(self, ciphertext_blob, *, context=None, key_id="", timeout=None) -> DecryptResult:
        self.decrypted += 1
        self.decrypt_key_ids.append(key_id)
        stored_id = ciphertext_blob[:16].rstrip(b"\0").decode(errors="replace")
        try:
            dek = self._master.decrypt(ciphertext_blob[16:28], ciphertext_blob[28:], encode_context(context or {}))
        except Exception:
            raise CiphertextAuthenticationError("the ciphertext did not authenticate") from None
        return DecryptResult(dek, stored_id, 1)


@pytest.fixture
def kms() -> FakeKms:
    return FakeKms()


def _encrypt(kms, data: bytes, *, context=CONTEXT, chunk_size=CHUNK, **kwargs) -> tuple[bytes, object]:
    out = io.BytesIO()
    info = encrypt_stream(kms, "key-1", io.BytesIO(data), out, context=context, chunk_size=chunk_size, **kwargs)
    return out.getvalue(), info


def _decrypt(kms, envelope: bytes, **kwargs) -> bytes:
    out = io.BytesIO()
    decrypt_stream(kms, io.BytesIO(envelope), out, **kwargs)
    return out.getvalue()


def _chunk_span(info, index: int) -> tuple[int, int]:
    """Where chunk `index` (a full one) sits in the envelope."""
    start = info.header_bytes + index * (info.chunk_size + CHUNK_OVERHEAD)
    return start, start + info.chunk_size + CHUNK_OVERHEAD


# -- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 17])
def test_round_trip_of_every_size_around_chunk_boundaries(kms, size):
    data = os.urandom(size)
    envelope, info = _encrypt(kms, data)
    assert _decrypt(kms, envelope, context=CONTEXT) == data
    # Full chunks, then a final chunk shorter than a full one (empty when the size is a multiple).
    assert info.chunks == size // CHUNK + 1
    assert info.plaintext_bytes == size
    assert info.ciphertext_bytes == len(envelope) == info.header_bytes + size + info.chunks * CHUNK_OVERHEAD
    assert info.key_id == "key-1" and info.context == CONTEXT and info.chunk_size == CHUNK


def test_empty_input_is_one_final_empty_chunk(kms):
    envelope, info = _encrypt(kms, b"")
    assert info.chunks == 1 and len(envelope) == info.header_bytes + CHUNK_OVERHEAD
    assert envelope[info.header_bytes] == 0x01  # the final flag
    assert _decrypt(kms, envelope) == b""


def test_decrypt_reports_what_encrypt_wrote(kms):
    envelope, written = _encrypt(kms, os.urandom(3 * CHUNK + 5))
    read = decrypt_stream(kms, io.BytesIO(envelope), io.BytesIO())
    for field in ("context", "chunk_size", "plaintext_bytes", "ciphertext_bytes", "chunks", "header_bytes", "message_id"):
        assert getattr(read, field) == getattr(written, field), field


def test_paths_round_trip_and_the_output_is_private(kms, tmp_path):
    source, envelope, back = tmp_path / "in.bin", tmp_path / "out.krev", tmp_path / "back.bin"
    data = os.urandom(3 * CHUNK + 100)
    source.write_bytes(data)
    encrypt_stream(kms, "key-1", source, envelope, context=CONTEXT, chunk_size=CHUNK)
    decrypt_stream(kms, str(envelope), str(back))
    assert back.read_bytes() == data
    assert stat.S_IMODE(envelope.stat().st_mode) == 0o600
    assert stat.S_IMODE(back.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.bin", "in.bin", "out.krev"], "no temp files left"


def test_reads_from_the_current_position_of_a_file_object(kms):
    source = io.BytesIO(b"skip me|" + b"the data")
    source.seek(8)
    out = io.BytesIO()
    info = encrypt_stream(kms, "key-1", source, out)
    assert info.plaintext_bytes == 8
    assert _decrypt(kms, out.getvalue()) == b"the data"


def test_progress_is_called_per_chunk_with_the_bytes_so_far(kms):
    seen: list[int] = []
    envelope, _ = _encrypt(kms, os.urandom(2 * CHUNK + 10), progress=seen.append)
    assert seen == [CHUNK, 2 * CHUNK, 2 * CHUNK + 10]
    seen.clear()
    decrypt_stream(kms, io.BytesIO(envelope), io.BytesIO(), progress=seen.append)
    assert seen == [CHUNK, 2 * CHUNK, 2 * CHUNK + 10]


def test_every_message_has_its_own_id_and_ciphertext_even_under_one_cached_dek(kms):
    cache = DataKeyCache(max_age_seconds=60, max_messages=10)
    first, a = _encrypt(kms, b"x" * CHUNK * 2, cache=cache)
    second, b = _encrypt(kms, b"x" * CHUNK * 2, cache=cache)
    assert kms.generated == 1 and b.data_key_cached and not a.data_key_cached
    assert a.message_id != b.message_id
    # Same DEK, same plaintext, same chunk index: different ciphertext (the per-message key differs).
    assert first[slice(*_chunk_span(a, 0))][5:] != second[slice(*_chunk_span(b, 0))][5:]


# -- context --------------------------------------------------------------------------------------


def test_decrypt_without_a_context_uses_the_envelopes(kms):
    envelope, _ = _encrypt(kms, b"data", context={"b": "2", "a": "1"})
    out = io.BytesIO()
    info = decrypt_stream(kms, io.BytesIO(envelope), out)
    assert out.getvalue() == b"data" and info.context == {"a": "1", "b": "2"}


def test_a_context_in_another_order_is_the_same_context(kms):
    envelope, _ = _encrypt(kms, b"data", context={"b": "2", "a": "1"})
    assert _decrypt(kms, envelope, context={"a": "1", "b": "2"}) == b"data"


@pytest.mark.parametrize("given", [{}, {"app": "backup"}, {"app": "backup", "tenant": "other"}, {**CONTEXT, "x": "y"}])
def test_a_different_context_is_refused_before_the_kms_is_asked(kms, given):
    envelope, _ = _encrypt(kms, b"data")
    with pytest.raises(CiphertextAuthenticationError, match="encryption context given does not match") as caught:
        _decrypt(kms, envelope, context=given)
    assert kms.decrypted == 0
    assert "other" not in str(caught.value), "names the keys that differ, not their values"


def test_the_kms_checks_the_context_in_the_header_as_the_deks_aad(kms):
    # A context swapped in the header (with a consistent length) no longer opens the data key.
    envelope, info = _encrypt(kms, b"data", context={"app": "aaaa"})
    forged = envelope.replace(b"aaaa", b"bbbb")
    with pytest.raises(CiphertextAuthenticationError):
        _decrypt(kms, forged)


def test_key_id_is_passed_to_the_kms(kms):
    envelope, _ = _encrypt(kms, b"data")
    _decrypt(kms, envelope, key_id="key-1")
    assert kms.decrypt_key_ids == ["key-1"]


def test_context_encoding_is_canonical_and_strictly_parsed():
    encoded = encode_context({"b": "2", "a": "é"})
    assert encoded == b"\x00\x02" + b"\x00\x01a\x00\x00\x00\x02\xc3\xa9" + b"\x00\x01b\x00\x00\x00\x012"
    assert decode_context(encoded) == {"a": "é", "b": "2"}
    assert decode_context(encode_context({})) == {}
    unsorted = b"\x00\x02" + b"\x00\x01b\x00\x00\x00\x012" + b"\x00\x01a\x00\x00\x00\x011"
    repeated = b"\x00\x02" + b"\x00\x01a\x00\x00\x00\x011" * 2
    for bad in (unsorted, repeated, encoded + b"\0", encoded[:-1], b"\x00", b"\x00\x01\x00\x00\x00\x00\x00\x00"):
        with pytest.raises(MalformedCiphertextError):
            decode_context(bad)


def test_a_context_of_non_strings_is_refused(kms):
    with pytest.raises(InvalidEncryptionContextError):
        _encrypt(kms, b"data", context={"n": 1})
    assert kms.generated == 0


# -- tampering ------------------------------------------------------------------------------------


@pytest.fixture
def sealed(kms):
    """An envelope of 4 full chunks and a short final one: (plaintext, envelope, info)."""
    data = os.urandom(4 * CHUNK + 300)
    envelope, info = _encrypt(kms, data)
    assert info.chunks == 5
    return data, envelope, info


def _fails(kms, envelope: bytes, error=CiphertextAuthenticationError, match: str | None = None) -> KeyrelayError:
    with pytest.raises(error, match=match) as caught:
        _decrypt(kms, envelope)
    return caught.value


def test_dropping_the_final_chunk_is_detected(kms, sealed):
    _, envelope, info = sealed
    err = _fails(kms, envelope[: _chunk_span(info, 3)[1]], match="truncated: it ends after 4 chunk")
    assert "without its final chunk" in str(err)


def test_dropping_a_middle_chunk_is_detected(kms, sealed):
    _, envelope, info = sealed
    start, end = _chunk_span(info, 1)
    _fails(kms, envelope[:start] + envelope[end:], match="at chunk 2 ")


@pytest.mark.parametrize("cut", [1, 3, 6, CHUNK, CHUNK + CHUNK_OVERHEAD - 1])
def test_cutting_inside_a_chunk_is_detected(kms, sealed, cut):
    _, envelope, info = sealed
    start, _ = _chunk_span(info, 2)
    _fails(kms, envelope[: start + cut], match="truncated: it ends inside chunk 3")


def test_cutting_inside_the_final_chunk_is_detected(kms, sealed):
    _, envelope, _ = sealed
    _fails(kms, envelope[:-1], match="truncated: it ends inside chunk 5")


def test_bytes_after_the_final_chunk_are_detected(kms, sealed):
    _, envelope, _ = sealed
    _fails(kms, envelope + b"\0", match="data after its final chunk")


def test_swapping_two_chunks_is_detected(kms, sealed):
    _, envelope, info = sealed
    (a0, a1), (b0, b1) = _chunk_span(info, 1), _chunk_span(info, 2)
    swapped = envelope[:a0] + envelope[b0:b1] + envelope[a0:a1] + envelope[b1:]
    assert len(swapped) == len(envelope)
    _fails(kms, swapped, match="altered, reordered or truncated at chunk 2 ")


def test_repeating_a_chunk_is_detected(kms, sealed):
    _, envelope, info = sealed
    start, end = _chunk_span(info, 1)
    _fails(kms, envelope[:end] + envelope[start:end] + envelope[end:], match="at chunk 3 ")


def test_marking_a_middle_chunk_final_is_detected(kms, sealed):
    # Flag and AAD disagree: "end here" cannot be forged to truncate at a chunk boundary.
    _, envelope, info = sealed
    start, end = _chunk_span(info, 3)
    forged = bytearray(envelope[:end])
    forged[start] = 0x01
    _fails(kms, bytes(forged), match="at chunk 4 ")


def test_a_chunk_from_another_message_under_the_same_dek_is_detected(kms):
    cache = DataKeyCache(max_age_seconds=60)
    data = os.urandom(3 * CHUNK)
    first, a = _encrypt(kms, data, cache=cache)
    second, b = _encrypt(kms, data, cache=cache)
    assert kms.generated == 1
    start, end = _chunk_span(a, 1)
    _fails(kms, first[:start] + second[start:end] + first[end:], match="at chunk 2 ")


@pytest.mark.parametrize("chunk", range(5))
def test_flipping_a_bit_in_any_chunk_is_detected(kms, sealed, chunk):
    _, envelope, info = sealed
    start = _chunk_span(info, chunk)[0]
    length = CHUNK if chunk < 4 else 300
    end = start + 5 + length + 16
    for position in (start + 5, start + 5 + length // 2, end - 1):  # ciphertext start, middle, last tag byte
        forged = bytearray(envelope)
        forged[position] ^= 0x10
        _fails(kms, bytes(forged), match=f"altered, reordered or truncated at chunk {chunk + 1} ")


def test_altering_a_chunks_length_field_is_detected(kms, sealed):
    _, envelope, info = sealed
    start, _ = _chunk_span(info, 4)  # the final chunk (300 bytes)
    forged = bytearray(envelope)
    forged[start + 1 : start + 5] = struct.pack(">I", 299)
    _fails(kms, bytes(forged))
    forged[start + 1 : start + 5] = struct.pack(">I", CHUNK + 1)
    _fails(kms, bytes(forged), match="framing")


def test_flipping_any_bit_of_the_header_is_detected(kms, sealed):
    _, envelope, info = sealed
    for position in range(info.header_bytes):
        for bit in (0x01, 0x80):
            forged = bytearray(envelope)
            forged[position] ^= bit
            with pytest.raises((MalformedCiphertextError, CiphertextAuthenticationError)):
                _decrypt(kms, bytes(forged))


def test_an_altered_header_field_fails_the_header_tag(kms, sealed):
    _, envelope, _ = sealed
    forged = bytearray(envelope)
    forged[10] ^= 0x01  # first byte of the message id: the DEK opens, the header tag does not match
    _fails(kms, bytes(forged), match="envelope header was altered")
    forged = bytearray(envelope)
    forged[8] ^= 0x02  # the chunk size: still in range (1024 -> 1026), but not what was authenticated
    _fails(kms, bytes(forged), match="envelope header was altered")


def test_no_key_material_or_plaintext_in_error_messages(kms, sealed):
    data, envelope, info = sealed
    start, _ = _chunk_span(info, 1)
    forged = bytearray(envelope)
    forged[start + 10] ^= 1
    message = str(_fails(kms, bytes(forged)))
    dek = kms.deks[0]
    for secret in (dek, dek.hex(), data[:16], data[:16].hex(), repr(data[:16])):
        assert str(secret) not in message


# -- not an envelope ------------------------------------------------------------------------------


def _patched(envelope: bytes, offset: int, value: bytes) -> bytes:
    return envelope[:offset] + value + envelope[offset + len(value) :]


def test_headers_this_sdk_cannot_read_are_malformed(kms):
    envelope, info = _encrypt(kms, b"data")
    cases = {
        "not a keyrelay envelope": [b"", b"KRE", b"PK\x03\x04" + envelope[4:], os.urandom(200)],
        "format version 2": [_patched(envelope, 4, b"\x02")],
        "unknown algorithm 7": [_patched(envelope, 5, b"\x07")],
        "chunk size 16": [_patched(envelope, 6, struct.pack(">I", 16))],
        f"chunk size {MAX_CHUNK_SIZE + 1}": [_patched(envelope, 6, struct.pack(">I", MAX_CHUNK_SIZE + 1))],
        "context field claims": [_patched(envelope, 42, struct.pack(">I", 10**6))],
        "ends after 20 bytes": [envelope[:20]],
        "ends inside its wrapped data key": [envelope[: info.header_bytes - 30]],
        "ends inside its header tag": [envelope[: info.header_bytes - 1]],
    }
    for match, forgeries in cases.items():
        for forged in forgeries:
            with pytest.raises(MalformedCiphertextError, match=match):
                _decrypt(kms, forged)
    assert kms.decrypted == 0, "nothing malformed reaches the KMS"


def test_the_chunk_size_must_be_in_range(kms):
    for size in (MIN_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1, 0):
        with pytest.raises(InvalidArgumentError, match="chunk_size"):
            _encrypt(kms, b"data", chunk_size=size)
    assert kms.generated == 0


# -- atomic output --------------------------------------------------------------------------------


def test_a_failed_decrypt_leaves_no_file_and_an_existing_one_untouched(kms, sealed, tmp_path):
    _, envelope, info = sealed
    bad = tmp_path / "bad.krev"
    bad.write_bytes(envelope[: _chunk_span(info, 3)[1]])  # final chunk missing: fails after 4 chunks
    target = tmp_path / "plain.bin"
    with pytest.raises(CiphertextAuthenticationError):
        decrypt_stream(kms, bad, target)
    assert not target.exists()
    target.write_bytes(b"precious")
    with pytest.raises(CiphertextAuthenticationError):
        decrypt_stream(kms, bad, target)
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.krev", "plain.bin"], "temp file removed"


def test_an_interrupted_encrypt_leaves_no_file(kms, tmp_path):
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(3 * CHUNK))

    def interrupt(done: int) -> None:
        if done > CHUNK:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encrypt_stream(kms, "key-1", source, tmp_path / "out.krev", chunk_size=CHUNK, progress=interrupt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.bin"]


def test_a_kms_error_leaves_no_file(tmp_path):
    class Refusing(FakeKms):
        def generate_data_key(self, *args, **kwargs):
            raise CiphertextAuthenticationError("refused")

    (tmp_path / "in.bin").write_bytes(b"data")
    with pytest.raises(CiphertextAuthenticationError):
        encrypt_stream(Refusing(), "key-1", tmp_path / "in.bin", tmp_path / "out.krev")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.bin"]


# -- streaming ------------------------------------------------------------------------------------


class Recording(io.RawIOBase):
    """A non-seekable stream that gives at most `burst` bytes per read and logs every call."""

    def __init__(self, data: bytes, log: list, burst: int | None = None) -> None:
        self._data = io.BytesIO(data)
        self._log = log
        self._burst = burst

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = len(buffer) if self._burst is None else min(len(buffer), self._burst)
        self._log.append(("read", len(buffer)))
        chunk = self._data.read(n)
        buffer[: len(chunk)] = chunk
        return len(chunk)


class LoggingSink(io.RawIOBase):
    def __init__(self, log: list) -> None:
        self.log = log
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.log.append(("write", len(b)))
        self.data += b
        return len(b)


def test_reads_and_writes_are_bounded_by_a_chunk_and_interleaved(kms):
    data = os.urandom(8 * CHUNK + 1)
    log: list = []
    sink = LoggingSink(log)
    encrypt_stream(kms, "key-1", Recording(data, log), sink, chunk_size=CHUNK)
    envelope = bytes(sink.data)
    assert max(n for op, n in log if op == "read") <= CHUNK
    first_write = next(i for i, (op, _) in enumerate(log) if op == "write")
    assert first_write < len(log) // 2, "encryption writes as it reads"

    log.clear()
    out = LoggingSink(log)
    decrypt_stream(kms, Recording(envelope, log), out)
    assert bytes(out.data) == data
    assert max(n for op, n in log if op == "read") <= CHUNK + 16
    writes = [i for i, (op, _) in enumerate(log) if op == "write"]
    assert len(writes) == 9 and writes[0] < len(log) // 2, "decryption writes each chunk as it checks it"


def test_short_reads_from_a_pipe_like_source_still_work(kms):
    data = os.urandom(3 * CHUNK + 7)
    out = io.BytesIO()
    encrypt_stream(kms, "key-1", Recording(data, [], burst=7), out, chunk_size=CHUNK)
    back = io.BytesIO()
    decrypt_stream(kms, Recording(out.getvalue(), [], burst=5), back)
    assert back.getvalue() == data


def test_a_text_mode_source_is_refused_clearly(kms):
    with pytest.raises(TypeError, match="binary"):
        encrypt_stream(kms, "key-1", io.StringIO("text"), io.BytesIO())


# -- the format, as docs/envelope-format.md specifies it ------------------------------------------


def test_an_independent_reader_following_the_spec_decrypts_the_envelope(kms):
    """Decrypt with nothing but the spec and `cryptography`, so the document and the code agree."""
    data = os.urandom(2 * CHUNK + 50)
    envelope, _ = _encrypt(kms, data)
    magic, version, algorithm, chunk_size, message_id, context_len = struct.unpack_from(">4sBBI32sI", envelope)
    assert (magic, version, algorithm, chunk_size) == (b"KREV", 1, 1, CHUNK)
    offset = 46
    context = decode_context(envelope[offset : offset + context_len])
    offset += context_len
    (blob_len,) = struct.unpack_from(">H", envelope, offset)
    blob = envelope[offset + 2 : offset + 2 + blob_len]
    offset += 2 + blob_len
    header, tag = envelope[:offset], envelope[offset : offset + 16]
    offset += 16
    dek = kms.decrypt(blob, context=context).plaintext
    key = HKDF(hashes.SHA256(), 32, salt=message_id, info=b"keyrelay-envelope\x01\x01").derive(dek)
    aead = AESGCM(key)
    assert aead.decrypt(bytes(12), tag, header) == b""
    header_hash = hashlib.sha256(header + tag).digest()
    plaintext, index = b"", 0
    while True:
        flag, length = struct.unpack_from(">BI", envelope, offset)
        sealed = envelope[offset + 5 : offset + 5 + length + 16]
        nonce = (index + 1).to_bytes(12, "big")
        plaintext += aead.decrypt(nonce, sealed, header_hash + struct.pack(">IB", index, flag))
        offset += 5 + length + 16
        index += 1
        if flag == 1:
            break
    assert offset == len(envelope) and plaintext == data and context == CONTEXT
