"""Hypothesis strategies for hostile gRPC request bodies, built from protobuf descriptors.

`request_bodies(descriptor, hints)` draws `Body` values for one request message type:

- well-formed messages whose fields take extreme values: edge integers of each field's own type,
  empty and 10k-character strings with non-ASCII and control characters, empty to 100 KiB bytes,
  unknown enum numbers, long repeated fields and maps, nested messages, optional fields set to
  their defaults;
- "baselines" (every hinted field set from its hint) with one field, at any depth, drawn as above,
  so that one odd value meets the code behind the checks a random request fails first;
- wire bytes no serializer would write: random bytes, truncated and bit-flipped serializations,
  invalid UTF-8 in a string field, groups nested past any parser's recursion limit, 10- and
  11-byte varints, wrong wire types, lengths that run past the end, and unknown fields.

`hints` map field names to strategies of values the servers know (real key ids, ciphertexts,
page tokens, user ids ...) so that requests get past the first lookups; an unhinted field is
generated from its type alone. `mutations` and `page_tokens` derive hostile variants from real
blobs and tokens, for hints.

`sweep_bodies(descriptor, baseline, extras)` lists the same bodies every run: a workable request
and that request with each field in turn (and every field of a type at once) at the extremes of
its type, so that single-field edge cases are met every run, whatever hypothesis draws;
`blob_sweep` and `page_token_sweep` give fixed hostile variants of real values for it.

Everything is drawn through hypothesis, so a seed replays a run and failures shrink. Large
values are expanded from a few drawn numbers (a seed, a length) rather than drawn byte by byte,
which keeps generation cheap next to the RPCs it feeds.
"""

from __future__ import annotations

import base64
import json
import random
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory, text_format
from google.protobuf.message import DecodeError, Message
from hypothesis import strategies as st

FD = pb_descriptor.FieldDescriptor


def choice(values: Sequence) -> st.SearchStrategy:
    """Like `st.sampled_from`, but without a repr listing every value (some here are 100 KiB,
    and hypothesis warns about, and spends time on, such reprs)."""
    values = tuple(values)

    def pick(index: int):
        return values[index]

    return st.integers(0, len(values) - 1).map(pick)


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, each drawn in proportion to its weight (`st.one_of` flattens nested
    one_ofs into equal shares, which would drown a single branch among many)."""
    table = tuple(strategy for weight, strategy in choices for _ in range(weight))
    return choice(table).flatmap(lambda strategy: strategy)


# -- value pools ----------------------------------------------------------------------------

#: Integer values worth trying in any integer field; each field keeps those its type can hold.
INT_EDGES = (
    0, 1, -1, 2, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 99, 100, 101, 365, 366, 999, 1000, 1001, 1024, 1025,
    4096, 4097, 65535, 65536, 2**31 - 1, 2**31, -(2**31), 2**32 - 1, 2**32, 2**53, 2**53 + 1,
    2**63 - 1, 2**63, -(2**63), 2**64 - 1,
)

_INT_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}

#: Strings that mean something to some parser or check: separators, wildcards, paths, numbers
#: and JSON in disguise, control and bidi characters, NUL, lengths just past common limits.
SPECIAL_STRINGS = (
    "", " ", "\x00", "\n", "\r\n", "\t", "*", "**", "?", "%", "%s%n", "\\", "/", "//", "..", "../../etc/passwd",
    "alias/", "alias/*", "alias//x", "arn:keyrelay:kms:acme:key/", "keyrelay:", "keyrelay:reserved",
    "'; DROP TABLE keys; --", "\" OR 1=1 --", "null", "true", "[]", "{}", "-1", "0", "1e999", "NaN", "-0",
    "18446744073709551616", "0x7fffffff", "\u202e\u0635", "\ufeff", "\ufffd", "\U0001f600", "\u0000x",
    "a" * 64, "a" * 65, "a" * 128, "a" * 129, "a" * 1024, "a" * 1025, "A" * 10_000, "é" * 5_000,
    "0.0.0.0/0", "::/0", "127.0.0.1:1", "[::1]:1", "localhost:0", "256.256.256.256/33",
)

#: Byte strings with a shape: empty, NUL, all ones, and the sizes around common limits.
SPECIAL_BYTES = (b"", b"\x00", b"\xff", b"\x00" * 16, b"\xff" * 32, b"\x01" + b"\x00" * 63, b"x" * 4096, b"x" * 4097)

#: Lengths of expanded (not drawn) strings and byte strings.
LONG_TEXT_SIZES = st.one_of(st.sampled_from((1_000, 4_096, 4_097, 10_000)), st.integers(129, 10_000))
LONG_BYTES_SIZES = st.one_of(st.sampled_from((1_024, 4_096, 4_097, 65_536, 102_400)), st.integers(257, 102_400))
#: Element counts of repeated fields and maps made of one element copied.
LONG_REPEAT_COUNTS = (64, 65, 100, 101, 1000, 1001)
#: Repeated and map fields stop growing at about this many serialized bytes.
REPEAT_BYTES_LIMIT = 512 * 1024
#: How deep generated nested messages go (deeper nesting comes from the raw bodies).
MAX_MESSAGE_DEPTH = 4


def texts() -> st.SearchStrategy[str]:
    """Any string a proto3 string field can hold: special ones, short arbitrary text (every
    code point but surrogates, so control and non-ASCII characters too), and long text made by
    repeating a drawn chunk."""

    def expand(chunk: str, size: int) -> str:
        return (chunk * (size // len(chunk) + 1))[:size]

    return st.one_of(
        choice(SPECIAL_STRINGS),
        st.text(max_size=40),
        st.text(alphabet=st.characters(codec="ascii"), max_size=40),
        st.builds(expand, st.text(min_size=1, max_size=8), LONG_TEXT_SIZES),
    )


def binaries() -> st.SearchStrategy[bytes]:
    """Empty, small, special and up to 100 KiB of bytes (large ones expanded from a seed)."""
    return st.one_of(
        choice(SPECIAL_BYTES),
        st.binary(max_size=64),
        st.builds(lambda seed, size: random.Random(seed).randbytes(size), st.integers(0, 2**32), LONG_BYTES_SIZES),
    )


def _boundaries(lo: int, hi: int) -> list[int]:
    """The values where a type's range meets a narrower or signed one: where conversions to
    int32, int64, a C double or a database column start to lose or refuse."""
    marks = (-(2**63), -(2**31) - 1, -(2**31), -1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1,
             2**63 - 1, 2**63, 2**64 - 1)
    return [v for v in marks if lo <= v <= hi] + [lo, hi]


def integers(field_type: int) -> st.SearchStrategy[int]:
    """Boundaries of the field's type, values that are limits somewhere, and any other value."""
    lo, hi = _INT_RANGES[field_type]
    return weighted(
        (2, choice(_boundaries(lo, hi))),
        (2, choice([v for v in INT_EDGES if lo <= v <= hi])),
        (1, st.integers(lo, hi)),
    )


