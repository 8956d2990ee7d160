"""Which keys a KeyManagementService request names: one table for the gateway, the private
endpoints and the SDK's router.

A request names keys in four ways (`RefKind`):

- `KEY`: a key id or alias in a field such as `key_id`; resolved to the key, checked against the
  caller's key patterns, and forwarded as the resolved key id (so that an alias moved between
  the check and the use cannot switch keys);
- `BLOB`: the key id inside a ciphertext or wrapped data key (`peek_key_id`);
- `NEW_NAME`: an alias the request creates (`CreateKey.alias`, `CreateAlias.alias`); checked as
  a name, never resolved. CreateKey without an alias names "" (a key known only by its id);
- `ALIAS`: the alias DeleteAlias removes: resolved to find where its key lives, checked as a name.

Batch requests name one key per item (`KeyRef.item`). Nothing here imports gRPC or the generated
code: requests are read through their field names.
"""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from foundation.blob_formats import peek_key_id
from foundation.errors import InvalidArgumentError, KeyrelayError, quote

_ALIAS = re.compile(r"^alias/[A-Za-z0-9/_-]{1,250}$")


def is_uuid(text: str) -> bool:
    """Whether `text` is a lower-case UUID (the form of every key id)."""
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def check_ref(ref: str, field: str = "key_id") -> None:
    """InvalidArgumentError unless `ref` is a key id or an alias."""
    if not ref:
        raise InvalidArgumentError(f"{field} is required: give a key id (UUID) or an alias 'alias/NAME'")
    if not (is_uuid(ref) or _ALIAS.fullmatch(ref)):
        raise InvalidArgumentError(
            f"{field} {quote(ref)} is neither a key id (lower-case UUID) nor an alias 'alias/NAME'"
        )


def check_alias(alias: str) -> None:
    """InvalidArgumentError unless `alias` is `alias/` and 1-250 of A-Z a-z 0-9 / _ -."""
    if not _ALIAS.fullmatch(alias):
        raise InvalidArgumentError(
            f"alias {quote(alias)} must be 'alias/' followed by 1-250 of A-Z a-z 0-9 / _ -"
        )


class RefKind(enum.Enum):
    KEY = "key"
    BLOB = "blob"
    NEW_NAME = "new-name"
    ALIAS = "alias"


@dataclass(frozen=True, slots=True)
class KeyRef:
    """One key reference of a request.

    `ref` is the key id or alias ('' when a blob is malformed, with the reason in `error`, or when
    the field is empty); `field` the request field holding it (dotted for nested fields); `item`
    the index in `items` for a batch; `required` False for a name that may be left out.
    """

    kind: RefKind
    ref: str
    field: str
    item: int | None = None
    error: KeyrelayError | None = None
    required: bool = True

    @property
    def resolves(self) -> bool:
        """Whether the reference names an existing key (everything but a new name)."""
        return self.kind is not RefKind.NEW_NAME


def _field(request: Any, path: str) -> Any:
    for part in path.split("."):
        request = getattr(request, part)
    return request


def _key(field: str) -> Callable[[Any], list[KeyRef]]:
    return lambda request: [KeyRef(RefKind.KEY, _field(request, field), field)]


def _blob_ref(blob: bytes, field: str, item: int | None = None) -> KeyRef:
    try:
        return KeyRef(RefKind.BLOB, peek_key_id(blob), field, item)
    except KeyrelayError as exc:
        return KeyRef(RefKind.BLOB, "", field, item, exc)


def _decrypt(request: Any) -> list[KeyRef]:
    refs = [_blob_ref(request.ciphertext_blob, "ciphertext_blob")]
    if request.key_id:
        refs.append(KeyRef(RefKind.KEY, request.key_id, "key_id"))
    return refs


def _none(request: Any) -> list[KeyRef]:
    return []


#: Method name -> the key references of a request of that method. Every KeyManagementService
#: method is here (AdminService names no keys).
KEY_REFS: dict[str, Callable[[Any], list[KeyRef]]] = {
    "CreateKey": lambda r: [KeyRef(RefKind.NEW_NAME, r.alias, "alias", required=False)],
    "DescribeKey": _key("key_id"),
    "ListKeys": _none,
    "EnableKey": _key("key_id"),
    "DisableKey": _key("key_id"),
    "ScheduleKeyDeletion": _key("key_id"),
    "CancelKeyDeletion": _key("key_id"),
    "RotateKey": _key("key_id"),
    "UpdateKey": _key("key_id"),
    "CreateAlias": lambda r: [KeyRef(RefKind.KEY, r.key_id, "key_id"), KeyRef(RefKind.NEW_NAME, r.alias, "alias")],
    "DeleteAlias": lambda r: [KeyRef(RefKind.ALIAS, r.alias, "alias")],
    "Encrypt": _key("key_id"),
    "Decrypt": _decrypt,
    "ReEncrypt": lambda r: [
        _blob_ref(r.ciphertext_blob, "ciphertext_blob"), KeyRef(RefKind.KEY, r.destination_key_id, "destination_key_id")
    ],
    "GenerateDataKey": _key("key_id"),
    "GenerateDataKeyWithoutPlaintext": _key("key_id"),
    "BatchDecrypt": lambda r: [_blob_ref(item.ciphertext_blob, "ciphertext_blob", i) for i, item in enumerate(r.items)],
    "BatchGenerateDataKey": lambda r: [KeyRef(RefKind.KEY, item.key_id, "key_id", i) for i, item in enumerate(r.items)],
    "GenerateRandom": _none,
    "SealPublicKey": _key("key_id"),
    "OpenPublicKey": lambda r: [_blob_ref(r.sealed.wrapped_dek, "sealed.wrapped_dek")],
}
#: Methods whose request is a batch of `items`, one key reference per item.
BATCH_METHODS = frozenset({"BatchDecrypt", "BatchGenerateDataKey"})


def key_refs(method: str, request: Any) -> list[KeyRef]:
    """The key references of a request (KeyError for a method that is not in the table)."""
    return KEY_REFS[method](request)


def routing_refs(method: str, request: Any) -> list[str | None]:
    """What a client routes a call by: one key reference per item for a batch, else the first key
    the call names; None where a blob is malformed (the server will say what is wrong)."""
    refs = [ref for ref in key_refs(method, request) if ref.resolves]
    if method not in BATCH_METHODS:
        refs = refs[:1]
    return [ref.ref or None for ref in refs]


def with_key_ids(request: Any, refs: list[KeyRef], key_ids: Mapping[str, str]) -> Any:
    """`request` with every `KEY` reference replaced by the key id it resolved to (`key_ids`:
    reference -> key id). The request itself when nothing changes; otherwise a copy."""
    changes = [ref for ref in refs if ref.kind is RefKind.KEY and key_ids.get(ref.ref, ref.ref) != ref.ref]
    if not changes:
        return request
    copy = type(request)()
    copy.CopyFrom(request)
    for ref in changes:
        target = copy.items[ref.item] if ref.item is not None else copy
        setattr(target, ref.field, key_ids[ref.ref])
    return copy
