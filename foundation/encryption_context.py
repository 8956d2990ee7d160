"""The encryption context: validation and its canonical encoding, used as AES-GCM AAD by the KMS
node (data-key wraps) and by the SDK (envelope headers), which must encode it byte for byte alike.

The encoding is independent of map order: pairs sorted by the UTF-8 bytes of their keys, then
``u16 count`` followed by ``u16 len(key) || key || u32 len(value) || value`` for each pair. Two
contexts with the same pairs always encode to the same bytes, and different ones never do.
"""

from __future__ import annotations

import struct
from typing import Mapping

from foundation.errors import InvalidEncryptionContextError, quote

MAX_PAIRS = 64
MAX_KEY_BYTES = 128
MAX_VALUE_BYTES = 1024
#: Context keys with this prefix are set by keyrelay itself and refused from callers.
RESERVED_PREFIX = "keyrelay:"


def validate(context: Mapping[str, str]) -> None:
    """Check a caller's context against the documented limits; raise with what to fix."""
    if len(context) > MAX_PAIRS:
        raise InvalidEncryptionContextError(
            f"encryption context has {len(context)} pairs; at most {MAX_PAIRS} are allowed"
        )
    for key, value in context.items():
        try:
            key_len = len(key.encode())
            value.encode()
        except UnicodeEncodeError:
            raise InvalidEncryptionContextError(
                f"encryption context pair {quote(key)} is not valid UTF-8 text"
            ) from None
        if not 1 <= key_len <= MAX_KEY_BYTES:
            raise InvalidEncryptionContextError(
                f"encryption context key {quote(key)} is {key_len} bytes; keys must be 1-{MAX_KEY_BYTES} bytes"
            )
        if len(value.encode()) > MAX_VALUE_BYTES:
            raise InvalidEncryptionContextError(
                f"encryption context value for {quote(key)} is over {MAX_VALUE_BYTES} bytes"
            )
        if key.startswith(RESERVED_PREFIX):
            raise InvalidEncryptionContextError(
                f"encryption context key {quote(key)} uses the reserved prefix {quote(RESERVED_PREFIX)}; rename it"
            )


def encode(context: Mapping[str, str]) -> bytes:
    """The canonical byte encoding of a context (no validation)."""
    pairs = sorted((k.encode(), v.encode()) for k, v in context.items())
    parts = [struct.pack(">H", len(pairs))]
    for key, value in pairs:
        parts.append(struct.pack(">H", len(key)) + key + struct.pack(">I", len(value)) + value)
    return b"".join(parts)
