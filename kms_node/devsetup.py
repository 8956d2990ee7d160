"""Development set-up of a node on SoftHSM: token directory, config, a node process.

Used by `make demo`, the benchmarks and the end-to-end tests, so that all of them start a node the
way a user does: `keyrelay hsm init` and `keyrelay node` as real processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SOFTHSM_MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
# Development PINs only: distinctive, so tests can prove they never reach a log or a store.
DEV_PIN = "dev-user-pin-5170"
DEV_SO_PIN = "dev-so-pin-9342"


def softhsm_module() -> str:
    """The SoftHSM2 PKCS#11 module on this machine; raises naming the fix if absent."""
    for path in SOFTHSM_MODULE_CANDIDATES:
        if os.path.exists(path):
            return path
    raise FileNotFoundError("SoftHSM2 is not installed: run `sudo apt-get install softhsm2` (or `make setup`)")


def write_softhsm_conf(state_dir: Path) -> Path:
    """A SoftHSM config whose tokens live in `state_dir/tokens`; returns its path."""
    tokens = state_dir / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = state_dir / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
    )
    return conf


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_node_config(
    path: Path,
    *,
    tokens: list[str],
    listen: str,
    store_path: str,
    store_dsn: str = "",
    mode: str = "shared",
    instance_id: str = "",
    module: str | None = None,
    extra: str = "",
) -> Path:
    """Write a node TOML config for a dev pool (PINs come from KEYRELAY_HSM_PIN / _SO_PIN); the
    store is SQLite at `store_path` unless `store_dsn` names a PostgreSQL database."""
    token_list = ", ".join(f'"{t}"' for t in tokens)
    instance = f'instance_id = "{instance_id}"\n' if instance_id else ""
    path.write_text(
        f'mode = "{mode}"\n{instance}listen = "{listen}"\nshutdown_grace_seconds = 5\n{extra}\n'
        f'[hsm]\nmodule = "{module or softhsm_module()}"\ntokens = [{token_list}]\n'
        'pin_env = "KEYRELAY_HSM_PIN"\nso_pin_env = "KEYRELAY_HSM_SO_PIN"\nslot_retry_seconds = 1\n\n'
        f'[store]\npath = "{store_path}"\n' + (f'dsn = "{store_dsn}"\n' if store_dsn else "")
    )
    return path


def dev_environment(softhsm_conf: Path) -> dict[str, str]:
    """The environment a dev node and `hsm init` run with."""
    env = dict(os.environ)
    env.update(SOFTHSM2_CONF=str(softhsm_conf), KEYRELAY_HSM_PIN=DEV_PIN, KEYRELAY_HSM_SO_PIN=DEV_SO_PIN)
    return env


def keyrelay_command() -> list[str]:
    """How to run the `keyrelay` command of this installation."""
    script = shutil.which("keyrelay", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "client_sdk.cli"]


def hsm_init(config: Path, env: dict[str, str]) -> str:
    """Run `keyrelay hsm init`; returns its output, raises CalledProcessError with it on failure."""
    done = subprocess.run(
        [*keyrelay_command(), "hsm", "init", "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=60,
    )
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    return done.stdout


def wait_until_serving(
    target: str,
    timeout: float = 30.0,
    proc: subprocess.Popen | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    """Poll grpc.health.v1 at `target` until SERVING; raise TimeoutError (or if `proc` exits)."""
    deadline = time.monotonic() + timeout
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the process serving {target} exited with status {proc.returncode}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{target} did not report SERVING within {timeout:g}s")


class NodeProcess:
    """A `keyrelay` daemon (`node` unless `command` says otherwise) as a child process, logging to a file."""

    def __init__(
        self,
        config: Path,
        env: dict[str, str],
        log_path: Path,
        port: int,
        *,
        command: str = "node",
        health_credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.config = config
        self.env = env
        self.log_path = log_path
        self.port = port
        self.target = f"127.0.0.1:{port}"
        self.command = command
        self.health_credentials = health_credentials
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0, *, wait: bool = True) -> "NodeProcess":
        """Start the daemon and (unless `wait` is false) wait until it reports SERVING."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*keyrelay_command(), self.command, "--config", str(self.config)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        if wait:
            self.wait_until_serving(timeout)
        return self

    def wait_until_serving(self, timeout: float = 60.0) -> None:
        """Wait until the daemon reports SERVING (TimeoutError, or RuntimeError if it exits)."""
        wait_until_serving(self.target, timeout, self.proc, self.health_credentials)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait, and return the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL if still running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
