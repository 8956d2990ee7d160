"""The relay's store interface and the records it holds.

The relay stores accounts (a user id and the SHA-256 of its device token), directory records
(sealed public-key bundles, kept as history), mailboxes of opaque envelopes, and the idempotency
log of senders' client message ids. Nothing it stores can be opened without the KMS and the
recipients' private keys.

Implementations are synchronous and thread-safe; the service calls them from worker threads
(`foundation.store_workers.StoreWorkers`). Every write is one transaction, committed durably
before the method returns, so a caller that got an answer may tell its client "stored". Within a
mailbox, messages become visible in `seq` order, so a reader following it with a cursor on `seq`
misses none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence


@dataclass(frozen=True, slots=True)
class PublishedRecord:
    """One version of a user's sealed public-key record. Times are Unix seconds.

    The sealed bundle's own user id and bundle version equal `user_id` and `record_version` (the
    service checks that before storing), so they are not stored twice.
    """

    user_id: str
    record_version: int
    sealed_bundle: bytes = field(repr=False)
    wrapped_dek: bytes = field(repr=False)
    kms_key_id: str
    publish_time: float


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to store, as the service prepared it.

    `digest` fingerprints what was sent (recipient and envelope) so that a client message id
    reused for a different message is told apart from a retry of the same one. `expire_time`
    (None: never) is when the message is deleted unacknowledged; `forget_time` is when the
    idempotency record of (sender, client_message_id) may be dropped, at or after `expire_time`.
    """

    message_id: str
    sender: str
    recipient: str
    client_message_id: str
    envelope: bytes = field(repr=False)
    digest: bytes
    store_time: float
    expire_time: float | None
    forget_time: float


@dataclass(frozen=True, slots=True)
class SendReceipt:
    """What Send answers: the stored message's id and times, or the original's on a duplicate."""

    message_id: str
    store_time: float
    expire_time: float | None
    duplicate: bool


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message in a mailbox; `seq` orders a mailbox (store order) and is never reused."""

    seq: int
    message_id: str
    sender: str
    recipient: str
    client_message_id: str
    envelope: bytes = field(repr=False)
    store_time: float
    expire_time: float | None


@dataclass(frozen=True, slots=True)
class DeviceToken:
    """What the relay knows of one device token (never the token itself). Times are Unix seconds;
    `expire_time` None: the token does not expire; `revoke_time` None: not revoked."""

    user_id: str
    issue_time: float
    expire_time: float | None
    revoke_time: float | None

    def valid_at(self, now: float) -> bool:
        """Whether the token authenticates a call at `now`."""
        return self.revoke_time is None and (self.expire_time is None or now < self.expire_time)


@dataclass(frozen=True, slots=True)
class MailboxLimits:
    """The most unacknowledged messages, and envelope bytes, one mailbox may hold."""

    max_messages: int
    max_bytes: int


class AccountTaken(Exception):
    """The user id has an account already."""


class UnknownUser(Exception):
    """No account has this user id."""


class TokenNotValid(Exception):
    """The device token is unknown, expired or revoked (so it cannot be rotated)."""


class VersionNotNewer(Exception):
    """The record's version is not above the newest published one (`newest`)."""

    def __init__(self, newest: int) -> None:
        super().__init__(f"newest published version is {newest}")
        self.newest = newest


class MailboxFull(Exception):
    """Storing the message would take the mailbox over a limit (`limit` says which)."""

    def __init__(self, limit: str) -> None:
        super().__init__(f"mailbox over its {limit} limit")
        self.limit = limit


class ClientMessageIdReused(Exception):
    """The sender used this client message id for a different message (recipient or envelope)."""


