"""Unique-constraint violations in the node's SQL stores, read the same way on SQLite and PostgreSQL.

The stores check before they insert (an alias, a key id, a serial...), in a write transaction, and
raise their own errors (`AliasTaken`...). On SQLite, one writer at a time, the check is enough. On
PostgreSQL a concurrent transaction may commit the same row between the check and the insert;
PostgreSQL then usually aborts the later one as a serialization failure (run again by
`PostgresDatabase`), but may report the unique violation itself. `run_write` runs such a
transaction again, so that its check sees the committed row and raises the store's error; if the
violation persists, it raises the error mapped to the table.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Callable, Mapping, TypeVar

from psycopg import errors as pg_errors

T = TypeVar("T")

#: A constraint violation, from either engine.
INTEGRITY_ERRORS = (sqlite3.IntegrityError, pg_errors.IntegrityError)
#: How many times a write that hit a unique violation runs in all.
WRITE_ATTEMPTS = 3
_SQLITE_UNIQUE = ("SQLITE_CONSTRAINT_PRIMARYKEY", "SQLITE_CONSTRAINT_UNIQUE")
_SQLITE_TABLE = re.compile(r"constraint failed: (\w+)\.")


def unique_violation_table(exc: BaseException) -> str | None:
    """The table whose primary key or unique constraint `exc` reports, else None."""
    if isinstance(exc, pg_errors.UniqueViolation):
        return exc.diag.table_name
    if isinstance(exc, sqlite3.IntegrityError) and getattr(exc, "sqlite_errorname", "") in _SQLITE_UNIQUE:
        match = _SQLITE_TABLE.search(str(exc))
        return match.group(1) if match else None
    return None


def run_write(db, fn: Callable[..., T], taken: Mapping[str, Callable[[], Exception]]) -> T:
    """`db.write(fn)`, run again after a unique violation; when the violation persists, raise
    `taken[table]()` for the table it is in (or the violation itself for other tables)."""
    for attempt in range(WRITE_ATTEMPTS):
        try:
            return db.write(fn)
        except INTEGRITY_ERRORS as exc:
            table = unique_violation_table(exc)
            if table is None:
                raise
            if attempt + 1 == WRITE_ATTEMPTS:
                if table in taken:
                    raise taken[table]() from None
                raise
    raise AssertionError("unreachable")
