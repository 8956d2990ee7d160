"""The relay's embedded store: accounts, directory records, mailboxes and the senders' idempotency
log in one SQLite file (WAL mode), schema versioned in `relay_schema_version` and migrated at
start-up."""

from __future__ import annotations

import sqlite3
from typing import Sequence

from foundation.sqlite_db import SqliteDatabase
from relay.store.base import (
    AccountTaken,
    ClientMessageIdReused,
    MailboxFull,
    MailboxLimits,
    NewMessage,
    PublishedRecord,
    SendReceipt,
    StoredMessage,
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
)

_RECORD = "user_id, record_version, sealed_bundle, wrapped_dek, kms_key_id, publish_time"
_MESSAGE = "seq, message_id, sender, recipient, client_message_id, envelope, store_time, expire_time"

# Ids per `IN (...)` list: below SQLite's default limit of host parameters on old builds (999).
_CHUNK = 500


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


class SqliteRelayStore:
    """A `RelayStore` in one SQLite file. One connection per thread; every write is one durable
    transaction."""

    def __init__(self, path: str) -> None:
        self._db = SqliteDatabase(path, MIGRATIONS, "relay_schema_version", what="relay store")
        self.path = path

    def schema_version(self) -> int:
        """The relay schema version of the file."""
        return self._db.schema_version()

    # -- accounts -----------------------------------------------------------------------------

    def create_account(self, user_id: str, token_hash: bytes, now: float) -> None:
        """Create an account holding only the hash of its device token. Raises AccountTaken."""

        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO accounts (user_id, token_hash, create_time) VALUES (?, ?, ?)",
                    (user_id, token_hash, now),
                )
            except sqlite3.IntegrityError as exc:
                # Only a taken user id is the caller's AccountTaken; a repeated token hash (two
                # random tokens with one SHA-256) is not a condition a client can cause or fix.
                if conn.execute("SELECT 1 FROM accounts WHERE user_id = ?", (user_id,)).fetchone():
                    raise AccountTaken(user_id) from exc
                raise

        self._db.write(insert)

    def user_for_token(self, token_hash: bytes) -> str | None:
        """The user id whose device token hashes to `token_hash`, or None."""
        row = self._db.conn().execute("SELECT user_id FROM accounts WHERE token_hash = ?", (token_hash,)).fetchone()
        return row[0] if row else None

    def account_exists(self, user_id: str) -> bool:
        """Whether `user_id` has an account."""
        return self._db.conn().execute("SELECT 1 FROM accounts WHERE user_id = ?", (user_id,)).fetchone() is not None

    # -- directory ----------------------------------------------------------------------------

    def publish_record(self, record: PublishedRecord) -> PublishedRecord:
        """Add a new version of the user's record, keeping earlier ones; returns it.

        Raises UnknownUser (no account) or VersionNotNewer (not above the newest version; with
        none published, versions start at 1).
        """

        def insert(conn: sqlite3.Connection) -> PublishedRecord:
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

        def store(conn: sqlite3.Connection) -> list[SendReceipt | Exception]:
            # Messages are handled in order and each sees the writes of those before it, so a retry
            # inside one batch is a duplicate and the mailbox limits count the batch's own messages.
            return [self._store_one(conn, message, limits) for message in messages]

        return self._db.write(store)

    @staticmethod
    def _store_one(conn: sqlite3.Connection, m: NewMessage, limits: MailboxLimits) -> SendReceipt | Exception:
        row = conn.execute(
            "SELECT message_id, digest, store_time, expire_time FROM sent WHERE sender = ? AND client_message_id = ?",
            (m.sender, m.client_message_id),
        ).fetchone()
        if row is not None:
            if bytes(row[1]) != bytes(m.digest):
                return ClientMessageIdReused(m.client_message_id)
            return SendReceipt(message_id=row[0], store_time=row[2], expire_time=row[3], duplicate=True)
        usage = conn.execute(
            "SELECT pending_count, pending_bytes FROM accounts WHERE user_id = ?", (m.recipient,)
        ).fetchone()
        if usage is None:
            return UnknownUser(m.recipient)
        size = len(m.envelope)
        if usage[0] + 1 > limits.max_messages:
            return MailboxFull("messages")
        if usage[1] + size > limits.max_bytes:
            return MailboxFull("bytes")
        conn.execute(
            "INSERT INTO messages (message_id, sender, recipient, client_message_id, envelope, store_time, "
            "expire_time) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (m.message_id, m.sender, m.recipient, m.client_message_id, m.envelope, m.store_time, m.expire_time),
        )
        conn.execute(
            "INSERT INTO sent (sender, client_message_id, message_id, digest, store_time, expire_time, forget_time) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (m.sender, m.client_message_id, m.message_id, m.digest, m.store_time, m.expire_time, m.forget_time),
        )
        conn.execute(
            "UPDATE accounts SET pending_count = pending_count + 1, pending_bytes = pending_bytes + ? "
            "WHERE user_id = ?",
            (size, m.recipient),
        )
        return SendReceipt(m.message_id, m.store_time, m.expire_time, duplicate=False)

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

        def delete(conn: sqlite3.Connection) -> int:
            count = size = 0
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                where = f"recipient = ? AND message_id IN ({', '.join('?' * len(chunk))})"
                (n, b) = conn.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(length(envelope)), 0) FROM messages WHERE {where}",
                    (recipient, *chunk),
                ).fetchone()
                if n:
                    # The transaction holds the write lock, so the DELETE removes just the rows counted.
                    conn.execute(f"DELETE FROM messages WHERE {where}", (recipient, *chunk))
                    count += n
                    size += b
            if count:
                self._release(conn, recipient, count, size)
            return count

        return self._db.write(delete)

    def delete_expired(self, now: float, limit: int = 10_000) -> int:
        """Delete up to `limit` messages whose `expire_time` has passed, and every idempotency
        record past its `forget_time`; returns the number of messages deleted."""

        def delete(conn: sqlite3.Connection) -> int:
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
            for recipient, (count, size) in freed.items():
                self._release(conn, recipient, count, size)
            conn.execute("DELETE FROM sent WHERE forget_time <= ?", (now,))
            return len(rows)

        return self._db.write(delete)

    @staticmethod
    def _release(conn: sqlite3.Connection, recipient: str, count: int, size: int) -> None:
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

    def close(self) -> None:
        """Close every thread's connection."""
        self._db.close()
