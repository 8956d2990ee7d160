"""Shared fixtures: a SoftHSM token directory for the test session, fresh tokens per test, and
in-process nodes served on a loopback port chosen by the OS."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from loop_thread import LoopThread

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="keyrelay-tests-"))


def pytest_configure(config):
    # SoftHSM reads SOFTHSM2_CONF when the library is first loaded in this process: set it before
    # any test can load it, so every in-process token lives in this session's directory.
    from kms_node.devsetup import write_softhsm_conf

    os.environ["SOFTHSM2_CONF"] = str(write_softhsm_conf(_SESSION_DIR / "softhsm"))


def pytest_unconfigure(config):
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


def _require_softhsm() -> str:
    from kms_node.devsetup import softhsm_module

    try:
        return softhsm_module()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the HSM tests: {exc}")
        pytest.skip(f"SoftHSM2 is not installed ({exc}); `make test` installs it")


@pytest.fixture(scope="session")
def softhsm() -> str:
    """The SoftHSM2 module's path (fails under CI, skips elsewhere, when it is not installed)."""
    return _require_softhsm()


@pytest.fixture
def hsm_pool_tokens():
    """Two fresh SoftHSM tokens provisioned with one domain key: (module, labels, pin)."""
    from foundation.config import Secret
    from kms_node.devsetup import DEV_PIN, DEV_SO_PIN
    from kms_node.hsm.provision import provision_pool

    module = _require_softhsm()
    suffix = uuid.uuid4().hex[:8]
    labels = [f"t-{suffix}-a", f"t-{suffix}-b"]
    provision_pool(
        module, labels, so_pin=Secret(DEV_SO_PIN), user_pin=Secret(DEV_PIN), domain_key_label="keyrelay-domain-key"
    )
    return module, labels, Secret(DEV_PIN)


class ServedNode(LoopThread):
    """An in-process NodeServer running on its own event loop thread."""

    def __init__(self, config, pin) -> None:
        from kms_node.server import NodeServer

        super().__init__()

        async def start():
            self.node = NodeServer(config, pin=pin)
            return await self.node.start()

        self.port = self.call(start())
        self.target = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        super().stop(self.node)


@pytest.fixture
def node_config(tmp_path, hsm_pool_tokens):
    """A node config on the test's fresh two-slot pool, listening on an OS-chosen port."""
    from kms_node.config import HsmConfig, NodeConfig, StoreConfig

    module, labels, _ = hsm_pool_tokens
    return NodeConfig(
        listen="127.0.0.1:0",
        shutdown_grace_seconds=1,
        hsm=HsmConfig(module=module, tokens=tuple(labels), slot_retry_seconds=0.5, sessions_per_slot=2),
        store=StoreConfig(path=str(tmp_path / "node.db")),
    )


@pytest.fixture
def serve_node():
    """Start more in-process nodes with configs of a test's own: serve_node(config, pin)."""
    started: list[ServedNode] = []

    def start(config, pin) -> ServedNode:
        started.append(ServedNode(config, pin))
        return started[-1]

    yield start
    for served in started:
        served.stop()


@pytest.fixture
def served_node(node_config, hsm_pool_tokens):
    """A running in-process node and its config."""
    served = ServedNode(node_config, hsm_pool_tokens[2])
    yield served
    served.stop()


@pytest.fixture
def kms(served_node):
    """A KmsClient of the running node, acting as tenant `acme`."""
    from client_sdk import KmsClient

    with KmsClient(served_node.target, tenant="acme", timeout=30) as client:
        yield client



# -- PostgreSQL ---------------------------------------------------------------------------------

#: The server the PostgreSQL tests use (a database they may create schemas in); override with
#: KEYRELAY_TEST_POSTGRES.
TEST_POSTGRES = os.environ.get("KEYRELAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _postgres_admin_connection():
    import psycopg

    try:
        return psycopg.connect(TEST_POSTGRES, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL at {TEST_POSTGRES} is unreachable ({str(exc).strip().splitlines()[0]})"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {message}")
        pytest.skip(f"{message}; set KEYRELAY_TEST_POSTGRES to a database the tests may use")


def schema_dsn(schema: str) -> str:
    """The test server's DSN with `schema` as the search path."""
    separator = "&" if "?" in TEST_POSTGRES else "?"
    return f"{TEST_POSTGRES}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture(scope="session")
def postgres_admin():
    """Opens an autocommit connection to the test server (fails under CI, skips elsewhere, when
    it is unreachable); `postgres_admin.url` is the server's DSN."""

    def connect():
        return _postgres_admin_connection()

    connect.url = TEST_POSTGRES
    with connect():  # reachable, or the test is failed or skipped here
        pass
    return connect


@pytest.fixture
def postgres_dsn():
    """A DSN whose search path is a fresh schema of its own, dropped after the test."""
    schema = f"kr_test_{uuid.uuid4().hex[:12]}"
    with _postgres_admin_connection() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema_dsn(schema)
    finally:
        with _postgres_admin_connection() as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def database_location(request, tmp_path):
    """Where a store under test keeps its data: a SQLite file, then a PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    return request.getfixturevalue("postgres_dsn")
