"""Unit tests of foundation/blob_formats.py: ciphertext blobs and wrapped CMK blobs."""

from __future__ import annotations

import os
import uuid

import pytest

from foundation import blob_formats as blobs
from foundation.errors import InternalError, MalformedCiphertextError

KEY_ID = "3f2a4c1e-9d7b-4e0a-8c5f-1b2d3e4f5a6b"


def make_blob(version: int = 3, body: bytes = b"c" * 20 + b"t" * 16, key_id: str = KEY_ID) -> bytes:
    return blobs.encode_header(key_id, version, b"\x07" * 12) + body


def test_header_layout():
    """The header is 33 bytes: format 1, the key id's 16 UUID bytes, u32 version, 12-byte IV."""
    header = blobs.encode_header(KEY_ID, 0x01020304, bytes(range(12)))
    assert blobs.HEADER_BYTES == len(header) == 33
    assert header[0] == 1
    assert header[1:17] == uuid.UUID(KEY_ID).bytes
    assert header[17:21] == b"\x01\x02\x03\x04"
    assert header[21:] == bytes(range(12))


def test_header_round_trip():
    """parse_ciphertext gives back key id, version, IV and body; .header re-encodes the same bytes."""
    iv = os.urandom(12)
    body = os.urandom(40)
    raw = blobs.encode_header(KEY_ID, 7, iv) + body
    parsed = blobs.parse_ciphertext(raw)
    assert (parsed.key_id, parsed.version, parsed.iv, parsed.ciphertext) == (KEY_ID, 7, iv, body)
    assert parsed.header == raw[: blobs.HEADER_BYTES]
    assert blobs.peek_key_id(raw) == KEY_ID


def test_shortest_valid_blob_has_an_empty_plaintext():
    """Header plus a bare tag (49 bytes) parses; one byte less does not."""
    shortest = make_blob(body=b"t" * blobs.TAG_BYTES)
    assert len(shortest) == blobs.HEADER_BYTES + blobs.TAG_BYTES
    assert blobs.parse_ciphertext(shortest).ciphertext == b"t" * 16
    with pytest.raises(MalformedCiphertextError, match="truncated"):
        blobs.parse_ciphertext(shortest[:-1])


@pytest.mark.parametrize("length", [0, 1, 17, 33, 48])
def test_truncated_blobs(length):
    """Any blob shorter than header + tag is malformed."""
    with pytest.raises(MalformedCiphertextError):
        blobs.parse_ciphertext(make_blob()[:length])


@pytest.mark.parametrize("fmt", [0, 2, 0xFF])
def test_wrong_format_byte(fmt):
    """A format byte other than 1 is refused, naming the format."""
    raw = bytes([fmt]) + make_blob()[1:]
    with pytest.raises(MalformedCiphertextError, match=f"format {fmt}"):
        blobs.parse_ciphertext(raw)


def test_version_zero_is_refused():
    """Key versions start at 1, so a blob naming version 0 is malformed."""
    with pytest.raises(MalformedCiphertextError, match="version 0"):
        blobs.parse_ciphertext(make_blob(version=0))


def test_malformed_is_an_invalid_argument():
    """Malformed ciphertext travels as INVALID_ARGUMENT (the caller's fault)."""
    import grpc

    assert MalformedCiphertextError.code == grpc.StatusCode.INVALID_ARGUMENT


def test_wrapped_key_round_trip():
    """A stored CMK blob keeps its wrap mechanism and wrapped bytes."""
    wrapped = os.urandom(40)
    stored = blobs.encode_wrapped_key(0x210A, wrapped)
    assert stored[0] == blobs.WRAPPED_KEY_FORMAT
    assert stored[1:5] == b"\x00\x00\x21\x0a"
    assert blobs.parse_wrapped_key(stored) == (0x210A, wrapped)


def test_wrapped_key_damage_is_internal():
    """A truncated or unknown-format stored blob is a damaged store: InternalError, not the caller's fault."""
    stored = blobs.encode_wrapped_key(0x2109, b"k" * 40)
    with pytest.raises(InternalError, match="truncated"):
        blobs.parse_wrapped_key(stored[:5])
    with pytest.raises(InternalError, match="unknown format 9"):
        blobs.parse_wrapped_key(b"\x09" + stored[1:])
