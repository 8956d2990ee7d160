"""The node's `[store]` config: SQLite at `store.path` by default, PostgreSQL when `store.dsn` is
set (kms_node/config.py), without ever showing the DSN's password."""

from __future__ import annotations

import pytest

from foundation.config import ConfigError
from kms_node.config import StoreConfig, load_node_config

SECRET = "s3cr3t-pw"


@pytest.fixture
def config_file(tmp_path):
    module = tmp_path / "libfakehsm.so"
    module.write_bytes(b"")

    def write(store: str) -> str:
        path = tmp_path / "node.toml"
        path.write_text(f'[hsm]\nmodule = "{module}"\ntokens = ["kr-a"]\n\n[store]\n{store}\n')
        return str(path)

    return write


def test_sqlite_by_default(config_file, tmp_path):
    """No dsn: the stores open the SQLite file at store.path (resolved next to the config)."""
    config = load_node_config(config_file('path = "data/node.db"'), environ={})
    assert config.store.dsn == ""
    assert config.store.location == str(tmp_path / "data" / "node.db")
    assert config.store.shown == f"SQLite file {tmp_path / 'data' / 'node.db'}"


def test_postgres_dsn_from_file_and_environment(config_file):
    """A postgresql:// DSN is used as written (never resolved as a path); KEYRELAY_NODE_STORE_DSN
    overrides the file's."""
    dsn = "postgresql://keyrelay@db.internal:5432/keyrelay"
    config = load_node_config(config_file(f'dsn = "{dsn}"'), environ={})
    assert config.store.location == dsn
    assert config.store.shown == f"PostgreSQL at {dsn}"
    other = "postgres://kms@10.0.0.9/kms?sslmode=require"
    config = load_node_config(config_file(f'dsn = "{dsn}"'), environ={"KEYRELAY_NODE_STORE_DSN": other})
    assert config.store.location == other
    # An empty value from the environment falls back to SQLite.
    config = load_node_config(config_file(f'dsn = "{dsn}"'), environ={"KEYRELAY_NODE_STORE_DSN": ""})
    assert config.store.location == config.store.path


@pytest.mark.parametrize(
    "dsn",
    [f"mysql://kms:{SECRET}@db/kms", f"host=db user=kms password={SECRET}", f"sqlite:///var/lib/{SECRET}.db"],
)
def test_a_dsn_that_is_not_postgres_is_refused_naming_the_key(config_file, dsn):
    with pytest.raises(ConfigError, match=r"store\.dsn .* is not a PostgreSQL URI: give postgresql://") as caught:
        load_node_config(config_file(f'dsn = "{dsn}"'), environ={})
    if "sqlite" not in dsn:  # (a path is no password: it is shown so it can be fixed)
        assert SECRET not in str(caught.value)


def test_the_password_never_shows(config_file):
    """Neither the config's repr nor its description of the store show the DSN's password."""
    for dsn in (f"postgresql://kms:{SECRET}@db:5432/kms", f"postgresql://kms@db/kms?password={SECRET}"):
        config = load_node_config(config_file(f'dsn = "{dsn}"'), environ={})
        assert config.store.location == dsn
        assert SECRET not in repr(config) and SECRET not in str(config)
        assert SECRET not in repr(config.store) and SECRET not in config.store.shown
        assert "***" in repr(config.store)
    assert repr(StoreConfig()) == "StoreConfig(path='keyrelay-node.db', dsn='')"


def test_a_dsn_makes_the_path_optional(config_file):
    config = load_node_config(config_file('path = ""\ndsn = "postgresql://kms@db/kms"'), environ={})
    assert config.store.location == "postgresql://kms@db/kms"
    with pytest.raises(ConfigError, match=r"store\.path is empty"):
        load_node_config(config_file('path = ""'), environ={})