def enums(enum: pb_descriptor.EnumDescriptor) -> st.SearchStrategy[int]:
    """Defined values, and (for an open enum) numbers it does not define."""
    defined = st.sampled_from([v.number for v in enum.values])
    if getattr(enum, "is_closed", False):
        return defined
    unknown = [n for n in (-1, 99, 1000, 2**31 - 1, -(2**31)) if n not in enum.values_by_number]
    return st.one_of(defined, st.sampled_from(unknown))


# -- well-formed messages -----------------------------------------------------------------------

Hints = Mapping[str, st.SearchStrategy]


def message_class(descriptor: pb_descriptor.Descriptor) -> type[Message]:
    """The generated class of a message type."""
    return message_factory.GetMessageClass(descriptor)


def _hint(field: FD, hints: Hints) -> st.SearchStrategy | None:
    """The hint for a field, looked up as "Message.field" first, then "field"."""
    return hints.get(f"{field.containing_type.name}.{field.name}", hints.get(field.name))


def _size(value) -> int:
    """About how many bytes a field value takes on the wire."""
    if isinstance(value, Message):
        return value.ByteSize()
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, bytes):
        return len(value)
    return 10


def _copies(value, count: int) -> list:
    """`count` copies of value, fewer if they would pass REPEAT_BYTES_LIMIT."""
    return [value] * max(1, min(count, REPEAT_BYTES_LIMIT // max(1, _size(value))))


def _single(field: FD, hints: Hints, depth: int) -> st.SearchStrategy:
    """Values of one element of a field, from its type alone."""
    if field.type == FD.TYPE_MESSAGE:
        return messages(field.message_type, hints, depth + 1)
    if field.type == FD.TYPE_STRING:
        return texts()
    if field.type == FD.TYPE_BYTES:
        return binaries()
    if field.type == FD.TYPE_BOOL:
        return st.booleans()
    if field.type == FD.TYPE_ENUM:
        return enums(field.enum_type)
    if field.type == FD.TYPE_FLOAT:
        return st.floats(width=32)
    if field.type == FD.TYPE_DOUBLE:
        return st.floats()
    return integers(field.type)


def _map(field: FD, hints: Hints, depth: int) -> st.SearchStrategy[dict]:
    """A few entries of any key and value, or many (up to 1001) entries of one value."""
    entry = field.message_type
    key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
    keys, values = _single(key, hints, depth), _single(value, hints, depth)

    def distinct_key(i: int):
        if key.type == FD.TYPE_STRING:
            return f"k{i}"
        return i % 2 == 0 if key.type == FD.TYPE_BOOL else i

    def many(count: int, item) -> dict:
        return {distinct_key(i): item for i in range(len(_copies(item, count)))}

    return st.one_of(
        st.dictionaries(keys, values, max_size=4),
        st.builds(many, st.sampled_from(LONG_REPEAT_COUNTS), values),
    )


def _value(field: FD, hints: Hints, depth: int, hint_weight: int = 3) -> st.SearchStrategy:
    """Values of a whole field: a list for a repeated field, a dict for a map. A hinted field
    takes its hint `hint_weight` times in `hint_weight + 1`, else a value of its type."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        generic = _map(field, hints, depth)
    elif field.is_repeated:
        element = _single(field, hints, depth)
        generic = st.one_of(
            st.lists(element, max_size=4),
            st.builds(_copies, element, st.sampled_from(LONG_REPEAT_COUNTS)),
        )
    else:
        generic = _single(field, hints, depth)
    hint = _hint(field, hints)
    return generic if hint is None else weighted((hint_weight, hint), (1, generic))


def _assign(msg: Message, field: FD, value) -> None:
    """Set a field of `msg` to a value as `_value` draws it (a list, a dict, a message ...)."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        target = getattr(msg, field.name)
        for k, v in value.items():
            if isinstance(v, Message):
                target[k].CopyFrom(v)
            else:
                target[k] = v
    elif field.is_repeated:
        target = getattr(msg, field.name)
        if field.type == FD.TYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif field.type == FD.TYPE_MESSAGE:
        getattr(msg, field.name).CopyFrom(value)
    else:
        setattr(msg, field.name, value)


def messages(
    descriptor: pb_descriptor.Descriptor, hints: Hints | None = None, depth: int = 0
) -> st.SearchStrategy[Message]:
    """Well-formed messages of a type. Each field is left unset or given a value, so optional
    fields are sometimes present with their default value, and a oneof's members may overwrite
    one another (the last set wins, as on the wire)."""
    hints = hints or {}
    cls = message_class(descriptor)
    if depth > MAX_MESSAGE_DEPTH:
        return st.just(cls())
    # One field in three is left unset.
    fields = {f.name: weighted((1, st.none()), (2, _value(f, hints, depth))) for f in descriptor.fields}

    def build(values: dict) -> Message:
        msg = cls()
        for name, value in values.items():
            if value is not None:
                _assign(msg, descriptor.fields_by_name[name], value)
        return msg

    return st.fixed_dictionaries(fields).map(build)


def _is_plain_message(field: FD) -> bool:
    """A singular message field (not a map, not repeated): one can be edited in place."""
    return field.type == FD.TYPE_MESSAGE and not field.is_repeated


def _hinted(descriptor: pb_descriptor.Descriptor, hints: Hints, depth: int = 0) -> bool:
    """Whether a message type has a hinted field, at any depth."""
    return depth <= MAX_MESSAGE_DEPTH and any(
        _hint(f, hints) is not None or (_is_plain_message(f) and _hinted(f.message_type, hints, depth + 1))
        for f in descriptor.fields
    )


def baselines(
    descriptor: pb_descriptor.Descriptor, hints: Hints, depth: int = 0
) -> st.SearchStrategy[Message]:
    """Messages with every hinted field set from its hint (inside nested messages too) and no
    other field: as close to a request that works as the hints know how to make."""
    cls = message_class(descriptor)
    fields = {}
    for f in descriptor.fields:
        if _hint(f, hints) is not None:
            fields[f.name] = _hint(f, hints)
        elif _is_plain_message(f) and _hinted(f.message_type, hints, depth + 1):
            fields[f.name] = baselines(f.message_type, hints, depth + 1)

    def build(values: dict) -> Message:
        msg = cls()
        for name, value in values.items():
            _assign(msg, descriptor.fields_by_name[name], value)
        return msg

    return st.fixed_dictionaries(fields).map(build)


def _edit_paths(descriptor: pb_descriptor.Descriptor, depth: int = 3) -> Iterator[tuple[FD, ...]]:
    """Every field reachable through singular message fields, at most `depth` deep."""
    for field in descriptor.fields:
        yield (field,)
        if _is_plain_message(field) and depth > 1:
            for rest in _edit_paths(field.message_type, depth - 1):
                yield (field, *rest)


def edited_baselines(
    descriptor: pb_descriptor.Descriptor, hints: Hints | None = None
) -> st.SearchStrategy[Message]:
    """A baseline with one field, at any depth, drawn like any field instead (hint or type
    alike): one odd value in an otherwise workable request, so that the value is what the
    server meets rather than the first check a random request fails."""
    hints = hints or {}
    paths = list(_edit_paths(descriptor))
    if not paths:
        return st.just(message_class(descriptor)())

    @st.composite
    def build(draw) -> Message:
        msg = draw(baselines(descriptor, hints))
        path = draw(choice(paths))
        value = draw(_value(path[-1], hints, len(path) - 1, hint_weight=1))
        target = msg
        for field in path[:-1]:
            target = getattr(target, field.name)
        target.ClearField(path[-1].name)
        _assign(target, path[-1], value)
        return msg

    return build()


# -- wire-format helpers ------------------------------------------------------------------------

WIRE_VARINT, WIRE_I64, WIRE_LEN, WIRE_SGROUP, WIRE_EGROUP, WIRE_I32 = 0, 1, 2, 3, 4, 5

_WIRE_TYPES = {
    FD.TYPE_DOUBLE: WIRE_I64, FD.TYPE_FIXED64: WIRE_I64, FD.TYPE_SFIXED64: WIRE_I64,
    FD.TYPE_FLOAT: WIRE_I32, FD.TYPE_FIXED32: WIRE_I32, FD.TYPE_SFIXED32: WIRE_I32,
    FD.TYPE_STRING: WIRE_LEN, FD.TYPE_BYTES: WIRE_LEN, FD.TYPE_MESSAGE: WIRE_LEN, FD.TYPE_GROUP: WIRE_SGROUP,
}
_VARINT_TYPES = frozenset({
    FD.TYPE_INT32, FD.TYPE_INT64, FD.TYPE_UINT32, FD.TYPE_UINT64, FD.TYPE_SINT32, FD.TYPE_SINT64,
    FD.TYPE_BOOL, FD.TYPE_ENUM,
})
#: The largest field number protobuf allows; well clear of every field a request declares.
MAX_FIELD_NUMBER = 2**29 - 1


def varint(value: int) -> bytes:
    """Base-128 varint of a non-negative value (negative ones as their 64-bit two's complement)."""
    if value < 0:
        value += 2**64
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, WIRE_LEN) + varint(len(payload)) + payload


def wire_type(field: FD) -> int:
    return _WIRE_TYPES.get(field.type, WIRE_VARINT)


def _unused_number(descriptor: pb_descriptor.Descriptor, start: int = 1000) -> int:
    number = start
    while number in descriptor.fields_by_number:
        number += 1
    return number


def _paths(
    descriptor: pb_descriptor.Descriptor, accept: Callable[[FD], bool], depth: int = 3
) -> Iterator[tuple[FD, ...]]:
    """Every chain of fields from the message down to a field `accept` likes, through message
    (and map-entry) fields, at most `depth` long."""
    for field in descriptor.fields:
        if accept(field):
            yield (field,)
        if field.type == FD.TYPE_MESSAGE and depth > 1:
            for rest in _paths(field.message_type, accept, depth - 1):
                yield (field, *rest)


def _wrap(path: tuple[FD, ...], leaf: bytes) -> bytes:
    """`leaf` (a field's complete encoding, tag included) inside the messages along `path[:-1]`."""
    for field in reversed(path[:-1]):
        leaf = length_delimited(field.number, leaf)
    return leaf


def _path_name(path: tuple[FD, ...]) -> str:
    return ".".join(f.name for f in path)


# -- hostile bodies ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    """A request body as sent, and how it was made (for reports)."""

    kind: str
    data: bytes

    def __repr__(self) -> str:
        more = "..." if len(self.data) > 24 else ""
        return f"Body({self.kind!r}, {len(self.data)} bytes, {self.data[:24].hex()}{more})"


#: Byte sequences that are not UTF-8: stray continuation/lead bytes, an overlong NUL, a UTF-16
#: surrogate, a code point past U+10FFFF, a sequence cut short.
INVALID_UTF8 = (b"\xff\xfe", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"abc\x80", b"\xe2\x82", b"\xfe")
#: Varints no serializer writes: -1 and 2**63 in the full ten bytes, an eleven-byte varint (longer
#: than any allowed), and 1 padded with redundant continuation bytes.
ODD_VARINTS = {
    "10-byte varint -1": b"\xff" * 9 + b"\x01",
    "10-byte varint 2**63": b"\x80" * 9 + b"\x01",
    "11-byte varint": b"\xff" * 10 + b"\x01",
    "padded varint 1": b"\x81\x80\x80\x80\x00",
    "unterminated varint": b"\xff\xff\xff",
}
NESTING_DEPTHS = (99, 100, 101, 150, 1_000, 100_000)


def mutations(blobs: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A blob changed by one to three edits: bit flips, byte overwrites, truncation, appended or
    inserted bytes, a zeroed range, or its tail spliced from a second blob."""

    @st.composite
    def mutate(draw) -> bytes:
        data = bytearray(draw(blobs))
        for _ in range(draw(st.integers(1, 3))):
            op = draw(st.sampled_from(("flip", "set", "truncate", "append", "insert", "zero", "splice")))
            at = draw(st.integers(0, max(0, len(data) - 1)))
            if op == "flip" and data:
                data[at] ^= 1 << draw(st.integers(0, 7))
            elif op == "set" and data:
                data[at] = draw(st.sampled_from((0x00, 0x01, 0x7F, 0x80, 0xFF)))
            elif op == "truncate":
                del data[at:]
            elif op == "append":
                data += draw(st.binary(min_size=1, max_size=32))
            elif op == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=8))
            elif op == "zero":
                data[at : at + draw(st.integers(1, 16))] = bytes(min(16, len(data) - at))
            elif op == "splice":
                other = draw(blobs)
                data[at:] = other[draw(st.integers(0, len(other))):]
        return bytes(data)

    return mutate()


#: JSON texts to put where a page token holds a listing position: numbers past every float and
#: int conversion, non-finite literals, wrong types, long strings, and deep nesting.
JSON_NUMBERS = (
    "1e999", "-1e999", "1e-999", "NaN", "Infinity", "-Infinity", "-0", "0", "-1", "1.5", "9007199254740993",
    "1" + "0" * 5000,
)
JSON_OTHERS = (
    "null", "true", "false", '""', '"x"', '"' + "x" * 10_000 + '"', '"\\ud800"', '"\\u0000"', "[]", "{}",
    '{"a": 1}', "[" * 50 + "]" * 50, "[" * 1_000 + "]" * 1_000,
)
#: Unclosed JSON arrays this deep: within and past what a recursive parser takes.
JSON_NESTING_DEPTHS = (50, 1_000, 10_000, 100_000)
#: Digits of integers past what a float holds (10**309 and up) and near the 4300 digits Python
#: converts from a string at most.
BIG_INTEGER_DIGITS = (20, 308, 309, 400, 1000, 4299, 4300)


def unbase64(token: str) -> bytes | None:
    """The bytes of a urlsafe-base64 token, padded or not; None when it is not one."""
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:
        return None


def rebase64(data: bytes) -> str:
    """Urlsafe base64 without padding, the way page tokens are usually spelled."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json_positions(token: str) -> list[str]:
    """The JSON texts of a token's positions when it is base64 of a JSON list, else []."""
    raw = unbase64(token)
    try:
        items = json.loads(raw) if raw is not None else None
    except ValueError:
        return []
    return [json.dumps(v) for v in items] if isinstance(items, list) else []


def json_extremes() -> st.SearchStrategy[str]:
    """JSON texts of extreme values, mostly integers too big for a float or for int() (positions
    in page tokens are numbers and ids, and big numbers are what JSON parsers let through)."""
    big = st.builds(lambda sign, digits: sign + "1" + "0" * digits, st.sampled_from(("", "-")),
                    st.sampled_from(BIG_INTEGER_DIGITS))
    return weighted((3, big), (1, choice(JSON_NUMBERS)), (1, choice(JSON_OTHERS)))


def page_tokens(real_tokens: list[str]) -> st.SearchStrategy[str]:
    """Page tokens: the real ones the servers issued; their bytes edited (`mutations`) and
    base64-encoded again; their characters edited; tokens of base64 JSON (the usual shape of a
    listing position) whose positions hold extreme values, whose list has the wrong length, or
    which is not a list at all, or arrays nested deeper than a recursive parser goes; bad base64.
    A JSON real token has its own positions replaced."""

    def encode(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).decode()

    def replace(items: list[str], chosen: list[bool], texts: list[str]) -> str:
        # Each of the first four positions is replaced or kept as chosen (the first, when none is).
        items = list(items) or ["0"]
        chosen = chosen[: len(items)]
        for at, replaced in enumerate(chosen if any(chosen) else [True]):
            if replaced:
                items[at] = texts[at]
        return encode("[" + ", ".join(items) + "]")

    real = [t for t in real_tokens if t]
    changed = []
    if real:
        token = choice(real)
        raw = [data for data in map(unbase64, real) if data]
        changed = [
            (2, token),
            (6, st.builds(replace, token.map(_json_positions),
                          st.lists(choice((True, True, True, False)), min_size=4, max_size=4),
                          st.lists(json_extremes(), min_size=4, max_size=4))),
            (1, mutations(token.map(str.encode)).map(lambda b: b.decode("latin-1"))),
        ]
        if raw:
            changed.append((3, mutations(choice(raw)).map(rebase64)))
    return weighted(
        *changed,
        (2, st.lists(json_extremes(), max_size=3).map(lambda items: encode("[" + ", ".join(items) + "]"))),
        (1, json_extremes().map(encode)),
        (4, st.builds(lambda depth, closed: encode("[" * depth + ("]" * depth if closed else "")),
                      st.sampled_from(JSON_NESTING_DEPTHS), st.booleans())),
        (1, choice(("=", "====", "!!!!", "a", "ab", "abc=", "YQ", "\u00ff\u00fe", "W10", "W10=" * 1000))),
    )


def _random_bytes() -> st.SearchStrategy[Body]:
    return st.one_of(
        st.binary(min_size=1, max_size=256),
        st.builds(lambda seed, size: random.Random(seed).randbytes(size), st.integers(0, 2**32), LONG_BYTES_SIZES),
    ).map(lambda b: Body("random bytes", b))


def _truncated(serialized: st.SearchStrategy[bytes]) -> st.SearchStrategy[Body]:
    @st.composite
    def cut(draw) -> Body:
        data = draw(serialized.filter(bool))
        at = draw(st.integers(0, len(data) - 1))
        return Body(f"serialization cut at {at} of {len(data)} bytes", data[:at])

    return cut()


def _corrupted(serialized: st.SearchStrategy[bytes]) -> st.SearchStrategy[Body]:
    return mutations(serialized.filter(bool)).map(lambda b: Body("serialization with edits", b))


def _invalid_utf8(descriptor, serialized) -> st.SearchStrategy[Body]:
    paths = list(_paths(descriptor, lambda f: f.type == FD.TYPE_STRING))
    if not paths:
        return st.nothing()

    def build(path, bad, prefix) -> Body:
        leaf = length_delimited(path[-1].number, bad)
        return Body(f"invalid UTF-8 {bad!r} in {_path_name(path)}", prefix + _wrap(path, leaf))

    prefixes = st.one_of(st.just(b""), serialized)
    return st.builds(build, st.sampled_from(paths), st.sampled_from(INVALID_UTF8), prefixes)


def _deep_nesting(descriptor) -> st.SearchStrategy[Body]:
    """Groups of an unknown field nested N deep (closed, or left open), reached directly or
    inside one of the message's own message fields; and unknown length-delimited fields nested
    N deep, which a parser keeps as opaque bytes."""
    message_paths = [()] + list(_paths(descriptor, lambda f: f.type == FD.TYPE_MESSAGE))

    def groups(path, depth: int, closed: bool) -> Body:
        inner = descriptor
        for field in path:
            inner = field.message_type
        number = _unused_number(inner)
        body = tag(number, WIRE_SGROUP) * depth + (tag(number, WIRE_EGROUP) * depth if closed else b"")
        for field in reversed(path):
            body = length_delimited(field.number, body)
        where = f" in {_path_name(path)}" if path else ""
        return Body(f"{'closed' if closed else 'unclosed'} groups nested {depth} deep{where}", body)

    def lengths(depth: int) -> Body:
        number = _unused_number(descriptor)
        body = b""
        for _ in range(min(depth, 2_000)):  # each level adds its length prefix: keep it small
            body = length_delimited(number, body)
        return Body(f"unknown messages nested {min(depth, 2_000)} deep", body)

    return st.one_of(
        st.builds(groups, st.sampled_from(message_paths), st.sampled_from(NESTING_DEPTHS), st.booleans()),
        st.builds(lengths, st.sampled_from(NESTING_DEPTHS)),
    )


def _odd_varints(descriptor, serialized) -> st.SearchStrategy[Body]:
    paths = list(_paths(descriptor, lambda f: f.type in _VARINT_TYPES))
    if not paths:
        return st.nothing()

    def build(path, name, prefix, packed) -> Body:
        field, raw = path[-1], ODD_VARINTS[name]
        if not (packed and field.is_repeated):
            leaf = tag(field.number, WIRE_VARINT) + raw
        else:
            leaf = length_delimited(field.number, raw + varint(1))
            name += " (packed)"
        return Body(f"{name} in {_path_name(path)}", prefix + _wrap(path, leaf))

    return st.builds(build, st.sampled_from(paths), st.sampled_from(sorted(ODD_VARINTS)),
                     st.one_of(st.just(b""), serialized), st.booleans())


def _wrong_wire_types(descriptor) -> st.SearchStrategy[Body]:
    """A declared field in a wire type other than its own (including the invalid types 6 and 7),
    or field number 0."""
    paths = list(_paths(descriptor, lambda f: True))

    def payload(wire: int) -> bytes:
        return {WIRE_VARINT: b"\x01", WIRE_I64: b"\x00" * 8, WIRE_LEN: b"\x01x", WIRE_SGROUP: b"",
                WIRE_EGROUP: b"", WIRE_I32: b"\x00" * 4}.get(wire, b"\x00")

    def build(path, wire) -> Body:
        field = path[-1]
        if wire == wire_type(field):
            wire = 6
        return Body(f"wire type {wire} for {_path_name(path)}", _wrap(path, tag(field.number, wire) + payload(wire)))

    def field_zero(wire: int) -> Body:
        return Body(f"field number 0, wire type {wire}", tag(0, wire) + payload(wire))

    zero = st.sampled_from(range(8)).map(field_zero)
    if not paths:
        return zero
    return st.one_of(st.builds(build, st.sampled_from(paths), st.sampled_from(range(8))), zero)


def _overlong_lengths(descriptor) -> st.SearchStrategy[Body]:
    """A length-delimited field whose length runs past the end of the body."""
    paths = list(_paths(descriptor, lambda f: wire_type(f) == WIRE_LEN)) or [()]

    def build(path, length) -> Body:
        number = path[-1].number if path else _unused_number(descriptor)
        leaf = tag(number, WIRE_LEN) + varint(length) + b"abc"
        where = _path_name(path) or "an unknown field"
        return Body(f"length {length} with 3 bytes left in {where}", _wrap(path, leaf) if path else leaf)

    lengths = (4, 128, 2**31 - 1, 2**31, 2**32 + 3, 2**63, 2**64 - 1)
    return st.builds(build, st.sampled_from(paths), st.sampled_from(lengths))


def _with_unknown_fields(descriptor, serialized) -> st.SearchStrategy[Body]:
    """A valid serialization plus unknown fields of every wire type (which must be ignored)."""

    def build(prefix: bytes, number: int) -> Body:
        extra = (tag(number, WIRE_VARINT) + b"\x01" + tag(number, WIRE_I64) + b"\x00" * 8
                 + length_delimited(number, b"unknown") + tag(number, WIRE_SGROUP) + tag(number, WIRE_EGROUP)
                 + tag(number, WIRE_I32) + b"\x00" * 4)
        return Body(f"valid with unknown field {number}", prefix + extra)

    # 19000-19999 is the range protobuf reserves for itself.
    numbers = (_unused_number(descriptor), MAX_FIELD_NUMBER, 19_000)
    return st.builds(build, serialized, st.sampled_from(numbers))


def _concatenated(serialized) -> st.SearchStrategy[Body]:
    """Two serializations back to back: valid, and parsed as a merge of the two."""
    return st.builds(lambda a, b: Body("two serializations concatenated", a + b), serialized, serialized)


def hostile_bodies(
    descriptor: pb_descriptor.Descriptor, wellformed: st.SearchStrategy[Message]
) -> st.SearchStrategy[Body]:
    """Bodies for a request type that its serializer would never write."""
    serialized = wellformed.map(lambda m: m.SerializeToString(deterministic=True))
    return st.one_of(
        _random_bytes(),
        _truncated(serialized),
        _corrupted(serialized),
        _invalid_utf8(descriptor, serialized),
        _deep_nesting(descriptor),
        _odd_varints(descriptor, serialized),
        _wrong_wire_types(descriptor),
        _overlong_lengths(descriptor),
        _with_unknown_fields(descriptor, serialized),
        _concatenated(serialized),
    )


def request_bodies(
    descriptor: pb_descriptor.Descriptor,
    hints: Hints | None = None,
    *,
    edited_share: int = 40,
    wellformed_share: int = 35,
) -> st.SearchStrategy[Body]:
    """Bodies for one request type, in percent: `edited_share` baselines with one field edited,
    `wellformed_share` messages with every field drawn, the rest hostile bytes."""

    def as_body(kind: str):
        return lambda msg: Body(kind, msg.SerializeToString(deterministic=True))

    wellformed = messages(descriptor, hints)
    return weighted(
        (edited_share, edited_baselines(descriptor, hints).map(as_body("one field off a baseline"))),
        (wellformed_share, wellformed.map(as_body("well-formed"))),
        (100 - edited_share - wellformed_share, hostile_bodies(descriptor, wellformed)),
    )


# -- the sweep -----------------------------------------------------------------------------------


_TYPE_NAMES = {number: name[5:].lower() for name, number in vars(FD).items() if name.startswith("TYPE_")}


def _sweep_values(field: FD) -> list:
    """What the sweep sets a field to, one value at a time: the ends of an integer type's range,
    -1, and the first value past the signed range of an unsigned type; empty, long and odd
    strings; empty and 100 KiB bytes; an unknown enum number; a present but empty message; for a
    repeated field one such element, or 1001 of them; for a map an empty key, 65 entries, a long
    key."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, value = (field.message_type.fields_by_name[n] for n in ("key", "value"))
        if key.type != FD.TYPE_STRING or value.type != FD.TYPE_STRING:
            return [{}]
        return [{"": ""}, {f"k{i}": "v" for i in range(65)}, {"A" * 10_000: "x"}]
    if field.type == FD.TYPE_MESSAGE:
        single = [message_class(field.message_type)()]
    elif field.type == FD.TYPE_STRING:
        single = ["", "A" * 10_000, "\x00\u202e\U0001f600é"]
    elif field.type == FD.TYPE_BYTES:
        single = [b"", random.Random(0).randbytes(102_400)]
    elif field.type == FD.TYPE_BOOL:
        single = [True]
    elif field.type == FD.TYPE_ENUM:
        single = [] if getattr(field.enum_type, "is_closed", False) else [-1]
    elif field.type in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        single = [float("nan"), float("inf")]
    else:
        lo, hi = _INT_RANGES[field.type]
        marks = {lo, hi, -1, (hi + 1) // 2 - 1, (hi + 1) // 2} if lo == 0 else {lo, hi, -1}
        single = sorted(v for v in marks if lo <= v <= hi and v != 0)
    if not field.is_repeated:
        return single
    return [[v] for v in single] + ([_copies(single[-1], 1001)] if single else [])


def fixed_message(descriptor: pb_descriptor.Descriptor, values: Mapping[str, object], depth: int = 0) -> Message:
    """A message with every field named in `values` ("Message.field" or "field") set to its value,
    inside nested messages too, and no other field."""
    msg = message_class(descriptor)()
    if depth > MAX_MESSAGE_DEPTH:
        return msg
    for field in descriptor.fields:
        value = values.get(f"{descriptor.name}.{field.name}", values.get(field.name))
        if value is not None:
            _assign(msg, field, value)
        elif _is_plain_message(field):
            inner = fixed_message(field.message_type, values, depth + 1)
            if inner.ListFields():
                getattr(msg, field.name).CopyFrom(inner)
    return msg


def sweep_bodies(
    descriptor: pb_descriptor.Descriptor,
    baseline: Mapping[str, object],
    extras: Mapping[str, Sequence] | None = None,
) -> list[Body]:
    """The same bodies every run: the baseline (`fixed_message` of `baseline`); the baseline with
    each field at any depth (through singular message fields) set in turn to each of its
    `extras` (by "Message.field" or "field") and `_sweep_values`; the baseline with every
    singular field of a type set at once to each value of that type (fields a server requires to
    agree, such as a version given twice, then agree on the extreme); and two bodies that must
    not parse: invalid UTF-8 in the first string field, groups nested 101 deep."""
    extras = extras or {}
    base = fixed_message(descriptor, baseline)

    def edited(paths: list[tuple[FD, ...]], value, kind: str) -> Body:
        msg = message_class(descriptor)()
        msg.CopyFrom(base)
        for path in paths:
            target = msg
            for step in path[:-1]:
                target = getattr(target, step.name)
            target.ClearField(path[-1].name)
            _assign(target, path[-1], value)
        return Body(f"sweep: {kind} = {abbreviate(repr(value), 80)}", msg.SerializeToString(deterministic=True))

    bodies = [Body("sweep: the baseline", base.SerializeToString(deterministic=True))]
    paths = list(_edit_paths(descriptor))
    for path in paths:
        field = path[-1]
        own = extras.get(f"{field.containing_type.name}.{field.name}", extras.get(field.name, ()))
        bodies += [edited([path], value, _path_name(path)) for value in [*own, *_sweep_values(field)]]
    by_type: dict[int, list[tuple[FD, ...]]] = {}
    for path in paths:
        if path[-1].type != FD.TYPE_MESSAGE and not path[-1].is_repeated:
            by_type.setdefault(path[-1].type, []).append(path)
    for field_type, same in by_type.items():
        if len(same) > 1:
            name = f"every {_TYPE_NAMES[field_type]} field"
            bodies += [edited(same, value, name) for value in _sweep_values(same[0][-1])]
    strings = list(_paths(descriptor, lambda f: f.type == FD.TYPE_STRING))
    if strings:
        leaf = length_delimited(strings[0][-1].number, INVALID_UTF8[0])
        bodies.append(Body(f"sweep: invalid UTF-8 in {_path_name(strings[0])}", _wrap(strings[0], leaf)))
    number = _unused_number(descriptor)
    nested = tag(number, WIRE_SGROUP) * 101 + tag(number, WIRE_EGROUP) * 101
    bodies.append(Body("sweep: groups nested 101 deep", nested))
    return bodies


def blob_sweep(blob: bytes) -> list[bytes]:
    """Fixed edits of a real blob: cut to one byte, half, all but the last; its first, middle and
    last byte's low bit flipped; a byte appended."""

    def flipped(at: int) -> bytes:
        data = bytearray(blob)
        data[at] ^= 1
        return bytes(data)

    return [blob[:1], blob[: len(blob) // 2], blob[:-1], flipped(0), flipped(len(blob) // 2), flipped(-1), blob + b"\0"]


def page_token_sweep(real_tokens: Sequence[str]) -> list[str]:
    """Fixed hostile page tokens: each real token's bytes edited as `blob_sweep` does and encoded
    again, with padding and without; a JSON one (base64 of a list) also with its first and its
    last position an integer past a float's range; and base64 JSON arrays nested far past a
    recursive parser's limit, and lists of the wrong length."""

    def encode(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).decode()

    tokens = []
    for token in real_tokens:
        raw = unbase64(token)
        if raw:
            tokens += [rebase64(edited) for edited in blob_sweep(raw)]
            tokens.append(base64.urlsafe_b64encode(raw).decode())
        items = _json_positions(token)
        for at in sorted({0, len(items) - 1}) if items else ():
            for big in ("1" + "0" * 400, "-1" + "0" * 400):
                changed = list(items)
                changed[at] = big
                tokens.append(encode("[" + ", ".join(changed) + "]"))
    return tokens + [encode("[" * 100_000), encode("[" * 1_000 + "]" * 1_000), encode("[]"), encode("[1, 2, 3]")]


_RUNS = re.compile(r"(.{1,8}?)\1{7,}", re.S)
_BASE64 = re.compile(r"[A-Za-z0-9_-]{8,}={0,2}")


def abbreviate(text: str, limit: int = 300) -> str:
    """Text with runs of a repeated chunk written <chunk xN>, cut at `limit` characters."""
    text = _RUNS.sub(lambda m: f"<{m.group(1)} x{len(m.group(0)) // len(m.group(1))}>", text)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def _base64_texts(msg: Message) -> Iterator[tuple[str, str]]:
    """(field, decoded) for string fields holding urlsafe base64 of text, such as page tokens."""
    for field, value in msg.ListFields():
        values = value if field.is_repeated else [value]
        for item in values:
            if isinstance(item, Message):
                yield from _base64_texts(item)
            elif isinstance(item, str) and _BASE64.fullmatch(item):
                try:
                    decoded = base64.urlsafe_b64decode(item).decode()
                except ValueError:
                    continue
                if decoded.isprintable():
                    yield field.name, decoded


def describe(descriptor: pb_descriptor.Descriptor, data: bytes, limit: int = 300) -> str:
    """A short text form of a body: its fields when it parses as the request type (repeats and
    long values abbreviated, base64 text decoded), else that it does not."""
    try:
        msg = message_class(descriptor).FromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        return f"does not parse as {descriptor.name} ({str(exc)[:80]})"
    text = abbreviate(text_format.MessageToString(msg, as_one_line=True, as_utf8=True), limit)
    for name, decoded in _base64_texts(msg):
        text += f"; {name} is base64 of {abbreviate(decoded, 120)!r}"
    return text
