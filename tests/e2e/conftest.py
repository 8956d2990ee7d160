"""End-to-end fixtures: `keyrelay hsm init` and `keyrelay node` as real processes on a SoftHSM
token directory of the test's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from dev_stack_run import DevStackRun, free_port_base
from kms_node import devsetup


class DevPool:
    """A state dir with its own SoftHSM tokens, a node config and helpers to run the node."""

    def __init__(self, root: Path, tokens: list[str]) -> None:
        self.root = root
        self.tokens = tokens
        self.softhsm_conf = devsetup.write_softhsm_conf(root)
        self.env = devsetup.dev_environment(self.softhsm_conf)
        self.port = devsetup.free_port()
        self.db = root / "node.db"
        self.log = root / "node.log"
        self.config = self.write_config(tokens)
        self.processes: list[devsetup.NodeProcess] = []

    def write_config(self, tokens: list[str], name: str = "node.toml") -> Path:
        return devsetup.write_node_config(
            self.root / name, tokens=tokens, listen=f"127.0.0.1:{self.port}", store_path=str(self.db)
        )

    def init(self) -> str:
        return devsetup.hsm_init(self.config, self.env)

    def start(self, config: Path | None = None) -> devsetup.NodeProcess:
        node = devsetup.NodeProcess(config or self.config, self.env, self.log, self.port).start()
        self.processes.append(node)
        return node

    def stop_all(self) -> None:
        for node in self.processes:
            node.kill()


def _require_tools() -> None:
    import os
    import shutil

    try:
        devsetup.softhsm_module()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the e2e tests: {exc}")
        pytest.skip(str(exc))
    if shutil.which("pkcs11-tool") is None:
        message = "pkcs11-tool (opensc) is missing; `make setup` installs it"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the e2e tests: {message}")
        pytest.skip(message)


@pytest.fixture(scope="session")
def e2e_tools():
    """SoftHSM and OpenSC are installed (a failure under CI, a skip saying why elsewhere)."""
    _require_tools()


@pytest.fixture
def dev_pool(tmp_path, e2e_tools):
    """A provisioned two-slot SoftHSM pool with a node config; nodes are killed at the end."""
    pool = DevPool(tmp_path, ["e2e-a", "e2e-b"])
    pool.init()
    yield pool
    pool.stop_all()


@pytest.fixture(scope="session")
def dev_stack(tmp_path_factory, e2e_tools):
    """A dev cluster started with `keyrelay dev up` for the whole session, stopped with `dev down`.

    `.profiles` maps admin / app / messaging to the profile files `dev up` wrote (roles admin,
    crypto-user and messaging-user of tenant `dev`)."""
    run = DevStackRun(tmp_path_factory.mktemp("devstack") / "state", free_port_base())
    with run.running():
        yield run
