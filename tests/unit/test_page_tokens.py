"""Page tokens: what `encode` makes comes back exactly, and anything else is InvalidPageTokenError,
never another exception, whatever a caller crafts."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foundation import page_tokens
from foundation.errors import InvalidPageTokenError
from foundation.page_tokens import Listing

finite = st.floats(allow_nan=False, allow_infinity=False)
ids = st.text(max_size=64).filter(lambda s: len(s.encode()) <= page_tokens.MAX_STRING_BYTES)
positions = {
    Listing.KEYS: st.tuples(finite, ids),
    Listing.INSTANCES: st.tuples(ids),
    Listing.ACCESS_POINTS: st.tuples(finite, ids),
}


@given(st.data())
def test_tokens_round_trip_and_belong_to_their_listing(data):
    listing = data.draw(st.sampled_from(list(Listing)))
    position = data.draw(positions[listing])
    token = page_tokens.encode(listing, position)
    assert page_tokens.decode(listing, token) == position
    for other in Listing:
        if other is not listing:
            with pytest.raises(InvalidPageTokenError):
                page_tokens.decode(other, token)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


# What the old JSON tokens let a caller craft: a huge integer, deep nesting, the old format itself.
CRAFTED = [
    _b64(b"[1" + b"0" * 400 + b', "x"]'),
    _b64(b"[" * 100000),
    _b64(b'[1700000000.0, "k"]'),
    "garbage!",
    "",
    "=" * 8,
    "é",
    _b64(bytes((1, 1)) + b"f" + b"\x7f\xf0" + b"\0" * 6 + b"s\0\0"),  # +infinity as the time
    _b64(bytes((1, 2)) + b"s\xff\xff"),  # a length past the end
    _b64(bytes((1, 2)) + b"s\0\2\xff\xfe"),  # not UTF-8
    _b64(bytes((2, 2)) + b"s\0\0"),  # another version
]


@pytest.mark.parametrize("token", CRAFTED)
def test_crafted_tokens_are_refused(token):
    for listing in Listing:
        with pytest.raises(InvalidPageTokenError, match="page_token"):
            page_tokens.decode(listing, token)


@given(st.sampled_from(list(Listing)), st.one_of(st.text(max_size=3000), st.binary(max_size=600).map(_b64)))
def test_any_other_token_is_refused_as_invalid(listing, token):
    try:
        position = page_tokens.decode(listing, token)
    except InvalidPageTokenError:
        return
    # The rare random token that parses is one `encode` spells exactly so.
    assert page_tokens.encode(listing, position) == token


@given(st.sampled_from(list(Listing)), st.data())
def test_every_mutation_of_a_real_token_is_refused_or_a_valid_position(listing, data):
    token = page_tokens.encode(listing, data.draw(positions[listing]))
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    mutated = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    try:
        position = page_tokens.decode(listing, mutated)
    except InvalidPageTokenError:
        return
    assert page_tokens.encode(listing, position) == mutated
