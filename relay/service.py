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
from typing import AsyncIterator, Callable, Sequence

from foundation.errors import (
    quote,
    AccountExistsError,
    BatchTooLargeError,
    InvalidArgumentError,
    MailboxFullError,
    PermissionDeniedError,
    RecordVersionNotNewerError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UserNotFoundError,
)
from foundation.messaging_ids import MAX_ACK_IDS, check_client_message_id, check_envelope, check_user_id
from foundation.ratelimit import TokenBucketLimiter
from foundation.store_workers import StoreWorkers
from relay.store.base import (
    AccountTaken,
    ClientMessageIdReused,
    MailboxFull,
    MailboxLimits,
    NewMessage,
    PublishedRecord,
    RelayStore,
    SendReceipt,
    StoredMessage,
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

EventSink = Callable[[str, int], None]


def hash_token(token: str) -> bytes:
    """The SHA-256 of a device token: all the relay keeps of it."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def new_device_token() -> str:
    """A fresh device token: a recognisable prefix and 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class MailboxSignals:
    """Wakes a mailbox's subscribers when a message arrives (or all of them: at shutdown, or when
    news of other relays' sends may have been lost)."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def register(self, user_id: str) -> asyncio.Event:
        """A new event, set whenever `user_id`'s mailbox may hold something new."""
        event = asyncio.Event()
        self._waiters.setdefault(user_id, set()).add(event)
        return event

    def unregister(self, user_id: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get(user_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[user_id]

    def notify(self, user_id: str) -> None:
        """Wake every subscriber of `user_id` (call on the event loop)."""
        for event in self._waiters.get(user_id, ()):
            event.set()

    def notify_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    @property
    def subscriber_count(self) -> int:
        return sum(len(w) for w in self._waiters.values())


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
    "stored", "duplicate", "delivered", "acked" and "expired" messages (for metrics).
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
        self._clock = clock
        self._on_event = on_event or (lambda name, count: None)
        self._workers = StoreWorkers(store_threads, name="relay-store")
        self._batcher = _SendBatcher(store, self._workers, limits)
        self.signals = MailboxSignals()
        self._tokens: OrderedDict[bytes, str] = OrderedDict()
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

    # -- accounts and admission ----------------------------------------------------------------

    async def create_account(self, user_id: str, client_address: str) -> tuple[str, str]:
        """Create an account; returns (user id, device token). The token is not stored."""
        check_user_id(user_id)
        _admit(self._account_limiter, client_address, "account creations from this address")
        token = new_device_token()
        try:
            await self._workers(self._store.create_account, user_id, hash_token(token), self._clock())
        except AccountTaken:
            raise AccountExistsError(f"the user id {quote(user_id)} is taken on this relay; choose another") from None
        log.info("account %s created", user_id)
        return user_id, token

    async def authenticate(self, token: str | None) -> str:
        """The user id a device token belongs to, after the caller's rate limit.

        Raises UnauthenticatedError (no token, or one no account has) or ResourceExhaustedError.
        """
        if not token:
            raise UnauthenticatedError(
                "no device token: send `authorization: Bearer <device token>` (from CreateAccount)"
            )
        digest = hash_token(token)
        user_id = self._tokens.get(digest)
        if user_id is None:
            user_id = await self._workers(self._store.user_for_token, digest)
            if user_id is None:
                raise UnauthenticatedError(
                    "the device token does not belong to any account on this relay; use the token "
                    "CreateAccount returned"
                )
            # Accounts are never deleted, so a token once valid stays valid: cache it (bounded).
            self._tokens[digest] = user_id
            if len(self._tokens) > 100_000:
                self._tokens.popitem(last=False)
        _admit(self._limiter, user_id, "requests for this account")
        return user_id

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
        result = await self._batcher.submit(message)
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
        wake = self.signals.register(user_id)
        try:
            after = 0
            while True:
                if self._closing:
                    raise UnavailableError("the relay is shutting down; subscribe again (unacknowledged messages are kept)")
                wake.clear()  # before reading, so a send committed after the read wakes us
                batch = await self._workers(self._store.pending_messages, user_id, after, self._clock(), DELIVERY_BATCH)
                for message in batch:
                    yield message
                    after = message.seq
                    self._on_event("delivered", 1)
                if len(batch) < DELIVERY_BATCH:
                    try:
                        await asyncio.wait_for(wake.wait(), IDLE_RECHECK_SECONDS)
                    except asyncio.TimeoutError:
                        pass
        finally:
            self.signals.unregister(user_id, wake)

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
        deleted = await self._workers(self._store.delete_expired, self._clock())
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


def _admit(limiter: TokenBucketLimiter, key: str, what: str) -> None:
    wait = limiter.try_acquire(key)
    if wait:
        raise ResourceExhaustedError(f"too many {what}; retry in {wait:.2f} s")
