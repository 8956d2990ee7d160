"""Versioned schema migrations, the same for every store and both engines: `migrations[i]` takes
a store's schema from version i to i + 1 (append, never edit); a table of the store's own records
the version it is at."""

from __future__ import annotations

from typing import Any, Sequence


def apply_migrations(conn: Any, version_table: str, migrations: Sequence[str], what: str) -> None:
    """Bring the schema up to `len(migrations)` inside the caller's write transaction on `conn`
    (anything with `execute(sql, params)` and `?` placeholders). Raises RuntimeError if the schema is
    newer than this code (`what` names the store and where it is)."""
    latest = len(migrations)
    conn.execute(f"CREATE TABLE IF NOT EXISTS {version_table} (version INTEGER NOT NULL)")
    row = conn.execute(f"SELECT version FROM {version_table}").fetchone()
    current = row[0] if row else 0
    if current > latest:
        raise RuntimeError(f"{what} has schema version {current}, newer than this keyrelay ({latest}); upgrade keyrelay")
    for script in migrations[current:]:
        for statement in filter(str.strip, script.split(";")):
            conn.execute(statement)
    conn.execute(f"DELETE FROM {version_table}")
    conn.execute(f"INSERT INTO {version_table} (version) VALUES (?)", (latest,))
