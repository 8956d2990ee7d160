"""Request bodies as the server skeleton decodes them, before any handler runs.

gRPC hands the skeleton each request as bytes (it registers no deserializer), so a body that does
not parse is answered like any other bad request: `MalformedRequestError` (INVALID_ARGUMENT,
reason `MALFORMED_REQUEST`) with a request id, a metric and, where the daemon audits, an audit
record; not UNKNOWN from inside grpc with a traceback in the log.

Decoding also refuses numbers no store can hold: every `uint64`/`fixed64` field, at any depth, must
fit a signed 64-bit column (SQLite INTEGER, PostgreSQL BIGINT), so handlers may store them as is.
Messages without such fields pay nothing for the check.
"""

from __future__ import annotations

from typing import Any, Callable

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from foundation.errors import MalformedRequestError, quote

#: The largest value a store's signed 64-bit integer column holds.
MAX_STORED_INT = 2**63 - 1

_WIDE_TYPES = (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64)

#: For one message type: (field name, how it holds values, nested plan or None for a wide integer).
_Plan = list[tuple[str, str, "list | None"]]
_ONE, _REPEATED, _MAP = "one", "repeated", "map"


def _plan(descriptor: Descriptor, memo: dict[str, _Plan | None]) -> _Plan | None:
    """The fields of `descriptor` that hold, or lead to, wide unsigned integers; None when none do."""
    name = descriptor.full_name
    if name in memo:  # done, or in progress on a recursive type (whose cycle adds nothing new)
        return memo[name]
    memo[name] = None
    plan: _Plan = []
    for field in descriptor.fields:
        field_name, holds = field.name, _REPEATED if field.is_repeated else _ONE
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            field, holds = field.message_type.fields_by_name["value"], _MAP
        if field.type in _WIDE_TYPES:
            plan.append((field_name, holds, None))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            nested = _plan(field.message_type, memo)
            if nested:
                plan.append((field_name, holds, nested))
    memo[name] = plan or None
    return memo[name]


def _check(message: Any, plan: _Plan, path: str) -> None:
    for name, holds, nested in plan:
        value = getattr(message, name)
        if holds == _ONE:
            if nested is not None and not message.HasField(name):
                continue
            items = [(f"{path}{name}", value)]
        elif holds == _REPEATED:
            items = [(f"{path}{name}[{index}]", item) for index, item in enumerate(value)]
        else:
            items = [(f"{path}{name}[{quote(key)}]", item) for key, item in value.items()]
        for where, item in items:
            if nested is None:
                if item > MAX_STORED_INT:
                    raise MalformedRequestError(
                        f"field {where} is {item}; values above 2^63-1 ({MAX_STORED_INT}) are not accepted"
                    )
            else:
                _check(item, nested, where + ".")


_DECODERS: dict[Callable[[bytes], Any], "RequestDecoder | None"] = {}


class RequestDecoder:
    """Decodes bodies of one request type: `decode(body)` returns the message or raises
    `MalformedRequestError` saying what is wrong, never quoting the body."""

    __slots__ = ("_parse", "_name", "_plan")

    def __init__(self, message_class: type) -> None:
        self._parse: Callable[[bytes], Any] = message_class.FromString
        self._name = message_class.DESCRIPTOR.full_name
        self._plan = _plan(message_class.DESCRIPTOR, {})

    @classmethod
    def for_deserializer(cls, deserializer: Callable[[bytes], Any] | None) -> "RequestDecoder | None":
        """The decoder for a generated handler's `request_deserializer` (a message class's
        `FromString`), or None when it is not one. Decoders are made once per message class."""
        if deserializer is None:
            return None
        try:
            return _DECODERS[deserializer]
        except KeyError:
            pass
        message_class = getattr(deserializer, "__self__", None)
        decoder = cls(message_class) if hasattr(message_class, "DESCRIPTOR") else None
        _DECODERS[deserializer] = decoder
        return decoder

    def decode(self, body: bytes) -> Any:
        """The message `body` holds, checked against what the stores can hold."""
        try:
            message = self._parse(body)
        except Exception:  # noqa: BLE001 - DecodeError, and whatever a hostile body makes the parser raise
            raise MalformedRequestError(
                f"the request body ({len(body)} bytes) is not a valid {self._name} message: the wire format is "
                "corrupt, a string field is not UTF-8, or messages nest deeper than 100 levels; send a message "
                "serialized by a protobuf library from keyrelay's protos"
            ) from None
        if self._plan is not None:
            _check(message, self._plan, "")
        return message
