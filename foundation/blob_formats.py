"""Binary formats the node writes: ciphertext blobs and wrapped CMK blobs.

Ciphertext blobs are public: the gateway and the SDK read the key id in them to route a call, so
the formats live here rather than in the node.

Ciphertext blob (what Encrypt and GenerateDataKey return), format 1::

    0      1                17              21       33
    | 0x01 | key id (16, UUID) | version (u32) | IV (12) | ciphertext || GCM tag (16) |

The 33-byte header is part of the AAD, so no byte of it can change without failing
authentication. The gateway routes a ciphertext by the key id in it.

Wrapped CMK blob (stored in the key store, never returned), format 1::

    | 0x01 | wrap mechanism (u32, PKCS#11 CKM_*) | wrapped key bytes |

The mechanism is recorded because HSM vendors disagree on the id of RFC 5649 wrapping.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from foundation.errors import InternalError, MalformedCiphertextError

CIPHERTEXT_FORMAT = 1
IV_BYTES = 12
TAG_BYTES = 16
_HEADER = struct.Struct(">B16sI12s")
HEADER_BYTES = _HEADER.size
WRAPPED_KEY_FORMAT = 1
_WRAPPED_HEADER = struct.Struct(">BI")


@dataclass(frozen=True, slots=True)
class CiphertextBlob:
    """A parsed ciphertext blob."""

    key_id: str
    version: int
    iv: bytes
    ciphertext: bytes  # ciphertext || tag

    @property
    def header(self) -> bytes:
        """The header bytes, authenticated as the first part of the AAD."""
        return encode_header(self.key_id, self.version, self.iv)


def encode_header(key_id: str, version: int, iv: bytes) -> bytes:
    """The 33-byte header of a ciphertext blob."""
    return _HEADER.pack(CIPHERTEXT_FORMAT, uuid.UUID(key_id).bytes, version, iv)


def parse_ciphertext(blob: bytes) -> CiphertextBlob:
    """Parse a ciphertext blob; raise MalformedCiphertextError if it is not one."""
    if len(blob) < HEADER_BYTES + TAG_BYTES:
        raise MalformedCiphertextError(
            f"ciphertext blob is {len(blob)} bytes, shorter than any keyrelay ciphertext "
            f"({HEADER_BYTES + TAG_BYTES}); was it truncated?"
        )
    fmt, key_bytes, version, iv = _HEADER.unpack_from(blob)
    if fmt != CIPHERTEXT_FORMAT:
        raise MalformedCiphertextError(
            f"ciphertext blob has format {fmt}; this node reads format {CIPHERTEXT_FORMAT}. "
            "Pass the ciphertext_blob exactly as Encrypt returned it"
        )
    if version == 0:
        raise MalformedCiphertextError("ciphertext blob names key version 0, which never exists")
    return CiphertextBlob(str(uuid.UUID(bytes=key_bytes)), version, iv, blob[HEADER_BYTES:])


def peek_key_id(blob: bytes) -> str:
    """The key id inside a ciphertext blob (for routing)."""
    return parse_ciphertext(blob).key_id


def encode_wrapped_key(mechanism: int, wrapped: bytes) -> bytes:
    """A stored CMK blob: header recording the wrap mechanism, then the wrapped key."""
    return _WRAPPED_HEADER.pack(WRAPPED_KEY_FORMAT, mechanism) + wrapped


def parse_wrapped_key(blob: bytes) -> tuple[int, bytes]:
    """Return (mechanism, wrapped bytes) of a stored CMK blob."""
    if len(blob) <= _WRAPPED_HEADER.size:
        raise InternalError("a stored master-key blob is truncated; the key store is damaged")
    fmt, mechanism = _WRAPPED_HEADER.unpack_from(blob)
    if fmt != WRAPPED_KEY_FORMAT:
        raise InternalError(f"a stored master-key blob has unknown format {fmt}")
    return mechanism, blob[_WRAPPED_HEADER.size :]
