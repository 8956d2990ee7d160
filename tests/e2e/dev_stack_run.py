"""`keyrelay dev` driven as a user drives it, for the end-to-end tests (and their fixtures)."""

from __future__ import annotations

import os
import random
from contextlib import contextmanager
import signal
import subprocess
from pathlib import Path

import pytest

from devstack.processes import port_in_use
from devstack.stack import PROFILES, DevStack
from kms_node import devsetup


def free_port_base(span: int = 15) -> int:
    """A base N such that ports N to N+span-1 on 127.0.0.1 are free right now (for `dev up --port-base`)."""
    for _ in range(200):
        base = random.randrange(20000, 40000 - span)
        if not any(port_in_use("127.0.0.1", base + offset) for offset in range(span)):
            return base
    raise RuntimeError("found no run of free ports for a dev cluster")


class DevStackRun:
    """`keyrelay dev up|status|down` run as commands on a state directory of the test's own."""

    def __init__(self, state_dir: Path, port_base: int) -> None:
        self.state_dir = state_dir
        self.port_base = port_base
        self.profiles = {spec.name: state_dir / spec.file for spec in PROFILES}

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*devsetup.keyrelay_command(), "dev", *args, "--state-dir", str(self.state_dir)],
            capture_output=True, text=True, timeout=timeout,
        )

    def up(self) -> subprocess.CompletedProcess[str]:
        return self.run("up", "--port-base", str(self.port_base))

    def stack(self):
        return DevStack(self.state_dir)

    def kill_all(self) -> None:
        """Clean-up: SIGKILL whatever the state file says still runs."""
        if not self.stack().exists():
            return
        for daemon in self.stack().load_state()["daemons"].values():
            if daemon.running():
                os.kill(daemon.pid, signal.SIGKILL)

    @contextmanager
    def running(self, *options: str):
        """`dev up` with these options (a test failure if it fails); `dev down` on leaving."""
        done = self.run("up", "--port-base", str(self.port_base), *options)
        if done.returncode != 0:
            self.kill_all()
            pytest.fail(f"keyrelay dev up {' '.join(options)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        try:
            yield self
        finally:
            self.run("down")
            self.kill_all()
