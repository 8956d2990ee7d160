"""Helpers of the node store tests, which run on SQLite and on PostgreSQL (`database_location`):
raw SQL behind the store's back, records to store, and a settable clock."""

from __future__ import annotations

import sqlite3
import uuid
from contextlib import closing

from foundation.postgres_db import is_postgres_dsn
from kms_node.store.base import KeyRecord, KeyState, VersionRecord


def engine(location: str) -> str:
    """`postgres` or `sqlite`."""
    return "postgres" if is_postgres_dsn(location) else "sqlite"


def raw_sql(location: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Run one statement on its own connection (committed at once); its rows, if any."""
    if is_postgres_dsn(location):
        import psycopg

        with psycopg.connect(location, autocommit=True) as conn:
            cursor = conn.execute(sql.replace("?", "%s"), params)
            return cursor.fetchall() if cursor.description is not None else []
    with closing(sqlite3.connect(location)) as conn, conn:
        return conn.execute(sql, params).fetchall()


def table_names(location: str) -> set[str]:
    """The tables of the database (of the DSN's schema on PostgreSQL)."""
    if is_postgres_dsn(location):
        return {name for (name,) in raw_sql(location, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
    return {name for (name,) in raw_sql(location, "SELECT name FROM sqlite_master WHERE type = 'table'")}


def column_names(location: str, table: str) -> set[str]:
    if is_postgres_dsn(location):
        return {
            name
            for (name,) in raw_sql(
                location,
                "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ?",
                (table,),
            )
        }
    return {row[1] for row in raw_sql(location, f"PRAGMA table_info({table})")}


def record(tenant: str = "acme", create_time: float = 1000.0, key_id: str | None = None, **changes) -> KeyRecord:
    """A shared key's record with one version."""
    fields = dict(
        key_id=key_id or str(uuid.uuid4()),
        tenant_id=tenant,
        description="a key",
        tags={"team": "payments", "env": "prod"},
        state=KeyState.ENABLED,
        instance_id="",
        key_spec="AES_256",
        primary_version=1,
        min_decryption_version=1,
        create_time=create_time,
        versions=(VersionRecord(1, create_time, b"\x01wrapped-v1"),),
    )
    fields.update(changes)
    return KeyRecord(**fields)


def registry_record(tenant: str = "acme", instance: str = "ded-1", **changes) -> KeyRecord:
    """A registry record of a dedicated key, as reserved (no versions)."""
    return record(
        tenant=tenant, instance_id=instance, state=KeyState.CREATING, primary_version=0, min_decryption_version=0,
        versions=(), description="", tags={}, **changes,
    )


class StepClock:
    """A clock that advances `step` seconds each time it is read (the first reading is now + step)."""

    def __init__(self, now: float, step: float = 1.0) -> None:
        self.now = now
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now
