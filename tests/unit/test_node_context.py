"""Unit tests of foundation/encryption_context.py: the encryption context's rules and canonical encoding."""

from __future__ import annotations

import itertools
import struct

import pytest

from foundation.errors import InvalidEncryptionContextError
from foundation.encryption_context import MAX_KEY_BYTES, MAX_PAIRS, MAX_VALUE_BYTES, encode, validate


def test_encoding_format_is_pinned():
    """The exact bytes are part of every ciphertext's AAD, so the format must never change."""
    assert encode({}) == b"\x00\x00"
    assert encode({"a": "bc"}) == b"\x00\x01" + b"\x00\x01a" + b"\x00\x00\x00\x02bc"
    assert encode({"é": ""}) == b"\x00\x01" + b"\x00\x02" + "é".encode() + b"\x00\x00\x00\x00"


def test_encoding_is_independent_of_insertion_order():
    """Every insertion order of the same pairs encodes to the same bytes."""
    pairs = [("tenant", "acme"), ("Purpose", "billing"), ("z", ""), ("ключ", "значение"), ("a", "1")]
    encodings = {encode(dict(order)) for order in itertools.permutations(pairs)}
    assert len(encodings) == 1


def test_pairs_are_sorted_by_utf8_bytes_of_keys():
    """Pairs appear sorted by the UTF-8 bytes of their keys ('B' < 'a' < 'z' < 'é')."""
    encoded = encode({"é": "4", "z": "3", "a": "2", "B": "1"})
    assert encoded.index(b"B") < encoded.index(b"a") < encoded.index(b"z") < encoded.index("é".encode())
    assert struct.unpack_from(">H", encoded)[0] == 4


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"a": "bc"}, {"ab": "c"}),
        ({"a": "b", "c": "d"}, {"a": "b\x00\x01c\x00\x00\x00\x01d"}),
        ({"a": ""}, {}),
        ({"a": "b"}, {"b": "a"}),
        ({"k": "v"}, {"k": "v "}),
        ({"ab": ""}, {"a": "b"}),
        ({"a": "1", "b": "2"}, {"a": "2", "b": "1"}),
    ],
)
def test_distinct_contexts_encode_differently(first, second):
    """Different contexts, even ones whose concatenated text is equal, never share an encoding."""
    assert encode(first) != encode(second)


def test_valid_context_at_the_limits():
    """Exactly the maximum pairs, key bytes and value bytes are accepted; an empty value too."""
    validate({f"k{i}": "v" for i in range(MAX_PAIRS)})
    validate({"k" * MAX_KEY_BYTES: "v" * MAX_VALUE_BYTES})
    validate({"key": ""})
    validate({})


@pytest.mark.parametrize(
    ("context", "words"),
    [
        ({f"k{i}": "v" for i in range(MAX_PAIRS + 1)}, "pairs"),
        ({"": "v"}, "bytes"),
        ({"k" * (MAX_KEY_BYTES + 1): "v"}, "bytes"),
        ({"é" * 65: "v"}, "130 bytes"),  # 65 characters but 130 bytes: the limit counts bytes
        ({"k": "v" * (MAX_VALUE_BYTES + 1)}, "over 1024 bytes"),
        ({"k": "é" * 513}, "over 1024 bytes"),
        ({"keyrelay:purpose": "x"}, "reserved prefix"),
        ({"ok": "1", "keyrelay:": "x"}, "reserved prefix"),
    ],
)
def test_invalid_contexts_are_refused(context, words):
    """Each rule of the context is enforced with a message saying which."""
    with pytest.raises(InvalidEncryptionContextError, match=words):
        validate(context)


def test_prefix_only_reserved_at_the_start():
    """A key merely containing 'keyrelay:' elsewhere is a caller's key like any other."""
    validate({"app:keyrelay:x": "1", "keyrelay": "2"})


def test_invalid_utf8_is_an_encryption_context_error():
    """A context key that cannot be UTF-8 encoded is refused as an invalid encryption context."""
    with pytest.raises(InvalidEncryptionContextError):
        validate({"\udc80": "v"})
