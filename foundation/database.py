"""Which engine holds a store: `open_database(location, ...)` gives a `SqliteDatabase` for a file
path and a `PostgresDatabase` for a `postgresql://` DSN. Both offer `conn()` for reads, `write(fn)`
for transactions, `schema_version()` and `close()`, and run the same SQL and migrations (see
`foundation.postgres_db` for the subset the stores keep to)."""

from __future__ import annotations

from typing import Sequence, Union

from foundation.postgres_db import PostgresDatabase, is_postgres_dsn
from foundation.sqlite_db import SqliteDatabase

Database = Union[SqliteDatabase, PostgresDatabase]


def open_database(location: str, migrations: Sequence[str], version_table: str, *, what: str = "store") -> Database:
    """The database at `location`: a PostgreSQL DSN, else a SQLite file path."""
    if is_postgres_dsn(location):
        return PostgresDatabase(location, migrations, version_table, what=what)
    return SqliteDatabase(location, migrations, version_table, what=what)
