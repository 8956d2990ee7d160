"""Plain result types of `RelayClient` (no protobuf in the public API)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from client_sdk.types import SealedPublicKey


@dataclass(frozen=True)
class RelayAccount:
    """A relay account's user id and a device token that authenticates it, as CreateAccount or
    RotateDeviceToken issued it.

    The relay returns the token only once and keeps only its hash: store it (encrypted at rest).
    It never appears in `repr`. `expire_time` is when it expires (None: never); rotate it before
    then. After a rotation, `previous_token_expire_time` is until when the token it replaced
    still works.
    """

    user_id: str
    device_token: str = field(repr=False)
    expire_time: datetime | None = None
    previous_token_expire_time: datetime | None = None


@dataclass(frozen=True)
class DirectoryRecord:
    """One version of a user's published sealed public-key record.

    Open `sealed` with `KmsClient.open_public_key` (naming `kms_key_id`'s key) to read the bundle.
    `publish_time` is when the directory accepted the record (None if the relay did not say).
    """

    user_id: str
    record_version: int
    sealed: SealedPublicKey
    kms_key_id: str
    publish_time: datetime | None


@dataclass(frozen=True)
class SendReceipt:
    """The relay durably stored a message: its relay-assigned id and when it was stored.

    `duplicate` is true when this `client_message_id` had been stored already (by an earlier
    call, or by an earlier attempt of this call whose answer was lost); `message_id` and
    `store_time` are then the original's.
    """

    message_id: str
    client_message_id: str
    store_time: datetime
    duplicate: bool


@dataclass(frozen=True)
class RelayMessage:
    """A message from the caller's mailbox. The envelope is opaque to the relay (and not in `repr`).

    `sender_user_id` is the sender as the relay authenticated it; still verify the signature inside
    the envelope. Acknowledge the message with `RelayClient.ack([message_id])` once processed; until
    then it may be delivered again, so drop duplicates by `message_id`. `expire_time` is when the
    relay deletes it unacknowledged (None: kept until acknowledged).
    """

    message_id: str
    sender_user_id: str
    recipient_user_id: str
    envelope: bytes = field(repr=False)
    client_message_id: str
    store_time: datetime
    expire_time: datetime | None
