"""The embedded key store: one SQLite file in WAL mode, schema versioned and migrated at start-up."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

from kms_node.store.base import AliasTaken, KeyIdTaken, KeyRecord, RevisionConflict, VersionRecord

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
)


class SqliteKeyStore:
    """A `KeyStore` in one SQLite file. One connection per thread; writes are transactions."""

    def __init__(self, path: str) -> None:
        if not path or path == ":memory:" or path.startswith("file:"):
            # Every worker thread opens its own connection, which must all reach one database.
            raise ValueError(f"the key store needs a file path (got {path!r})")
        self.path = path
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._migrate()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _migrate(self) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            current = row[0] if row else 0
            if current > len(MIGRATIONS):
                raise RuntimeError(
                    f"key store {self.path} has schema version {current}, newer than this keyrelay "
                    f"({len(MIGRATIONS)}); upgrade keyrelay"
                )
            for script in MIGRATIONS[current:]:
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (len(MIGRATIONS),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def schema_version(self) -> int:
        """The schema version of the file."""
        return self._conn().execute("SELECT version FROM schema_version").fetchone()[0]

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
            aliases=aliases,
            versions=versions,
        )

    _COLUMNS = (
        "key_id, tenant_id, description, tags, state, instance_id, key_spec, primary_version, "
        "min_decryption_version, create_time, deletion_time, revision"
    )

    def get_key(self, key_id: str) -> KeyRecord | None:
        conn = self._conn()
        row = conn.execute(f"SELECT {self._COLUMNS} FROM keys WHERE key_id = ?", (key_id,)).fetchone()
        return self._record(conn, row) if row else None

    def resolve_alias(self, tenant_id: str, alias: str) -> str | None:
        row = self._conn().execute(
            "SELECT key_id FROM aliases WHERE tenant_id = ? AND alias = ?", (tenant_id, alias)
        ).fetchone()
        return row[0] if row else None

    def list_keys(self, tenant_id: str, after: tuple[float, str] | None, limit: int) -> list[KeyRecord]:
        conn = self._conn()
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
            for (key_id,) in self._conn().execute(
                "SELECT key_id FROM keys WHERE state = 'PENDING_DELETION' AND deletion_time <= ?", (now,)
            )
        ]

    # -- writes ---------------------------------------------------------------------------

    def _write(self, fn):
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def create_key(self, record: KeyRecord, alias: str | None) -> KeyRecord:
        def insert(conn: sqlite3.Connection) -> KeyRecord:
            if alias and self._alias_exists(conn, record.tenant_id, alias):
                raise AliasTaken(alias)
            if conn.execute("SELECT 1 FROM keys WHERE key_id = ?", (record.key_id,)).fetchone():
                raise KeyIdTaken(record.key_id)
            conn.execute(
                f"INSERT INTO keys ({self._COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.key_id, record.tenant_id, record.description, json.dumps(record.tags, sort_keys=True),
                    record.state, record.instance_id, record.key_spec, record.primary_version,
                    record.min_decryption_version, record.create_time, record.deletion_time, record.revision,
                ),
            )
            for version in record.versions:
                self._insert_version(conn, record.key_id, version)
            if alias:
                conn.execute(
                    "INSERT INTO aliases (tenant_id, alias, key_id) VALUES (?, ?, ?)",
                    (record.tenant_id, alias, record.key_id),
                )
            return record.evolve(aliases=(alias,) if alias else ())

        return self._write(insert)

    @staticmethod
    def _alias_exists(conn: sqlite3.Connection, tenant_id: str, alias: str) -> bool:
        return (
            conn.execute("SELECT 1 FROM aliases WHERE tenant_id = ? AND alias = ?", (tenant_id, alias)).fetchone()
            is not None
        )

    @staticmethod
    def _insert_version(conn: sqlite3.Connection, key_id: str, version: VersionRecord) -> None:
        conn.execute(
            "INSERT INTO key_versions (key_id, version, create_time, wrapped_key) VALUES (?, ?, ?, ?)",
            (key_id, version.version, version.create_time, version.wrapped),
        )

    def update_key(self, record: KeyRecord, new_version: VersionRecord | None = None) -> KeyRecord:
        def update(conn: sqlite3.Connection) -> KeyRecord:
            cursor = conn.execute(
                "UPDATE keys SET description = ?, tags = ?, state = ?, primary_version = ?, "
                "min_decryption_version = ?, deletion_time = ?, revision = revision + 1 "
                "WHERE key_id = ? AND revision = ?",
                (
                    record.description, json.dumps(record.tags, sort_keys=True), record.state,
                    record.primary_version, record.min_decryption_version, record.deletion_time,
                    record.key_id, record.revision,
                ),
            )
            if cursor.rowcount != 1:
                raise RevisionConflict(record.key_id)
            if new_version is not None:
                self._insert_version(conn, record.key_id, new_version)
            return self._record(conn, conn.execute(
                f"SELECT {self._COLUMNS} FROM keys WHERE key_id = ?", (record.key_id,)
            ).fetchone())

        return self._write(update)

    def create_alias(self, tenant_id: str, alias: str, key_id: str) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            if self._alias_exists(conn, tenant_id, alias):
                raise AliasTaken(alias)
            conn.execute("INSERT INTO aliases (tenant_id, alias, key_id) VALUES (?, ?, ?)", (tenant_id, alias, key_id))
            conn.execute("UPDATE keys SET revision = revision + 1 WHERE key_id = ?", (key_id,))

        self._write(insert)

    def delete_alias(self, tenant_id: str, alias: str) -> str | None:
        def delete(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT key_id FROM aliases WHERE tenant_id = ? AND alias = ?", (tenant_id, alias)
            ).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM aliases WHERE tenant_id = ? AND alias = ?", (tenant_id, alias))
            conn.execute("UPDATE keys SET revision = revision + 1 WHERE key_id = ?", (row[0],))
            return row[0]

        return self._write(delete)

    def delete_key(self, key_id: str, expected_revision: int) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("DELETE FROM keys WHERE key_id = ? AND revision = ?", (key_id, expected_revision))
            return cursor.rowcount == 1

        return self._write(delete)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
