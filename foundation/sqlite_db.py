"""What every SQLite store shares (the node's key store and control plane, the relay's store): one
connection per thread, WAL mode, write transactions, and a schema migrated at start-up from a tuple
of scripts.

Several stores may share one file, each with its own schema-version table and migrations (the
shared node keeps its keys and its control plane in one file).
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from foundation.migrations import apply_migrations

T = TypeVar("T")
_WAL_ATTEMPTS = 100


class SqliteDatabase:
    """One SQLite file as used by a store: `conn()` for reads, `write(fn)` for transactions.

    `migrations[i]` migrates the schema from version i to i + 1 (append, never edit);
    `version_table` records the version this store's schema is at.
    """

    def __init__(self, path: str, migrations: Sequence[str], version_table: str, *, what: str = "store") -> None:
        if not path or path == ":memory:" or path.startswith("file:"):
            # Every worker thread opens its own connection, which must all reach one database.
            raise ValueError(f"the {what} needs a file path (got {path!r})")
        if not version_table.isidentifier():
            raise ValueError(f"version_table {version_table!r} is not an SQL identifier")
        self.path = path
        self._migrations = tuple(migrations)
        self._version_table = version_table
        self._what = what
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # Writers of this process queue here: SQLite's own busy handler would make a second writer
        # sleep in growing steps (up to 100 ms) instead of waking when the first one commits.
        self._write_lock = threading.Lock()
        self._closed = False
        self._migrate()

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use). Fails once the database is closed."""
        if self._closed:
            raise sqlite3.ProgrammingError(f"the {self._what} {self.path} is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._enter_wal(conn)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @staticmethod
    def _enter_wal(conn: sqlite3.Connection) -> None:
        """Switch the file to WAL mode (a no-op once it is). The switch wants an exclusive lock,
        and SQLite answers "database is locked" at once, without waiting, when that could
        deadlock with another connection's transaction (replicas opening a new file together):
        so try again for a few seconds."""
        for attempt in range(_WAL_ATTEMPTS):
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt + 1 == _WAL_ATTEMPTS:
                    raise
                time.sleep(0.05 + 0.05 * random.random())

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` in one BEGIN IMMEDIATE transaction: committed if it returns, rolled back
        if it raises."""
        conn = self.conn()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    def _migrate(self) -> None:
        table = self._version_table

        def migrate(conn: sqlite3.Connection) -> None:
            apply_migrations(conn, table, self._migrations, f"{self._what} {self.path}")

        self.write(migrate)

    def schema_version(self) -> int:
        """The schema version of this store in the file."""
        return self.conn().execute(f"SELECT version FROM {self._version_table}").fetchone()[0]

    def close(self) -> None:
        """Close every thread's connection; later calls fail instead of reopening the file."""
        with self._lock:
            self._closed = True
            for conn in self._all:
                conn.close()
            self._all.clear()
