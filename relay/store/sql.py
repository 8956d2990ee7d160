"""The relay's store on either engine `foundation.database` offers: a SQLite file (WAL mode; the
embedded default) or a PostgreSQL database shared by several relay replicas. Accounts, directory
records, mailboxes and the senders' idempotency log, schema versioned in `relay_schema_version`
and migrated at start-up; the same SQL and the same migrations on both engines.

On PostgreSQL, a transaction that stores messages also notifies the channel `watch()` listens on,
once per recipient, so that every replica wakes its own subscribers of that mailbox.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

from foundation.database import open_database
from foundation.postgres_db import PostgresDatabase
from relay.store.base import (
    AccountTaken,
    ClientMessageIdReused,
    DeviceToken,
    MailboxFull,
    MailboxLimits,
    NewMessage,
    PublishedRecord,
    SendReceipt,
    StoredMessage,
    TokenNotValid,
    UnknownUser,
    VersionNotNewer,
)

# Each entry migrates the schema from version i to i + 1; append, never edit.
MIGRATIONS: tuple[str, ...] = (
    # accounts.pending_count / pending_bytes mirror the account's rows in `messages`: every
    # transaction that inserts or deletes messages updates them, so the mailbox limits are checked
    # without counting the mailbox on every send.
    #
    # `sent` is the idempotency log of (sender, client_message_id). It is kept apart from `messages`
    # because it outlives the message: a retry after the recipient acknowledged is still a
    # duplicate, until `forget_time`.
    """
    CREATE TABLE accounts (
        user_id TEXT PRIMARY KEY,
        token_hash BLOB NOT NULL UNIQUE,
        create_time REAL NOT NULL,
        pending_count INTEGER NOT NULL DEFAULT 0 CHECK (pending_count >= 0),
        pending_bytes INTEGER NOT NULL DEFAULT 0 CHECK (pending_bytes >= 0)
    );
    CREATE TABLE records (
        user_id TEXT NOT NULL REFERENCES accounts (user_id),
        record_version INTEGER NOT NULL,
        sealed_bundle BLOB NOT NULL,
        wrapped_dek BLOB NOT NULL,
        kms_key_id TEXT NOT NULL,
        publish_time REAL NOT NULL,
        PRIMARY KEY (user_id, record_version)
    );
    CREATE TABLE messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id TEXT NOT NULL UNIQUE,
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL REFERENCES accounts (user_id),
        client_message_id TEXT NOT NULL,
        envelope BLOB NOT NULL,
        store_time REAL NOT NULL,
        expire_time REAL
    );
    CREATE INDEX messages_by_recipient ON messages (recipient, seq);
    CREATE INDEX messages_by_expiry ON messages (expire_time) WHERE expire_time IS NOT NULL;
    CREATE TABLE sent (
        sender TEXT NOT NULL,
        client_message_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        digest BLOB NOT NULL,
        store_time REAL NOT NULL,
        expire_time REAL,
        forget_time REAL NOT NULL,
        PRIMARY KEY (sender, client_message_id)
    );
    CREATE INDEX sent_by_forget_time ON sent (forget_time);
    """,
    # Device tokens expire and can be rotated and revoked: each account has its tokens here
    # (hashes only). `accounts.token_hash` keeps the account's first token's hash and is no longer
    # read. Tokens issued before this table existed get an expiry at the relay's next start
    # (`set_missing_token_expiry`), as migrations cannot know the configured lifetime.
    """
    CREATE TABLE device_tokens (
        token_hash BLOB PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES accounts (user_id),
        issue_time REAL NOT NULL,
        expire_time REAL,
        revoke_time REAL
    );
    CREATE INDEX device_tokens_by_user ON device_tokens (user_id);
    INSERT INTO device_tokens (token_hash, user_id, issue_time) SELECT token_hash, user_id, create_time FROM accounts;
    """,
)

_RECORD = "user_id, record_version, sealed_bundle, wrapped_dek, kms_key_id, publish_time"
_MESSAGE = "seq, message_id, sender, recipient, client_message_id, envelope, store_time, expire_time"

# Ids per `IN (...)` list: below SQLite's default limit of host parameters on old builds (999).
_CHUNK = 500
# (sender, client message id) pairs per lookup of the idempotency log.
_PAIRS = 100

#: The notification channel of a relay store on PostgreSQL, per schema (see `_channel_for`).
CHANNEL_PREFIX = "keyrelay_relay:"
_MAX_CHANNEL = 63  # PostgreSQL truncates identifiers (and so channel names) longer than this


def _channel_for(schema: str) -> str:
    """The channel of the relays whose store is `schema`: relays of other schemas of the same
    database (another deployment, another test) are not woken by these mailboxes."""
    channel = CHANNEL_PREFIX + schema
    if len(channel.encode()) > _MAX_CHANNEL:
        channel = CHANNEL_PREFIX + hashlib.sha256(schema.encode()).hexdigest()[:32]
    return channel


def _record(row: tuple) -> PublishedRecord:
    return PublishedRecord(
        user_id=row[0],
        record_version=row[1],
        sealed_bundle=bytes(row[2]),
        wrapped_dek=bytes(row[3]),
        kms_key_id=row[4],
        publish_time=row[5],
    )


def _message(row: tuple) -> StoredMessage:
    return StoredMessage(
        seq=row[0],
        message_id=row[1],
        sender=row[2],
        recipient=row[3],
        client_message_id=row[4],
        envelope=bytes(row[5]),
        store_time=row[6],
        expire_time=row[7],
    )


def _earlier(message: NewMessage, prior: tuple) -> SendReceipt | ClientMessageIdReused:
    message_id, digest, store_time, expire_time = prior
    if bytes(digest) != bytes(message.digest):
        return ClientMessageIdReused(message.client_message_id)
    return SendReceipt(message_id, store_time, expire_time, duplicate=True)


class SqlRelayStore:
    """A `RelayStore` in a SQLite file or a PostgreSQL database (`location`: a file path or a
    `postgresql://` DSN). Every write is one durable transaction."""

    def __init__(self, location: str) -> None:
        self._db = open_database(location, MIGRATIONS, "relay_schema_version", what="relay store")
        #: The file path, or the DSN without its password.
        self.path = self._db.path
        self._channel: str | None = None
        if isinstance(self._db, PostgresDatabase):
            (schema,) = self._db.conn().execute("SELECT current_schema()").fetchone()
            self._channel = _channel_for(schema)

    @property
    def channel(self) -> str | None:
        """The PostgreSQL channel this store notifies of new messages; None on SQLite."""
        return self._channel

    def schema_version(self) -> int:
        """The relay schema version of the database."""
        return self._db.schema_version()

    # -- accounts -----------------------------------------------------------------------------

    def create_account(self, user_id: str, token_hash: bytes, now: float, expire_time: float | None) -> None:
        """Create an account and its first device token (only its hash is kept). Raises AccountTaken."""

        def insert(conn) -> None:
            # Only a taken user id is the caller's AccountTaken; a repeated token hash (two random
            # tokens with one SHA-256) is not a condition a client can cause or fix, and raises the
            # engine's IntegrityError.
            inserted = conn.execute(
                "INSERT INTO accounts (user_id, token_hash, create_time) VALUES (?, ?, ?) "
                "ON CONFLICT (user_id) DO NOTHING",
                (user_id, token_hash, now),
            ).rowcount
            if inserted != 1:
                raise AccountTaken(user_id)
            self._insert_token(conn, token_hash, user_id, now, expire_time)

        self._db.write(insert)

    @staticmethod
    def _insert_token(conn, token_hash: bytes, user_id: str, now: float, expire_time: float | None) -> DeviceToken:
        conn.execute(
            "INSERT INTO device_tokens (token_hash, user_id, issue_time, expire_time) VALUES (?, ?, ?, ?)",
            (token_hash, user_id, now, expire_time),
        )
        return DeviceToken(user_id, now, expire_time, None)

    @staticmethod
    def _token(conn, token_hash: bytes) -> DeviceToken | None:
        row = conn.execute(
            "SELECT user_id, issue_time, expire_time, revoke_time FROM device_tokens WHERE token_hash = ?",
            (token_hash,),
        ).fetchone()
        return DeviceToken(*row) if row else None

    def device_token(self, token_hash: bytes) -> DeviceToken | None:
        """The device token whose hash is `token_hash` (valid, expired or revoked), or None."""
        return self._token(self._db.conn(), token_hash)

    def rotate_token(
        self, old_hash: bytes, new_hash: bytes, now: float, new_expire: float | None, old_expire: float | None
    ) -> DeviceToken:
        """Issue the token `new_hash` to the owner of the valid token `old_hash`, which then stays
        valid until `old_expire` at the latest (None: it is revoked now); every other token of the
        account is revoked, so an account never has more than two valid tokens. Returns the new
        token. Raises TokenNotValid."""

        def rotate(conn) -> DeviceToken:
            old = self._token(conn, old_hash)
            if old is None or not old.valid_at(now):
                raise TokenNotValid()
            # Lock the account first, as sends do, so two rotations of one account run one by one.
            conn.execute("UPDATE accounts SET pending_count = pending_count WHERE user_id = ?", (old.user_id,))
            if old_expire is None:
                self._revoke(conn, old.user_id, now, None)
            else:
                conn.execute(
                    "UPDATE device_tokens SET revoke_time = ? WHERE user_id = ? AND token_hash <> ? "
                    "AND revoke_time IS NULL",
                    (now, old.user_id, old_hash),
                )
                conn.execute(
                    "UPDATE device_tokens SET expire_time = ? WHERE token_hash = ? "
                    "AND (expire_time IS NULL OR expire_time > ?)",
                    (old_expire, old_hash, old_expire),
                )
            return self._insert_token(conn, new_hash, old.user_id, now, new_expire)

        return self._db.write(rotate)

    def issue_token(self, user_id: str, token_hash: bytes, now: float, expire_time: float | None) -> DeviceToken:
        """Revoke every token of the account and issue `token_hash` (the operator's recovery of an
        account whose tokens are lost, expired or stolen). Raises UnknownUser."""

        def issue(conn) -> DeviceToken:
            if not conn.execute("UPDATE accounts SET pending_count = pending_count WHERE user_id = ?", (user_id,)).rowcount:
                raise UnknownUser(user_id)
            self._revoke(conn, user_id, now, None)
            return self._insert_token(conn, token_hash, user_id, now, expire_time)

        return self._db.write(issue)

    def revoke_tokens(self, user_id: str, now: float, token_hash: bytes | None = None) -> int:
        """Revoke the account's token `token_hash`, or every token of it; returns how many."""
        return self._db.write(lambda conn: self._revoke(conn, user_id, now, token_hash))

    @staticmethod
    def _revoke(conn, user_id: str, now: float, token_hash: bytes | None) -> int:
        sql = "UPDATE device_tokens SET revoke_time = ? WHERE user_id = ? AND revoke_time IS NULL"
        params: tuple = (now, user_id)
        if token_hash is not None:
            sql += " AND token_hash = ?"
            params += (token_hash,)
        return conn.execute(sql, params).rowcount

    def set_missing_token_expiry(self, expire_time: float) -> int:
        """Give every token without an expiry time (issued before tokens expired) `expire_time`;
        returns how many were changed."""
        return self._db.write(
            lambda conn: conn.execute(
                "UPDATE device_tokens SET expire_time = ? WHERE expire_time IS NULL", (expire_time,)
            ).rowcount
        )

    def account_exists(self, user_id: str) -> bool:
        """Whether `user_id` has an account."""
        return self._db.conn().execute("SELECT 1 FROM accounts WHERE user_id = ?", (user_id,)).fetchone() is not None

    # -- directory ----------------------------------------------------------------------------

    def publish_record(self, record: PublishedRecord) -> PublishedRecord:
        """Add a new version of the user's record, keeping earlier ones; returns it.

        Raises UnknownUser (no account) or VersionNotNewer (not above the newest version; with
        none published, versions start at 1).
        """

        def insert(conn) -> PublishedRecord:
            if not conn.execute("SELECT 1 FROM accounts WHERE user_id = ?", (record.user_id,)).fetchone():
                raise UnknownUser(record.user_id)
            (newest,) = conn.execute(
                "SELECT COALESCE(MAX(record_version), 0) FROM records WHERE user_id = ?", (record.user_id,)
            ).fetchone()
            if record.record_version <= newest:
                raise VersionNotNewer(newest)
            conn.execute(
                f"INSERT INTO records ({_RECORD}) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.user_id, record.record_version, record.sealed_bundle, record.wrapped_dek,
                    record.kms_key_id, record.publish_time,
                ),
            )
            return record

        return self._db.write(insert)

    def get_record(self, user_id: str, record_version: int = 0) -> PublishedRecord | None:
        """The user's newest record (`record_version` 0) or the given version, or None."""
        conn = self._db.conn()
        if record_version == 0:
            row = conn.execute(
                f"SELECT {_RECORD} FROM records WHERE user_id = ? ORDER BY record_version DESC LIMIT 1", (user_id,)
            ).fetchone()
        else:
            row = conn.execute(
                f"SELECT {_RECORD} FROM records WHERE user_id = ? AND record_version = ?", (user_id, record_version)
            ).fetchone()
        return _record(row) if row else None

    # -- mailboxes ----------------------------------------------------------------------------

    def store_messages(
        self, messages: Sequence[NewMessage], limits: MailboxLimits
    ) -> list[SendReceipt | Exception]:
        """Store a batch of messages in one durable transaction; one result per message, in order.

        A message whose (sender, client_message_id) was stored before (earlier in this batch too)
        gets the original's receipt with `duplicate` set, even if the original was acknowledged
        since, until its `forget_time`; or ClientMessageIdReused if its digest differs. Otherwise
        the result is UnknownUser (no such recipient), MailboxFull, or the new message's receipt.
        A failed message writes nothing; a failure of the transaction itself raises.
        """
        if not messages:
            return []
        recipients = sorted({m.recipient for m in messages})

        def store(conn) -> list[SendReceipt | Exception]:
            # Subscribe follows a mailbox with a cursor on `seq` (pending_messages(after_seq)), so
            # a mailbox's messages must become visible in `seq` order: a message committed after
            # the cursor moved past its `seq` would never be delivered. `seq` is drawn when the
            # message row is inserted, from a counter that only goes up (SQLite's AUTOINCREMENT;
            # PostgreSQL's identity sequence with its default CACHE 1, so one sequence for every
            # connection), and commits may come in any order. So:
            #
            # 1. Before inserting any message, this transaction locks the account row of each of
            #    its recipients (a no-op UPDATE), and holds the locks until it commits or rolls
            #    back. Sorted order, so two batches sending to the same recipients cannot deadlock.
            # 2. A transaction T1 that stored a message for R thus drew its `seq` while holding
            #    R's lock. Another one, T2, storing for R too, takes that lock only after T1 has
            #    ended: on PostgreSQL a transaction is visible to every new snapshot before its
            #    row locks are released. Everything T2 draws comes later, so it is higher, and T2
            #    commits later still. Per recipient, commit order is `seq` order.
            # 3. A reader that sees T2's message sees T1's too, so a cursor past T2's `seq` has
            #    delivered T1's already. (Lower `seq`s of *other* mailboxes may still appear
            #    later, which no cursor of this mailbox looks at.)
            #
            # This holds at any isolation level. (PostgreSQL's SERIALIZABLE alone would also
            # refuse T1's late commit, through the conflict on the counters both update; the lock
            # does not depend on that.) On SQLite, one writer at a time makes it trivially true.
            conn.executemany(
                "UPDATE accounts SET pending_count = pending_count WHERE user_id = ?", [(r,) for r in recipients]
            )
            # Read what the batch depends on once, decide message by message, write at once: a
            # few statements per batch, not per message (each is a round trip to PostgreSQL).
            logged = self._logged(conn, messages)
            usage = self._usage(conn, recipients)
            results: list[SendReceipt | Exception] = []
            new: list[NewMessage] = []
            for m in messages:
                # In order, each message sees those before it: a retry inside the batch is a
                # duplicate, and the mailbox limits count the batch's own messages.
                key = (m.sender, m.client_message_id)
                prior = logged.get(key)
                if prior is not None:
                    results.append(_earlier(m, prior))
                    continue
                box = usage.get(m.recipient)
                size = len(m.envelope)
                if box is None:
                    results.append(UnknownUser(m.recipient))
                elif box[0] + 1 > limits.max_messages:
                    results.append(MailboxFull("messages"))
                elif box[1] + size > limits.max_bytes:
                    results.append(MailboxFull("bytes"))
                else:
                    box[0] += 1
                    box[1] += size
                    logged[key] = (m.message_id, m.digest, m.store_time, m.expire_time)
                    new.append(m)
                    results.append(SendReceipt(m.message_id, m.store_time, m.expire_time, duplicate=False))
            if new:
                self._insert(conn, new)
            if self._channel is not None:
                # Every relay on this database listens (watch): one small notification per
                # mailbox that got a message, delivered only if this transaction commits.
                for recipient in sorted({m.recipient for m in new}):
                    conn.notify(self._channel, recipient)
            return results

        return self._db.write(store)

    def earlier_send(self, message: NewMessage) -> SendReceipt | ClientMessageIdReused | None:
        """What `store_messages` would answer for `message` if it was stored before: the
        original's receipt (`duplicate` set) or ClientMessageIdReused; None if it was not."""
        prior = self._logged(self._db.conn(), [message]).get((message.sender, message.client_message_id))
        return None if prior is None else _earlier(message, prior)

    @staticmethod
    def _logged(conn, messages: Sequence[NewMessage]) -> dict[tuple[str, str], tuple]:
        """(sender, client_message_id) -> (message_id, digest, store_time, expire_time) of the
        batch's keys found in the idempotency log."""
        keys = list(dict.fromkeys((m.sender, m.client_message_id) for m in messages))
        found: dict[tuple[str, str], tuple] = {}
        # ORed pairs rather than `(a, b) IN (VALUES ...)`, which SQLite answers by a full scan.
        for start in range(0, len(keys), _PAIRS):
            chunk = keys[start : start + _PAIRS]
            where = " OR ".join(["(sender = ? AND client_message_id = ?)"] * len(chunk))
            rows = conn.execute(
                "SELECT sender, client_message_id, message_id, digest, store_time, expire_time FROM sent "
                f"WHERE {where}",
                [value for key in chunk for value in key],
            ).fetchall()
            for row in rows:
                found[(row[0], row[1])] = tuple(row[2:])
        return found

    @staticmethod
    def _usage(conn, recipients: Sequence[str]) -> dict[str, list[int]]:
        """user id -> [pending_count, pending_bytes] of the recipients that have an account."""
        usage: dict[str, list[int]] = {}
        for start in range(0, len(recipients), _CHUNK):
            chunk = recipients[start : start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT user_id, pending_count, pending_bytes FROM accounts WHERE user_id IN ({marks})", chunk
            ).fetchall()
            usage.update({row[0]: [row[1], row[2]] for row in rows})
        return usage

    @staticmethod
    def _insert(conn, new: Sequence[NewMessage]) -> None:
        """Insert the messages (in order, so their `seq`s are too), their idempotency records, and
        count them against their mailboxes."""
        conn.executemany(
            "INSERT INTO messages (message_id, sender, recipient, client_message_id, envelope, store_time, "
            "expire_time) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(m.message_id, m.sender, m.recipient, m.client_message_id, m.envelope, m.store_time, m.expire_time)
             for m in new],
        )
        conn.executemany(
            "INSERT INTO sent (sender, client_message_id, message_id, digest, store_time, expire_time, forget_time) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(m.sender, m.client_message_id, m.message_id, m.digest, m.store_time, m.expire_time, m.forget_time)
             for m in new],
        )
        added: dict[str, list[int]] = {}
        for m in new:
            counts = added.setdefault(m.recipient, [0, 0])
            counts[0] += 1
            counts[1] += len(m.envelope)
        conn.executemany(
            "UPDATE accounts SET pending_count = pending_count + ?, pending_bytes = pending_bytes + ? "
            "WHERE user_id = ?",
            [(count, size, recipient) for recipient, (count, size) in sorted(added.items())],
        )

    def pending_messages(self, recipient: str, after_seq: int, now: float, limit: int) -> list[StoredMessage]:
        """Up to `limit` unacknowledged, unexpired messages of a mailbox with `seq` above
        `after_seq`, in `seq` order."""
        # Expired messages not yet swept by delete_expired are hidden here, so delivery does not
        # depend on how often the sweep runs.
        rows = self._db.conn().execute(
            f"SELECT {_MESSAGE} FROM messages WHERE recipient = ? AND seq > ? "
            "AND (expire_time IS NULL OR expire_time > ?) ORDER BY seq LIMIT ?",
            (recipient, after_seq, now, limit),
        ).fetchall()
        return [_message(row) for row in rows]

    def delete_messages(self, recipient: str, message_ids: Sequence[str]) -> int:
        """Delete these messages from the recipient's mailbox (acknowledged); returns how many
        were deleted. Ids not in that mailbox are ignored."""
        ids = list(dict.fromkeys(message_ids))
        if not ids:
            return 0

        def delete(conn) -> int:
            count = size = 0
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                where = f"recipient = ? AND message_id IN ({', '.join('?' * len(chunk))})"
                (n, b) = conn.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(length(envelope)), 0) FROM messages WHERE {where}",
                    (recipient, *chunk),
                ).fetchone()
                if n:
                    # The DELETE removes just the rows counted: SQLite has one writer at a time,
                    # and PostgreSQL aborts (and re-runs) this transaction if a concurrent one
                    # deleted any of them since its snapshot.
                    conn.execute(f"DELETE FROM messages WHERE {where}", (recipient, *chunk))
                    count += n
                    size += b
            if count:
                self._release(conn, recipient, count, size)
            return count

        return self._db.write(delete)

    def delete_expired(self, now: float, limit: int = 10_000, token_forget_time: float | None = None) -> int:
        """Delete up to `limit` messages whose `expire_time` has passed, every idempotency record
        past its `forget_time` and, with `token_forget_time`, every device token that expired or
        was revoked before it; returns the number of messages deleted."""

        def delete(conn) -> int:
            rows = conn.execute(
                "SELECT seq, recipient, length(envelope) FROM messages "
                "WHERE expire_time IS NOT NULL AND expire_time <= ? ORDER BY expire_time LIMIT ?",
                (now, limit),
            ).fetchall()
            freed: dict[str, list[int]] = {}
            for _, recipient, size in rows:
                counts = freed.setdefault(recipient, [0, 0])
                counts[0] += 1
                counts[1] += size
            conn.executemany("DELETE FROM messages WHERE seq = ?", [(seq,) for seq, _, _ in rows])
            for recipient in sorted(freed):  # accounts in the order sends lock them
                self._release(conn, recipient, *freed[recipient])
            conn.execute("DELETE FROM sent WHERE forget_time <= ?", (now,))
            if token_forget_time is not None:
                conn.execute(
                    "DELETE FROM device_tokens WHERE revoke_time < ? OR expire_time < ?",
                    (token_forget_time, token_forget_time),
                )
            return len(rows)

        return self._db.write(delete)

    @staticmethod
    def _release(conn, recipient: str, count: int, size: int) -> None:
        conn.execute(
            "UPDATE accounts SET pending_count = pending_count - ?, pending_bytes = pending_bytes - ? "
            "WHERE user_id = ?",
            (count, size, recipient),
        )

    def mailbox_usage(self, recipient: str) -> tuple[int, int]:
        """(messages, envelope bytes) waiting in the recipient's mailbox; (0, 0) without an account.

        Expired messages count until delete_expired removes them.
        """
        row = self._db.conn().execute(
            "SELECT pending_count, pending_bytes FROM accounts WHERE user_id = ?", (recipient,)
        ).fetchone()
        return (row[0], row[1]) if row else (0, 0)

    # -- replicas -----------------------------------------------------------------------------

    def watch(self, on_recipient: Callable[[str], None], on_reconnect: Callable[[], None]) -> None:
        """Have `on_recipient(user_id)` called whenever any relay on this database stores a
        message for `user_id`, and `on_reconnect()` when such calls may have been missed (the
        listening connection broke and was re-opened). Both are called from a thread of the
        store's own. Returns once listening.

        On SQLite this does nothing: one file has one relay, whose service wakes its subscribers
        itself.
        """
        if isinstance(self._db, PostgresDatabase):
            self._db.listen(self._channel, on_recipient, on_reconnect)

    def close(self) -> None:
        """Stop listening and release the connections."""
        self._db.close()