class RelayStore(Protocol):
    """Persistent state of a relay."""

    # -- accounts -----------------------------------------------------------------------------

    def create_account(self, user_id: str, token_hash: bytes, now: float, expire_time: float | None) -> None:
        """Create an account and its first device token (only its hash is kept). Raises AccountTaken."""

    def device_token(self, token_hash: bytes) -> DeviceToken | None:
        """The device token whose hash is `token_hash` (valid, expired or revoked), or None."""

    def rotate_token(
        self, old_hash: bytes, new_hash: bytes, now: float, new_expire: float | None, old_expire: float | None
    ) -> DeviceToken:
        """Issue the token `new_hash` to the owner of the valid token `old_hash`, which then stays
        valid until `old_expire` at the latest (None: it is revoked now); every other token of the
        account is revoked, so an account never has more than two valid tokens. Returns the new
        token. Raises TokenNotValid."""

    def issue_token(self, user_id: str, token_hash: bytes, now: float, expire_time: float | None) -> DeviceToken:
        """Revoke every token of the account and issue `token_hash` (the operator's recovery of an
        account whose tokens are lost, expired or stolen). Raises UnknownUser."""

    def revoke_tokens(self, user_id: str, now: float, token_hash: bytes | None = None) -> int:
        """Revoke the account's token `token_hash`, or every token of it; returns how many."""

    def set_missing_token_expiry(self, expire_time: float) -> int:
        """Give every token without an expiry time (issued before tokens expired) `expire_time`;
        returns how many were changed."""

    def account_exists(self, user_id: str) -> bool:
        """Whether `user_id` has an account."""

    # -- directory ----------------------------------------------------------------------------

    def publish_record(self, record: PublishedRecord) -> PublishedRecord:
        """Add a new version of the user's record, keeping earlier ones; returns it.

        Raises UnknownUser (no account) or VersionNotNewer (not above the newest version).
        """

    def get_record(self, user_id: str, record_version: int = 0) -> PublishedRecord | None:
        """The user's newest record (`record_version` 0) or the given version, or None."""

    # -- mailboxes ----------------------------------------------------------------------------

    def store_messages(
        self, messages: Sequence[NewMessage], limits: MailboxLimits
    ) -> list[SendReceipt | Exception]:
        """Store a batch of messages in one durable transaction; one result per message, in order.

        A message whose (sender, client_message_id) was stored before gets the original's
        receipt with `duplicate` set (even if the original was acknowledged since, until its
        `forget_time`), or ClientMessageIdReused if its digest differs. Otherwise the result is
        UnknownUser (no such recipient), MailboxFull, or the new message's receipt. A failure of
        one message does not affect the others; a failure of the transaction raises.
        """

    def earlier_send(self, message: NewMessage) -> SendReceipt | ClientMessageIdReused | None:
        """What `store_messages` would answer for `message` if it was stored before: the
        original's receipt (`duplicate` set) or ClientMessageIdReused; None if it was not."""

    def pending_messages(self, recipient: str, after_seq: int, now: float, limit: int) -> list[StoredMessage]:
        """Up to `limit` unacknowledged, unexpired messages of a mailbox with `seq` above
        `after_seq`, in `seq` order."""

    def delete_messages(self, recipient: str, message_ids: Sequence[str]) -> int:
        """Delete these messages from the recipient's mailbox (acknowledged); returns how many
        were deleted. Ids not in that mailbox are ignored."""

    def delete_expired(self, now: float, limit: int = 10_000, token_forget_time: float | None = None) -> int:
        """Delete up to `limit` messages whose `expire_time` has passed, idempotency records past
        their `forget_time` and, with `token_forget_time`, device tokens that expired or were
        revoked before it; returns the number of messages deleted."""

    def mailbox_usage(self, recipient: str) -> tuple[int, int]:
        """(messages, envelope bytes) waiting in the recipient's mailbox."""

    # -- replicas -----------------------------------------------------------------------------

    def watch(self, on_recipient: Callable[[str], None], on_reconnect: Callable[[], None]) -> None:
        """Call `on_recipient(user_id)` (from a thread of the store's) whenever a relay sharing
        this store stores a message for `user_id`, and `on_reconnect()` when such calls may have
        been missed; returns once watching. A store no other relay shares may do nothing."""

    def close(self) -> None:
        """Stop watching and release connections."""
