"""The embedded key store: one SQLite file in WAL mode, schema versioned and migrated at start-up."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Callable, Sequence

from kms_node.store.base import (
    AliasTaken,
    KeyIdTaken,
    KeyRecord,
    RequestIdTaken,
    Reservation,
    RevisionConflict,
    VersionRecord,
)
from foundation.sqlite_db import SqliteDatabase

# Each entry migrates the schema from version i to i + 1; append, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE keys (
        key_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        tags TEXT NOT NULL DEFAULT '{}',
        state TEXT NOT NULL,
        instance_id TEXT NOT NULL DEFAULT '',
        key_spec TEXT NOT NULL,
        primary_version INTEGER NOT NULL,
        min_decryption_version INTEGER NOT NULL,
        create_time REAL NOT NULL,
        deletion_time REAL,
        revision INTEGER NOT NULL
    );
    CREATE INDEX keys_by_tenant ON keys (tenant_id, create_time, key_id);
    CREATE INDEX keys_by_deletion ON keys (deletion_time) WHERE deletion_time IS NOT NULL;
    CREATE TABLE key_versions (
        key_id TEXT NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        create_time REAL NOT NULL,
        wrapped_key BLOB NOT NULL,
        PRIMARY KEY (key_id, version)
    );
    CREATE TABLE aliases (
        tenant_id TEXT NOT NULL,
        alias TEXT NOT NULL,
        key_id TEXT NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,
        PRIMARY KEY (tenant_id, alias)
    );
    CREATE INDEX aliases_by_key ON aliases (key_id);
    """,
    # 2: the key registry of the shared node (records of dedicated keys and their reservations).
    """
    ALTER TABLE keys ADD COLUMN update_time REAL NOT NULL DEFAULT 0;
    UPDATE keys SET update_time = create_time;
    CREATE TABLE reservations (
        request_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        key_id TEXT NOT NULL
    );
    """,
)


