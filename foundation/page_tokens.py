"""Page tokens of the list calls: opaque to callers, versioned, and parsed only as what we make.

A token is the unpadded base64url of::

    version (1 byte, 1) || list (1 byte: which list call made it) || fields

where each field of the list's position is a finite float (``b"f"`` + 8 bytes, IEEE 754
big-endian) or a string (``b"s"`` + u16 length + UTF-8, at most `MAX_STRING_BYTES`). The parser
reads exactly the fields the list call expects and refuses anything else (another version,
another list's token, trailing bytes, any spelling but the one `encode` writes, a token longer
than `MAX_TOKEN_CHARS`) with
`InvalidPageTokenError`, in time and memory bounded by the token's length. A token carries only a
position (a creation time and an id); the list call still filters by the caller, so a token made
for one caller shows another nothing.
"""

from __future__ import annotations

import base64
import binascii
import enum
import math
import struct
from typing import Sequence

from foundation.errors import InvalidPageTokenError

VERSION = 1
MAX_STRING_BYTES = 256
MAX_TOKEN_CHARS = 1024


class Listing(enum.IntEnum):
    """The list call a token belongs to, and so the fields of its position."""

    KEYS = 1  # (create_time, key_id)
    INSTANCES = 2  # (instance_id,)
    ACCESS_POINTS = 3  # (create_time, access_point_id)


_FIELDS: dict[Listing, str] = {Listing.KEYS: "fs", Listing.INSTANCES: "s", Listing.ACCESS_POINTS: "fs"}
_DOUBLE = struct.Struct(">d")
_LENGTH = struct.Struct(">H")


def _refuse(listing: Listing) -> InvalidPageTokenError:
    name = listing.name.lower().replace("_", " ")
    return InvalidPageTokenError(
        f"page_token is not one this service returned for listing {name}; start again without a page_token"
    )


def encode(listing: Listing, position: Sequence[float | str]) -> str:
    """The token of `position` (the last item of a page) in `listing`."""
    kinds = _FIELDS[listing]
    if len(position) != len(kinds):
        raise ValueError(f"a {listing.name} position has {len(kinds)} fields, not {len(position)}")
    out = bytearray((VERSION, listing))
    for kind, value in zip(kinds, position):
        if kind == "f":
            out += b"f" + _DOUBLE.pack(float(value))
        else:
            data = str(value).encode()
            if len(data) > MAX_STRING_BYTES:
                raise ValueError(f"a page position's string is {len(data)} bytes, over {MAX_STRING_BYTES}")
            out += b"s" + _LENGTH.pack(len(data)) + data
    return base64.urlsafe_b64encode(bytes(out)).rstrip(b"=").decode()


def decode(listing: Listing, token: str) -> tuple[float | str, ...]:
    """The position `token` holds, when `encode(listing, ...)` made it; else InvalidPageTokenError."""
    if len(token) > MAX_TOKEN_CHARS:
        raise _refuse(listing)
    try:
        raw = base64.b64decode(token.encode("ascii") + b"=" * (-len(token) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise _refuse(listing) from None
    if raw[:2] != bytes((VERSION, listing)):
        raise _refuse(listing)
    at, fields = 2, []
    for kind in _FIELDS[listing]:
        if raw[at : at + 1] != kind.encode():
            raise _refuse(listing)
        at += 1
        if kind == "f":
            if len(raw) < at + 8:
                raise _refuse(listing)
            (number,) = _DOUBLE.unpack_from(raw, at)
            if not math.isfinite(number):
                raise _refuse(listing)
            fields.append(number)
            at += 8
        else:
            if len(raw) < at + 2:
                raise _refuse(listing)
            (length,) = _LENGTH.unpack_from(raw, at)
            at += 2
            data = raw[at : at + length]
            if length > MAX_STRING_BYTES or len(data) != length:
                raise _refuse(listing)
            try:
                fields.append(data.decode())
            except UnicodeDecodeError:
                raise _refuse(listing) from None
            at += length
    # Only the one spelling `encode` writes is accepted (no padding, no other alphabet).
    if at != len(raw) or encode(listing, fields) != token:
        raise _refuse(listing)
    return tuple(fields)
