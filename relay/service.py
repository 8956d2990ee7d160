"""The relay's domain logic: accounts, the directory of sealed records, and mailboxes. No gRPC here.

- Accounts: `create_account` hands out a device token once and stores only its SHA-256; the
  token carries 256 random bits, so a fast hash is enough (nothing to brute-force).
- Directory: only the owner publishes, versions only go up, history is kept.
- Mailboxes: `send` answers once the message is committed to the store. Concurrent sends are
  group-committed (`_SendBatcher`): one transaction, one fsync, for every send waiting at that
  moment, so throughput grows with concurrency instead of queueing on the disk.
  `subscribe` yields a mailbox's pending messages in store order, then waits for new ones; a send
  wakes the recipient's subscribers through `MailboxSignals` (in process). Replicas sharing a
  database hear of each other's sends through the store (`RelayStore.watch`: LISTEN/NOTIFY on
  PostgreSQL) and wake their own subscribers the same way. A periodic re-check of idle mailboxes
  is only a safety net.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Sequence

from foundation.errors import (
    quote,
    AccountExistsError,
    BatchTooLargeError,
    DeviceTokenExpiredError,
    DeviceTokenRevokedError,
    InvalidArgumentError,
    MailboxFullError,
    PermissionDeniedError,
    RecordVersionNotNewerError,
    ResourceExhaustedError,
    TooManySubscriptionsError,
    UnauthenticatedError,
    UnavailableError,
    UserNotFoundError,
)
from foundation.messaging_ids import MAX_ACK_IDS, check_client_message_id, check_envelope, check_user_id
from foundation.ratelimit import TokenBucketLimiter
from foundation.store_workers import StoreWorkers
from relay.config import SenderQuotaConfig, TokenConfig
from relay.limits import MailboxSignals, SenderQuotas, address_key, admit
from relay.store.base import (
    AccountTaken,
    ClientMessageIdReused,
    DeviceToken,
    MailboxFull,
    MailboxLimits,
    NewMessage,
    PublishedRecord,
    RelayStore,
    SendReceipt,
    StoredMessage,
    TokenNotValid,
    UnknownUser,
    VersionNotNewer,
)

log = logging.getLogger(__name__)

TOKEN_PREFIX = "krt_"
MAX_MESSAGE_ID = 64
MAX_SEALED_BUNDLE = 64 * 1024
MAX_WRAPPED_DEK = 4 * 1024
MAX_KMS_KEY_ID = 256
#: Messages read from the store per round while a subscriber catches up.
DELIVERY_BATCH = 128
#: Sends committed in one transaction at most.
MAX_SEND_BATCH = 512
#: A subscriber with nothing to read re-checks its mailbox this often even without a signal, so
#: a missed wake-up never stalls it for long (a safety net: sends on this relay and, through
#: `RelayStore.watch`, on other relays sharing the store wake subscribers at once).
IDLE_RECHECK_SECONDS = 30.0

#: Expired and revoked device tokens are kept this long (so a client is told "expired" or
#: "revoked" rather than "unknown"), then deleted with the expired messages.
TOKEN_FORGET_SECONDS = 30 * 24 * 3600.0
#: Tokens read from the store that are cached at most (least recently used dropped first).
TOKEN_CACHE_SIZE = 100_000

EventSink = Callable[[str, int], None]

_NO_QUOTA = SenderQuotaConfig(messages=0, bytes=0, all_recipients_bytes=0)
_NEVER_EXPIRE = TokenConfig(lifetime_seconds=0, rotations_per_hour=0)


@dataclass(frozen=True)
class IssuedToken:
    """A device token as issued: shown to its device this once, never stored."""

    user_id: str
    device_token: str = field(repr=False)
    expire_time: float | None
    previous_expire_time: float | None = None


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def hash_token(token: str) -> bytes:
    """The SHA-256 of a device token: all the relay keeps of it."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def new_device_token() -> str:
    """A fresh device token: a recognisable prefix and 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class _SendBatcher:
    """Group commit: sends queue here and one task stores whatever is queued in one transaction."""

    def __init__(self, store: RelayStore, workers: StoreWorkers, limits: MailboxLimits) -> None:
        self._store = store
        self._workers = workers
        self._limits = limits
        self._queue: list[tuple[NewMessage, asyncio.Future]] = []
        self._task: asyncio.Task | None = None

    async def submit(self, message: NewMessage) -> SendReceipt | Exception:
        """Store one message with whatever else is waiting; the store's per-message result."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((message, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        # The batch goes on even if this caller gives up: the client may retry, and the retry is
        # answered as a duplicate of what this batch stored.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_SEND_BATCH], self._queue[MAX_SEND_BATCH:]
            try:
                results = await self._workers(self._store.store_messages, [m for m, _ in batch], self._limits)
            except Exception:  # noqa: BLE001 - every waiting sender must get an answer
                log.exception("storing a batch of %d messages failed; nothing of it was stored", len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(
                            UnavailableError("the relay could not store the message; it was not stored: retry")
                        )
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        """Wait for the batch in flight (and any queued behind it) to be stored."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


class RelayService:
    """Accounts, directory and mailboxes over a `RelayStore`.

    `ttl_seconds` 0 keeps messages until acknowledged; `dedupe_seconds` is how long a client
    message id is remembered when messages do not expire. `on_event(name, count)` is told of
    "stored", "duplicate", "delivered", "acked" and "expired" messages (for metrics). The limits
    (`limiter` per account, `account_limiter` per client address, `account_total_limiter` for
    the whole relay, `sender_quota`, `max_streams` per account) default to none, and tokens
    (`tokens`) to never expiring.
    """

    def __init__(
        self,
        store: RelayStore,
        *,
        limits: MailboxLimits,
        ttl_seconds: float,
        dedupe_seconds: float,
        limiter: TokenBucketLimiter | None = None,
        account_limiter: TokenBucketLimiter | None = None,
        account_total_limiter: TokenBucketLimiter | None = None,
        sender_quota: SenderQuotaConfig | None = None,
        max_streams: int = 16,
        tokens: TokenConfig | None = None,
        store_threads: int = 4,
        clock: Callable[[], float] = time.time,
        on_event: EventSink | None = None,
    ) -> None:
        self._store = store
        self._limits = limits
        self._ttl = ttl_seconds
        self._dedupe = dedupe_seconds
        self._limiter = limiter or TokenBucketLimiter(0, 1)
        self._account_limiter = account_limiter or TokenBucketLimiter(0, 1)
        self._account_total_limiter = account_total_limiter or TokenBucketLimiter(0, 1)
        self._quotas = SenderQuotas(sender_quota or _NO_QUOTA)
        self._token_policy = tokens or _NEVER_EXPIRE
        rotations = self._token_policy.rotations_per_hour
        self._rotation_limiter = TokenBucketLimiter(rotations / 3600, max(1, int(rotations)))
        self._clock = clock
        self._on_event = on_event or (lambda name, count: None)
        self._workers = StoreWorkers(store_threads, name="relay-store")
        self._batcher = _SendBatcher(store, self._workers, limits)
        self.signals = MailboxSignals(max_streams)
        # token hash -> (what the store said of it, when it was read by this relay's clock)
        self._tokens: OrderedDict[bytes, tuple[DeviceToken, float]] = OrderedDict()
        self._closing = False

    async def watch_store(self) -> None:
        """Wake this relay's subscribers when another relay sharing the store stores a message for
        them (and all of them when the store may have missed telling). Call once, on the event
        loop that serves the subscriptions; returns once the store watches."""
        loop = asyncio.get_running_loop()

        def on_loop(fn: Callable[..., None], *args) -> None:
            # Called from the store's thread; after shutdown the loop may be closed: nothing to wake.
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:
                pass

        def on_recipient(user_id: str) -> None:
            on_loop(self.signals.notify, user_id)

        def on_reconnect() -> None:
            # Notifications were lost meanwhile: every subscriber re-reads from its cursor.
            on_loop(self.signals.notify_all)

        await self._workers(self._store.watch, on_recipient, on_reconnect)

    # -- accounts, tokens and admission ----------------------------------------------------------

    def _token_expiry(self, now: float) -> float | None:
        lifetime = self._token_policy.lifetime_seconds
        return now + lifetime if lifetime else None

    async def create_account(self, user_id: str, client_address: str) -> IssuedToken:
        """Create an account and issue its first device token (which is not stored)."""
        check_user_id(user_id)
        admit(self._account_limiter, address_key(client_address), "account creations from this address")
        admit(self._account_total_limiter, "", "account creations on this relay")
        token = new_device_token()
        now = self._clock()
        expire = self._token_expiry(now)
        try:
            await self._workers(self._store.create_account, user_id, hash_token(token), now, expire)
        except AccountTaken:
            raise AccountExistsError(f"the user id {quote(user_id)} is taken on this relay; choose another") from None
        log.info("account %s created", user_id)
        return IssuedToken(user_id, token, expire)

    async def authenticate(self, token: str | None) -> str:
        """The user id a device token belongs to, after the caller's rate limit.

        Raises UnauthenticatedError (no token, or one no account has), DeviceTokenExpiredError,
        DeviceTokenRevokedError or ResourceExhaustedError.
        """
        user_id = (await self._valid_token(token))[1].user_id
        admit(self._limiter, user_id, "requests for this account")
        return user_id

    async def _valid_token(self, token: str | None) -> tuple[bytes, DeviceToken]:
        if not token:
            raise UnauthenticatedError(
                "no device token: send `authorization: Bearer <device token>` (from CreateAccount)"
            )
        digest = hash_token(token)
        now = self._clock()
        cached = self._tokens.get(digest)
        if cached is not None and now - cached[1] <= self._token_policy.cache_seconds:
            record = cached[0]
        else:
            record = await self._workers(self._store.device_token, digest)
            if record is None:
                self._tokens.pop(digest, None)
                raise UnauthenticatedError(
                    "the device token does not belong to any account on this relay; use the token "
                    "CreateAccount or RotateDeviceToken returned"
                )
            # Cached for a few seconds only: a token revoked through another relay sharing the
            # store stops working here within `cache_seconds`.
            self._tokens[digest] = (record, now)
            self._tokens.move_to_end(digest)
            while len(self._tokens) > TOKEN_CACHE_SIZE:
                self._tokens.popitem(last=False)
        if record.revoke_time is not None:
            raise DeviceTokenRevokedError(
                f"the device token of {quote(record.user_id)} was revoked at {_utc(record.revoke_time)}; use the "
                "account's newer token, or ask the relay operator to issue one (keyrelay relay --issue-token)"
            )
        if record.expire_time is not None and now >= record.expire_time:
            raise DeviceTokenExpiredError(
                f"the device token of {quote(record.user_id)} expired at {_utc(record.expire_time)}; devices rotate "
                "their token before then (RotateDeviceToken); ask the relay operator to issue a new one "
                "(keyrelay relay --issue-token)"
            )
        return digest, record

    def _forget_tokens_of(self, user_id: str) -> None:
        for digest in [d for d, (record, _) in self._tokens.items() if record.user_id == user_id]:
            del self._tokens[digest]

    async def rotate_token(self, token: str | None, *, revoke_previous: bool = False) -> IssuedToken:
        """Issue a new token to the account of `token`, which stays valid for the rotation grace
        period (or not at all with `revoke_previous`); every other token of the account is
        revoked. Raises what `authenticate` raises, and ResourceExhaustedError."""
        digest, record = await self._valid_token(token)
        admit(self._limiter, record.user_id, "requests for this account")
        admit(self._rotation_limiter, record.user_id, "device token rotations for this account")
        new = new_device_token()
        now = self._clock()
        old_expire: float | None = None
        if not revoke_previous:
            old_expire = now + self._token_policy.rotation_grace_seconds
            if record.expire_time is not None:
                old_expire = min(old_expire, record.expire_time)
        try:
            issued = await self._workers(
                self._store.rotate_token, digest, hash_token(new), now, self._token_expiry(now), old_expire
            )
        except TokenNotValid:
            self._tokens.pop(digest, None)
            raise UnauthenticatedError("the device token was revoked or expired meanwhile; it was not rotated") from None
        self._forget_tokens_of(record.user_id)
        log.info("device token of %s rotated", record.user_id)
        return IssuedToken(record.user_id, new, issued.expire_time, now if old_expire is None else old_expire)

    async def revoke_tokens(self, token: str | None, *, all_tokens: bool = False) -> int:
        """Revoke `token` (a device signing out) or, with `all_tokens`, every token of its
        account; returns how many were revoked."""
        digest, record = await self._valid_token(token)
        admit(self._limiter, record.user_id, "requests for this account")
        count = await self._workers(
            self._store.revoke_tokens, record.user_id, self._clock(), None if all_tokens else digest
        )
        self._forget_tokens_of(record.user_id)
        log.info("%d device token(s) of %s revoked", count, record.user_id)
        return count

    async def issue_token(self, user_id: str) -> IssuedToken:
        """The operator's recovery: revoke every token of `user_id` and issue a new one."""
        check_user_id(user_id)
        token = new_device_token()
        now = self._clock()
        try:
            issued = await self._workers(self._store.issue_token, user_id, hash_token(token), now, self._token_expiry(now))
        except UnknownUser:
            raise UserNotFoundError(f"no account named {quote(user_id)} on this relay") from None
        self._forget_tokens_of(user_id)
        log.info("device token of %s issued by the operator; its other tokens are revoked", user_id)
        return IssuedToken(user_id, token, issued.expire_time)

    async def set_missing_token_expiry(self) -> int:
        """Give tokens issued before tokens expired the configured lifetime from now."""
        expire = self._token_expiry(self._clock())
        if expire is None:
            return 0
        return await self._workers(self._store.set_missing_token_expiry, expire)

    # -- directory ---------------------------------------------------------------------------

    async def publish_record(self, caller: str, record: PublishedRecord) -> PublishedRecord:
        """Store a new version of the caller's own record (publish_time set here)."""
        check_user_id(record.user_id, "record user id")
        if record.user_id != caller:
            raise PermissionDeniedError(
                f"account {quote(caller)} cannot publish a record for {quote(record.user_id)}: publish only your own"
            )
        if record.record_version < 1:
            raise InvalidArgumentError("record_version must be 1 or more")
        if not record.kms_key_id or len(record.kms_key_id) > MAX_KMS_KEY_ID:
            raise InvalidArgumentError(f"kms_key_id must be 1-{MAX_KMS_KEY_ID} characters: the key that sealed the record")
        if not record.sealed_bundle or len(record.sealed_bundle) > MAX_SEALED_BUNDLE:
            raise InvalidArgumentError(f"sealed.sealed_bundle must be 1-{MAX_SEALED_BUNDLE} bytes, as SealPublicKey made it")
        if not record.wrapped_dek or len(record.wrapped_dek) > MAX_WRAPPED_DEK:
            raise InvalidArgumentError(f"sealed.wrapped_dek must be 1-{MAX_WRAPPED_DEK} bytes, as SealPublicKey made it")
        stamped = PublishedRecord(
            record.user_id, record.record_version, record.sealed_bundle, record.wrapped_dek,
            record.kms_key_id, self._clock(),
        )
        try:
            return await self._workers(self._store.publish_record, stamped)
        except VersionNotNewer as exc:
            raise RecordVersionNotNewerError(
                f"record version {record.record_version} is not above the newest published version "
                f"{exc.newest}; publish version {exc.newest + 1} or later"
            ) from None
        except UnknownUser:
            raise UserNotFoundError(f"no account named {quote(caller)} on this relay") from None

    async def get_record(self, user_id: str, record_version: int = 0) -> PublishedRecord:
        """A user's newest record, or the given version."""
        check_user_id(user_id)
        record = await self._workers(self._store.get_record, user_id, record_version)
        if record is not None:
            return record
        if not await self._workers(self._store.account_exists, user_id):
            raise UserNotFoundError(f"no account named {quote(user_id)} on this relay")
        if record_version:
            raise UserNotFoundError(f"{quote(user_id)} has no record version {record_version}")
        raise UserNotFoundError(f"{quote(user_id)} has not published a record yet")

    # -- mailboxes ---------------------------------------------------------------------------

    async def send(self, sender: str, recipient: str, envelope: bytes, client_message_id: str) -> SendReceipt:
        """Store a message durably (or find the one this client message id stored before)."""
        check_user_id(recipient, "recipient user id")
        check_client_message_id(client_message_id)
        check_envelope(envelope)
        now = self._clock()
        expire = now + self._ttl if self._ttl else None
        message = NewMessage(
            message_id=uuid.uuid4().hex,
            sender=sender,
            recipient=recipient,
            client_message_id=client_message_id,
            envelope=envelope,
            digest=hashlib.sha256(recipient.encode() + b"\0" + envelope).digest(),
            store_time=now,
            expire_time=expire,
            forget_time=expire if expire is not None else now + self._dedupe,
        )
        try:
            self._quotas.charge(sender, recipient, len(envelope))
        except ResourceExhaustedError:
            # A retry of a message stored before is answered as always, over quota or not: the
            # sender may not have heard that it was stored.
            earlier = await self._workers(self._store.earlier_send, message)
            if earlier is None:
                raise
            result: SendReceipt | Exception = earlier
        else:
            try:
                result = await self._batcher.submit(message)
            except BaseException:
                self._quotas.refund(sender, recipient, len(envelope))
                raise
            if isinstance(result, Exception) or result.duplicate:
                self._quotas.refund(sender, recipient, len(envelope))  # nothing new was stored
        if isinstance(result, UnknownUser):
            raise UserNotFoundError(f"no account named {quote(recipient)} on this relay; check the recipient's user id")
        if isinstance(result, MailboxFull):
            if result.limit == "messages":
                held = f"{self._limits.max_messages} unread messages, the most it keeps (mailbox.max_messages)"
            else:
                held = f"{self._limits.max_bytes} bytes of unread messages, the most it keeps (mailbox.max_bytes)"
            raise MailboxFullError(
                f"the mailbox of {quote(recipient)} is full: it holds {held}; the message was not stored: "
                "retry later, once the recipient has read its messages"
            )
        if isinstance(result, ClientMessageIdReused):
            raise InvalidArgumentError(
                f"client_message_id {quote(client_message_id)} was already used for a different message; "
                "use a new id for each message and the same id only to retry"
            )
        if isinstance(result, Exception):
            raise result
        if result.duplicate:
            self._on_event("duplicate", 1)
        else:
            self._on_event("stored", 1)
            self.signals.notify(recipient)
        return result

    async def subscribe(self, user_id: str) -> AsyncIterator[StoredMessage]:
        """The user's pending messages in store order, then new ones as they arrive, until the
        caller stops iterating or the relay shuts down (UnavailableError: subscribe again)."""
        stream = self.signals.register(user_id)
        try:
            after = 0
            while True:
                self._check_stream(stream)
                stream.wake.clear()  # before reading, so a send committed after the read wakes us
                batch = await self._workers(self._store.pending_messages, user_id, after, self._clock(), DELIVERY_BATCH)
                for message in batch:
                    self._check_stream(stream)
                    yield message
                    after = message.seq
                    self._on_event("delivered", 1)
                if len(batch) < DELIVERY_BATCH:
                    try:
                        await asyncio.wait_for(stream.wake.wait(), IDLE_RECHECK_SECONDS)
                    except asyncio.TimeoutError:
                        pass
        finally:
            self.signals.unregister(user_id, stream)

    def _check_stream(self, stream) -> None:
        if self._closing:
            raise UnavailableError("the relay is shutting down; subscribe again (unacknowledged messages are kept)")
        if stream.replaced:
            raise TooManySubscriptionsError(
                f"this account opened more than {self.signals.max_streams} Subscribe streams on this relay "
                "(rate_limit.subscribe_streams_per_account), so its oldest, this one, was closed; a newer stream "
                "receives the messages: do not reopen this one"
            )

    async def ack(self, user_id: str, message_ids: Sequence[str]) -> int:
        """Delete acknowledged messages of the user's mailbox; returns how many were deleted."""
        if not message_ids:
            raise InvalidArgumentError("message_ids is empty: name the messages to acknowledge")
        if len(message_ids) > MAX_ACK_IDS:
            raise BatchTooLargeError(
                f"{len(message_ids)} message ids in one Ack; send at most {MAX_ACK_IDS} per call"
            )
        for message_id in message_ids:
            if not message_id or len(message_id) > MAX_MESSAGE_ID:
                raise InvalidArgumentError(f"a message id is empty or longer than {MAX_MESSAGE_ID} characters")
        deleted = await self._workers(self._store.delete_messages, user_id, list(dict.fromkeys(message_ids)))
        self._on_event("acked", deleted)
        return deleted

    async def delete_expired(self) -> int:
        """Delete messages past their TTL (and forgotten idempotency records); returns the count."""
        now = self._clock()
        deleted = await self._workers(self._store.delete_expired, now, 10_000, now - TOKEN_FORGET_SECONDS)
        if deleted:
            self._on_event("expired", deleted)
            log.info("deleted %d expired messages", deleted)
        return deleted

    def end_subscriptions(self) -> None:
        """End every Subscribe stream with UnavailableError (the relay is stopping), now and later."""
        self._closing = True
        self.signals.notify_all()

    async def close(self) -> None:
        """End subscriptions, store what is queued, and stop the store threads."""
        self.end_subscriptions()
        await self._batcher.close()
        await asyncio.get_running_loop().run_in_executor(None, self._workers.close)