class SqliteKeyStore:
    """A `KeyStore` in one SQLite file. One connection per thread; writes are transactions.

    `clock` stamps `update_time` on every change (a new key's is its `create_time`).
    """

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time) -> None:
        self._db = SqliteDatabase(path, MIGRATIONS, "schema_version", what="key store")
        self.path = path
        self._clock = clock

    def schema_version(self) -> int:
        """The schema version of the file."""
        return self._db.schema_version()

    # -- reads ----------------------------------------------------------------------------

    def _record(self, conn: sqlite3.Connection, row: tuple) -> KeyRecord:
        key_id = row[0]
        versions = tuple(
            VersionRecord(v, t, bytes(w))
            for v, t, w in conn.execute(
                "SELECT version, create_time, wrapped_key FROM key_versions WHERE key_id = ? ORDER BY version",
                (key_id,),
            )
        )
        aliases = tuple(
            a for (a,) in conn.execute("SELECT alias FROM aliases WHERE key_id = ? ORDER BY alias", (key_id,))
        )
        return KeyRecord(
            key_id=key_id,
            tenant_id=row[1],
            description=row[2],
            tags=json.loads(row[3]),
            state=row[4],
            instance_id=row[5],
            key_spec=row[6],
            primary_version=row[7],
            min_decryption_version=row[8],
            create_time=row[9],
            deletion_time=row[10],
            revision=row[11],
            update_time=row[12],
            aliases=aliases,
            versions=versions,
        )

    _COLUMNS = (
        "key_id, tenant_id, description, tags, state, instance_id, key_spec, primary_version, "
        "min_decryption_version, create_time, deletion_time, revision, update_time"
    )

    def _fetch(self, conn: sqlite3.Connection, key_id: str) -> KeyRecord | None:
        row = conn.execute(f"SELECT {self._COLUMNS} FROM keys WHERE key_id = ?", (key_id,)).fetchone()
        return self._record(conn, row) if row else None

    def get_key(self, key_id: str) -> KeyRecord | None:
        return self._fetch(self._db.conn(), key_id)

    def resolve_alias(self, tenant_id: str, alias: str) -> str | None:
        return self._alias_owner(self._db.conn(), tenant_id, alias)

    def list_keys(self, tenant_id: str, after: tuple[float, str] | None, limit: int) -> list[KeyRecord]:
        conn = self._db.conn()
        after_time, after_id = after if after is not None else (float("-inf"), "")
        rows = conn.execute(
            f"SELECT {self._COLUMNS} FROM keys WHERE tenant_id = ? AND state != 'CREATING' "
            "AND (create_time, key_id) > (?, ?) ORDER BY create_time, key_id LIMIT ?",
            (tenant_id, after_time, after_id, limit),
        ).fetchall()
        return [self._record(conn, row) for row in rows]

    def keys_due_for_deletion(self, now: float) -> list[str]:
        return [
            key_id
            for (key_id,) in self._db.conn().execute(
                "SELECT key_id FROM keys WHERE state = 'PENDING_DELETION' AND deletion_time <= ?", (now,)
            )
        ]

    def find_reservation(self, request_id: str) -> Reservation | None:
        row = self._db.conn().execute(
            "SELECT tenant_id, key_id FROM reservations WHERE request_id = ?", (request_id,)
        ).fetchone()
        return Reservation(request_id, row[0], row[1]) if row else None

    # -- writes ---------------------------------------------------------------------------

    def _insert(self, conn: sqlite3.Connection, record: KeyRecord, alias: str | None) -> KeyRecord:
        if alias and self._alias_owner(conn, record.tenant_id, alias) is not None:
            raise AliasTaken(alias)
        if conn.execute("SELECT 1 FROM keys WHERE key_id = ?", (record.key_id,)).fetchone():
            raise KeyIdTaken(record.key_id)
        record = record.evolve(update_time=record.update_time or record.create_time, aliases=(alias,) if alias else ())
        conn.execute(
            f"INSERT INTO keys ({self._COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.key_id, record.tenant_id, record.description, json.dumps(record.tags, sort_keys=True),
                record.state, record.instance_id, record.key_spec, record.primary_version,
                record.min_decryption_version, record.create_time, record.deletion_time, record.revision,
                record.update_time,
            ),
        )
        for version in record.versions:
            self._insert_version(conn, record.key_id, version)
        if alias:
            self._insert_alias(conn, record.tenant_id, alias, record.key_id)
        return record

    def create_key(self, record: KeyRecord, alias: str | None) -> KeyRecord:
        return self._db.write(lambda conn: self._insert(conn, record, alias))

    @staticmethod
    def _alias_owner(conn: sqlite3.Connection, tenant_id: str, alias: str) -> str | None:
        row = conn.execute("SELECT key_id FROM aliases WHERE tenant_id = ? AND alias = ?", (tenant_id, alias)).fetchone()
        return row[0] if row else None

    @staticmethod
    def _insert_alias(conn: sqlite3.Connection, tenant_id: str, alias: str, key_id: str) -> None:
        conn.execute("INSERT INTO aliases (tenant_id, alias, key_id) VALUES (?, ?, ?)", (tenant_id, alias, key_id))

    @staticmethod
    def _insert_version(conn: sqlite3.Connection, key_id: str, version: VersionRecord) -> None:
        conn.execute(
            "INSERT INTO key_versions (key_id, version, create_time, wrapped_key) VALUES (?, ?, ?, ?)",
            (key_id, version.version, version.create_time, version.wrapped),
        )

    def _touch(self, conn: sqlite3.Connection, key_id: str) -> None:
        conn.execute(
            "UPDATE keys SET revision = revision + 1, update_time = ? WHERE key_id = ?", (self._clock(), key_id)
        )

    def _save(self, conn: sqlite3.Connection, record: KeyRecord) -> None:
        cursor = conn.execute(
            "UPDATE keys SET description = ?, tags = ?, state = ?, primary_version = ?, "
            "min_decryption_version = ?, deletion_time = ?, revision = revision + 1, update_time = ? "
            "WHERE key_id = ? AND revision = ?",
            (
                record.description, json.dumps(record.tags, sort_keys=True), record.state,
                record.primary_version, record.min_decryption_version, record.deletion_time, self._clock(),
                record.key_id, record.revision,
            ),
        )
        if cursor.rowcount != 1:
            raise RevisionConflict(record.key_id)

    def update_key(self, record: KeyRecord, new_version: VersionRecord | None = None) -> KeyRecord:
        def update(conn: sqlite3.Connection) -> KeyRecord:
            self._save(conn, record)
            if new_version is not None:
                self._insert_version(conn, record.key_id, new_version)
            return self._fetch(conn, record.key_id)

        return self._db.write(update)

    def replace_aliases(self, record: KeyRecord, aliases: Sequence[str]) -> KeyRecord:
        def replace(conn: sqlite3.Connection) -> KeyRecord:
            self._save(conn, record)
            wanted = list(dict.fromkeys(aliases))
            for alias in wanted:
                if self._alias_owner(conn, record.tenant_id, alias) not in (None, record.key_id):
                    raise AliasTaken(alias)
            conn.execute("DELETE FROM aliases WHERE key_id = ?", (record.key_id,))
            for alias in wanted:
                self._insert_alias(conn, record.tenant_id, alias, record.key_id)
            return self._fetch(conn, record.key_id)

        return self._db.write(replace)

    def reserve_key(self, record: KeyRecord, alias: str | None, request_id: str) -> KeyRecord:
        def reserve(conn: sqlite3.Connection) -> KeyRecord:
            row = conn.execute(
                "SELECT tenant_id, key_id FROM reservations WHERE request_id = ?", (request_id,)
            ).fetchone()
            if row is not None:
                if row[0] != record.tenant_id:
                    raise RequestIdTaken(request_id)
                existing = self._fetch(conn, row[1])
                if existing is not None:
                    return existing
                # The reserved key was aborted or deleted since: this request reserves afresh.
                conn.execute("DELETE FROM reservations WHERE request_id = ?", (request_id,))
            created = self._insert(conn, record, alias)
            conn.execute(
                "INSERT INTO reservations (request_id, tenant_id, key_id) VALUES (?, ?, ?)",
                (request_id, record.tenant_id, record.key_id),
            )
            return created

        return self._db.write(reserve)

    def create_alias(self, tenant_id: str, alias: str, key_id: str) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            if self._alias_owner(conn, tenant_id, alias) is not None:
                raise AliasTaken(alias)
            self._insert_alias(conn, tenant_id, alias, key_id)
            self._touch(conn, key_id)

        self._db.write(insert)

    def delete_alias(self, tenant_id: str, alias: str) -> str | None:
        def delete(conn: sqlite3.Connection) -> str | None:
            key_id = self._alias_owner(conn, tenant_id, alias)
            if key_id is None:
                return None
            conn.execute("DELETE FROM aliases WHERE tenant_id = ? AND alias = ?", (tenant_id, alias))
            self._touch(conn, key_id)
            return key_id

        return self._db.write(delete)

    def delete_key(self, key_id: str, expected_revision: int) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("DELETE FROM keys WHERE key_id = ? AND revision = ?", (key_id, expected_revision))
            return cursor.rowcount == 1

        return self._db.write(delete)

    def close(self) -> None:
        self._db.close()
