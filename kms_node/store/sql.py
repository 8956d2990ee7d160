"""The node's key store in SQL: SQLite (one file in WAL mode, the embedded default) or PostgreSQL
(replicas sharing one database), chosen by the location given (a path or a `postgresql://` DSN).
One implementation for both, in the SQL subset both engines accept; the schema is versioned and
migrated at start-up (see `foundation.database`).

Writes are transactions that read, decide and write: SQLite runs one writer at a time and
PostgreSQL runs them SERIALIZABLE, so a check-then-insert (an alias, a key id, a reservation) is
safe on both. A reader outside a transaction sees each statement at its own moment, so a key and
its versions and aliases are read with a check that the key's revision (bumped by every change to
them) did not move meanwhile.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Callable, Iterable, Sequence

from foundation.database import open_database
from kms_node.store.base import (
    AliasTaken,
    KeyIdTaken,
    KeyRecord,
    RequestIdTaken,
    Reservation,
    RevisionConflict,
    VersionRecord,
)
from kms_node.store.sql_errors import run_write

# Each entry migrates the schema from version i to i + 1; append, never edit. Written for SQLite;
# `foundation.postgres_db` maps the type names for PostgreSQL.
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
    # 3: reservations are per tenant (no tenant learns of another's request ids) and remember the
    # instance and alias they were made for, so a request id cannot reserve for two of them.
    """
    CREATE TABLE tenant_reservations (
        tenant_id TEXT NOT NULL,
        request_id TEXT NOT NULL,
        key_id TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        alias TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (tenant_id, request_id)
    );
    INSERT INTO tenant_reservations (tenant_id, request_id, key_id, instance_id, alias)
        SELECT r.tenant_id, r.request_id, r.key_id, COALESCE(k.instance_id, ''),
               COALESCE((SELECT MIN(a.alias) FROM aliases a WHERE a.key_id = r.key_id), '')
        FROM reservations r LEFT JOIN keys k ON k.key_id = r.key_id;
    DROP TABLE reservations;
    """,
)

#: How often a read outside a transaction is tried again when a key changed while it was read,
#: before it reads in a transaction instead.
_READ_ATTEMPTS = 8

_COLUMNS = (
    "key_id, tenant_id, description, tags, state, instance_id, key_spec, primary_version, "
    "min_decryption_version, create_time, deletion_time, revision, update_time"
)
_REVISION = 11  # the index of `revision` in _COLUMNS


def _marks(count: int) -> str:
    return ", ".join("?" * count)


class SqlKeyStore:
    """A `KeyStore` in SQLite (a file path) or PostgreSQL (a `postgresql://` DSN).

    Several stores, in one process or in several replicas, may open the same location; a shared
    node keeps its control plane (`SqlAdminStore`) there too. `clock` stamps `update_time` on
    every change (a new key's is its `create_time`).
    """

    def __init__(self, location: str, *, clock: Callable[[], float] = time.time) -> None:
        self._db = open_database(location, MIGRATIONS, "schema_version", what="key store")
        #: Where the store is, fit for messages (a DSN's password is masked).
        self.location = self._db.path
        self._clock = clock

    def schema_version(self) -> int:
        """The schema version of the database."""
        return self._db.schema_version()

    # -- reads ----------------------------------------------------------------------------

    @staticmethod
    def _load(conn, rows: Sequence[tuple]) -> list[KeyRecord]:
        """Records of `rows` (columns `_COLUMNS`) with their versions and aliases."""
        if not rows:
            return []
        ids = [row[0] for row in rows]
        versions: dict[str, list[VersionRecord]] = defaultdict(list)
        for key_id, number, created, wrapped in conn.execute(
            f"SELECT key_id, version, create_time, wrapped_key FROM key_versions WHERE key_id IN ({_marks(len(ids))}) "
            "ORDER BY key_id, version",
            ids,
        ):
            versions[key_id].append(VersionRecord(number, created, bytes(wrapped)))
        aliases: dict[str, list[str]] = defaultdict(list)
        for key_id, alias in conn.execute(
            f"SELECT key_id, alias FROM aliases WHERE key_id IN ({_marks(len(ids))}) ORDER BY key_id, alias", ids
        ):
            aliases[key_id].append(alias)
        return [
            KeyRecord(
                key_id=row[0],
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
                aliases=tuple(aliases[row[0]]),
                versions=tuple(versions[row[0]]),
            )
            for row in rows
        ]

    def _fetch(self, conn, key_id: str) -> KeyRecord | None:
        """A key as a write transaction sees it."""
        row = conn.execute(f"SELECT {_COLUMNS} FROM keys WHERE key_id = ?", (key_id,)).fetchone()
        return self._load(conn, [row])[0] if row else None

    def _read(self, select: Callable[[object], list[tuple]]) -> list[KeyRecord]:
        """Records of the key rows `select(conn)` returns, each consistent with its versions and
        aliases: read outside a transaction and checked against the revisions, or else read in one."""
        conn = self._db.conn()
        for _ in range(_READ_ATTEMPTS):
            rows = select(conn)
            records = self._load(conn, rows)
            if not rows:
                return records
            ids = [row[0] for row in rows]
            now = dict(
                conn.execute(f"SELECT key_id, revision FROM keys WHERE key_id IN ({_marks(len(ids))})", ids).fetchall()
            )
            if all(now.get(row[0]) == row[_REVISION] for row in rows):
                return records
        return self._db.write(lambda tx: self._load(tx, select(tx)))

    def get_key(self, key_id: str) -> KeyRecord | None:
        found = self._read(lambda conn: conn.execute(f"SELECT {_COLUMNS} FROM keys WHERE key_id = ?", (key_id,)).fetchall())
        return found[0] if found else None

    def resolve_alias(self, tenant_id: str, alias: str) -> str | None:
        return self._alias_owner(self._db.conn(), tenant_id, alias)

    def list_keys(self, tenant_id: str, after: tuple[float, str] | None, limit: int) -> list[KeyRecord]:
        after_time, after_id = after if after is not None else (float("-inf"), "")
        return self._read(
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM keys WHERE tenant_id = ? AND state <> 'CREATING' "
                "AND (create_time, key_id) > (?, ?) ORDER BY create_time, key_id LIMIT ?",
                (tenant_id, after_time, after_id, limit),
            ).fetchall()
        )

    def keys_due_for_deletion(self, now: float) -> list[str]:
        return [
            key_id
            for (key_id,) in self._db.conn().execute(
                "SELECT key_id FROM keys WHERE state = 'PENDING_DELETION' AND deletion_time <= ? ORDER BY key_id",
                (now,),
            )
        ]

    def find_reservation(self, tenant_id: str, request_id: str) -> Reservation | None:
        row = self._db.conn().execute(
            "SELECT key_id, instance_id, alias FROM tenant_reservations WHERE tenant_id = ? AND request_id = ?",
            (tenant_id, request_id),
        ).fetchone()
        return Reservation(request_id, tenant_id, row[0], row[1], row[2]) if row else None

    # -- writes ---------------------------------------------------------------------------

    def _write(self, fn, **taken: Callable[[], Exception]):
        """`fn` in a write transaction; `taken` maps a table to the error its unique constraint
        means (see `run_write`)."""
        return run_write(self._db, fn, taken)

    def _insert(self, conn, record: KeyRecord, alias: str | None) -> KeyRecord:
        if alias and self._alias_owner(conn, record.tenant_id, alias) is not None:
            raise AliasTaken(alias)
        if conn.execute("SELECT 1 FROM keys WHERE key_id = ?", (record.key_id,)).fetchone():
            raise KeyIdTaken(record.key_id)
        record = record.evolve(update_time=record.update_time or record.create_time, aliases=(alias,) if alias else ())
        conn.execute(
            f"INSERT INTO keys ({_COLUMNS}) VALUES ({_marks(13)})",
            (
                record.key_id, record.tenant_id, record.description, json.dumps(record.tags, sort_keys=True),
                record.state, record.instance_id, record.key_spec, record.primary_version,
                record.min_decryption_version, record.create_time, record.deletion_time, record.revision,
                record.update_time,
            ),
        )
        self._insert_versions(conn, record.key_id, record.versions)
        if alias:
            self._insert_alias(conn, record.tenant_id, alias, record.key_id)
        return record

    def create_key(self, record: KeyRecord, alias: str | None) -> KeyRecord:
        return self._write(
            lambda conn: self._insert(conn, record, alias),
            aliases=lambda: AliasTaken(alias),
            keys=lambda: KeyIdTaken(record.key_id),
        )

    @staticmethod
    def _alias_owner(conn, tenant_id: str, alias: str) -> str | None:
        row = conn.execute("SELECT key_id FROM aliases WHERE tenant_id = ? AND alias = ?", (tenant_id, alias)).fetchone()
        return row[0] if row else None

    @staticmethod
    def _insert_alias(conn, tenant_id: str, alias: str, key_id: str) -> None:
        conn.execute("INSERT INTO aliases (tenant_id, alias, key_id) VALUES (?, ?, ?)", (tenant_id, alias, key_id))

    @staticmethod
    def _insert_versions(conn, key_id: str, versions: Iterable[VersionRecord]) -> None:
        for version in versions:
            conn.execute(
                "INSERT INTO key_versions (key_id, version, create_time, wrapped_key) VALUES (?, ?, ?, ?)",
                (key_id, version.version, version.create_time, bytes(version.wrapped)),
            )

    def _touch(self, conn, key_id: str) -> None:
        conn.execute(
            "UPDATE keys SET revision = revision + 1, update_time = ? WHERE key_id = ?", (self._clock(), key_id)
        )

    def _save(self, conn, record: KeyRecord) -> None:
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
        def update(conn) -> KeyRecord:
            self._save(conn, record)
            if new_version is not None:
                self._insert_versions(conn, record.key_id, [new_version])
            return self._fetch(conn, record.key_id)

        return self._write(update)

    def replace_aliases(self, record: KeyRecord, aliases: Sequence[str]) -> KeyRecord:
        wanted = list(dict.fromkeys(aliases))

        def replace(conn) -> KeyRecord:
            self._save(conn, record)
            for alias in wanted:
                if self._alias_owner(conn, record.tenant_id, alias) not in (None, record.key_id):
                    raise AliasTaken(alias)
            conn.execute("DELETE FROM aliases WHERE key_id = ?", (record.key_id,))
            for alias in wanted:
                self._insert_alias(conn, record.tenant_id, alias, record.key_id)
            return self._fetch(conn, record.key_id)

        return self._write(replace, aliases=lambda: AliasTaken(", ".join(wanted)))

    def reserve_key(self, record: KeyRecord, alias: str | None, request_id: str) -> KeyRecord:
        tenant = record.tenant_id

        def reserve(conn) -> KeyRecord:
            row = conn.execute(
                "SELECT key_id, instance_id, alias FROM tenant_reservations WHERE tenant_id = ? AND request_id = ?",
                (tenant, request_id),
            ).fetchone()
            if row is not None:
                existing = self._fetch(conn, row[0])
                if existing is not None:
                    if (row[1], row[2]) != (record.instance_id, alias or ""):
                        raise RequestIdTaken(Reservation(request_id, tenant, row[0], row[1], row[2]))
                    return existing
                # The reserved key was aborted or deleted since: this request reserves afresh.
                conn.execute(
                    "DELETE FROM tenant_reservations WHERE tenant_id = ? AND request_id = ?", (tenant, request_id)
                )
            created = self._insert(conn, record, alias)
            conn.execute(
                "INSERT INTO tenant_reservations (tenant_id, request_id, key_id, instance_id, alias) "
                "VALUES (?, ?, ?, ?, ?)",
                (tenant, request_id, record.key_id, record.instance_id, alias or ""),
            )
            return created

        # No error for `reservations`: a concurrent reservation of the request id is found when
        # the transaction runs again.
        return self._write(reserve, aliases=lambda: AliasTaken(alias), keys=lambda: KeyIdTaken(record.key_id))

    def create_alias(self, tenant_id: str, alias: str, key_id: str) -> None:
        def insert(conn) -> None:
            if self._alias_owner(conn, tenant_id, alias) is not None:
                raise AliasTaken(alias)
            self._insert_alias(conn, tenant_id, alias, key_id)
            self._touch(conn, key_id)

        self._write(insert, aliases=lambda: AliasTaken(alias))

    def delete_alias(self, tenant_id: str, alias: str) -> str | None:
        def delete(conn) -> str | None:
            key_id = self._alias_owner(conn, tenant_id, alias)
            if key_id is None:
                return None
            conn.execute("DELETE FROM aliases WHERE tenant_id = ? AND alias = ?", (tenant_id, alias))
            self._touch(conn, key_id)
            return key_id

        return self._write(delete)

    def delete_key(self, key_id: str, expected_revision: int) -> bool:
        def delete(conn) -> bool:
            cursor = conn.execute("DELETE FROM keys WHERE key_id = ? AND revision = ?", (key_id, expected_revision))
            return cursor.rowcount == 1

        return self._write(delete)

    def close(self) -> None:
        self._db.close()
