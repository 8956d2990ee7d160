"""What is particular to the node's stores on SQLite (kms_node/store/sql.py and admin_sql.py with a
file path). Their behaviour on both engines is tested in tests/integration/test_node_key_store.py
and test_node_admin_store.py."""

from __future__ import annotations

import sqlite3

import pytest

from kms_node.store.admin_sql import SqlAdminStore
from kms_node.store.sql import SqlKeyStore


@pytest.fixture
def db_path(tmp_path) -> str:
    return str(tmp_path / "nested" / "store.db")


def test_a_path_opens_sqlite_in_wal_mode_creating_its_folder(db_path):
    """A plain path is a SQLite file (its parent folder is created), in WAL mode so that readers
    do not block the writer."""
    store = SqlKeyStore(db_path)
    try:
        assert store.location == db_path
        with sqlite3.connect(db_path) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert raw.execute("SELECT version FROM schema_version").fetchall() == [(3,)]
    finally:
        store.close()


def test_memory_store_is_refused():
    """Worker threads each open a connection; an in-memory database would differ per thread."""
    with pytest.raises(ValueError, match="file path"):
        SqlKeyStore(":memory:")
    with pytest.raises(ValueError, match="file path"):
        SqlAdminStore(":memory:")


def test_key_and_admin_store_share_one_file(db_path):
    """The shared node keeps both in one file, each with its own schema-version table."""
    keys, admin = SqlKeyStore(db_path), SqlAdminStore(db_path)
    try:
        with sqlite3.connect(db_path) as raw:
            tables = {name for (name,) in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"keys", "schema_version", "admin_schema_version", "instances", "credentials"} <= tables
    finally:
        admin.close()
        keys.close()
