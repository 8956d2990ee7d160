"""The development cluster behind `keyrelay dev up|status|down`, kept in one state directory.

`DevStack(state_dir).up()` prepares the directory on first use (PKI, SoftHSM tokens and domain
keys, configs: `kms_gateway.devcluster.DevCluster` plus a relay), starts whatever is not running
(two shared nodes, the dedicated node of instance `dev-dedicated`, the gateway, the relay) as
background processes, waits for each to be healthy, and on first start provisions tenant `dev`
(the instance, three access points with a credential each, a sealing key) and writes its profiles.
`status()` and `down()` work from the state file alone, from any process.

Everything lives in the state directory: `dev-state.json` (layout and pids), configs, `pki/`,
`tokens/`, the SQLite stores, `credentials/`, the profiles and `logs/`. Stopping keeps it, so the
next `up` finds the same keys; removing the directory starts afresh.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack import processes
from devstack.processes import ProcessId
from foundation.tls import channel_credentials
from kms_gateway.devcluster import PORT_OFFSETS, DevCluster
from kms_node import devsetup
from relay.devsetup import write_relay_config

DEFAULT_STATE_DIR = Path(".keyrelay")
DEFAULT_PORT_BASE = 7100
STATE_FILE = "dev-state.json"
# Written first when a directory is prepared: only a directory holding it is ever wiped.
MARKER = ".keyrelay-dev"
TENANT = "dev"
INSTANCE = "dev-dedicated"
SEALING_ALIAS = "alias/directory"
START_ORDER = ("shared-1", "shared-2", "dedicated", "gateway", "relay")
STOP_ORDER = ("gateway", "relay", "dedicated", "shared-2", "shared-1")
# Listeners of each daemon (names of PORT_OFFSETS), probed before it starts.
LISTENERS = {
    "shared-1": ("shared-1", "shared-1-metrics"),
    "shared-2": ("shared-2", "shared-2-metrics"),
    "dedicated": ("dedicated", "private-endpoint", "dedicated-metrics"),
    "gateway": ("gateway", "gateway-metrics"),
    "relay": ("relay", "relay-metrics"),
}
STATE_VERSION = 1
START_TIMEOUT = 90.0
# Daemon configs set shutdown_grace_seconds = 5; allow for it and for a loaded machine.
STOP_TIMEOUT = 20.0
# Variables that would override the dev configs of a daemon started from this environment.
_OVERRIDE_PREFIXES = ("KEYRELAY_NODE_", "KEYRELAY_GATEWAY_", "KEYRELAY_RELAY_")


@dataclass(frozen=True)
class ProfileSpec:
    """One profile `dev up` writes: its file, the access point behind it, and what it is for."""

    name: str
    file: str
    access_point: str
    role: str
    purpose: str


PROFILES = (
    ProfileSpec("admin", "profile.toml", "dev-admin", "admin", "key management (the default profile)"),
    ProfileSpec("app", "app.toml", "dev-app", "crypto-user", "encrypt, decrypt, data keys, envelopes"),
    ProfileSpec("messaging", "messaging.toml", "dev-messaging", "messaging-user", "keyrelay msg"),
)


class DevStackError(Exception):
    """`dev up|status|down` cannot do what was asked; the message says why and what to do, and
    `detail` (several lines, such as the end of a daemon's log) may say more."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


@dataclass
class DaemonRecord:
    """A daemon of the dev cluster as the state file keeps it."""

    name: str
    command: str
    config: str
    address: str
    ports: list[int]
    health_ca: str | None = None
    health_cert: str | None = None
    health_key: str | None = None
    pid: int | None = None
    start_time: int | None = None

    @property
    def process(self) -> ProcessId | None:
        return ProcessId(self.pid, self.start_time) if self.pid is not None and self.start_time is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.alive()

    def credentials(self) -> grpc.ChannelCredentials | None:
        if self.health_ca is None:
            return None
        return channel_credentials(self.health_ca, self.health_cert or "", self.health_key or "")


@dataclass
class DaemonStatus:
    """What `dev status` reports of one daemon."""

    name: str
    address: str
    pid: int | None
    state: str  # serving | not serving | stopped
    log: str


@dataclass
class StackStatus:
    """What `dev up` and `dev status` report."""

    state_dir: str
    daemons: list[DaemonStatus]
    gateway: str
    relay: str
    private_endpoints: dict[str, str]
    profiles: dict[str, str] = field(default_factory=dict)
    sealing_key: str = SEALING_ALIAS
    tenant: str = TENANT

    @property
    def all_serving(self) -> bool:
        return all(d.state == "serving" for d in self.daemons)

    @property
    def any_running(self) -> bool:
        return any(d.state != "stopped" for d in self.daemons)


def _serving(daemon: DaemonRecord, timeout: float = 3.0) -> bool:
    target = daemon.address
    creds = daemon.credentials()
    channel = grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target)
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


class DevStack:
    """The dev cluster of one state directory (see the module docstring)."""

    def __init__(self, state_dir: str | os.PathLike = DEFAULT_STATE_DIR, port_base: int | None = None) -> None:
        self.shown_dir = str(state_dir)
        self.root = Path(state_dir).resolve()
        self.port_base = port_base
        self.state_path = self.root / STATE_FILE

    # -- state ------------------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.state_path.exists()

    def load_state(self) -> dict:
        """The state file: the layout, and a `DaemonRecord` (with its pid) per daemon."""
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError) as exc:
            raise DevStackError(
                f"cannot read {self.state_path} ({exc}): stop any daemons it started by hand, then "
                f"remove {self.shown_dir} and run `keyrelay dev up` again"
            ) from None
        if state.get("version") != STATE_VERSION:
            raise DevStackError(
                f"{self.state_path} was written by another version of keyrelay: remove {self.shown_dir} and run "
                "`keyrelay dev up` again"
            )
        state["daemons"] = {d["name"]: DaemonRecord(**d) for d in state["daemons"]}
        return state

    def _save(self, state: dict) -> None:
        data = dict(state, daemons=[asdict(d) for d in state["daemons"].values()])
        temporary = self.state_path.with_name(f".{STATE_FILE}.tmp")
        temporary.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(temporary, self.state_path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One `dev` command at a time per state directory."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DevStackError(
                    f"another `keyrelay dev` command is working on {self.shown_dir}; wait for it to finish"
                ) from None
            yield

    # -- preparing ----------------------------------------------------------------------------------

    def _layout_ports(self, base: int) -> dict[str, list[int]]:
        return {name: [base + PORT_OFFSETS[p] for p in listeners] for name, listeners in LISTENERS.items()}

    def _check_ports(self, wanted: dict[str, list[int]]) -> None:
        busy = [(name, port) for name, ports in wanted.items() for port in ports if processes.port_in_use("127.0.0.1", port)]
        if not busy:
            return
        listed = ", ".join(f"{port} ({name})" for name, port in busy)
        if self.exists():
            fix = (
                f"stop the program using it (`ss -ltnp 'sport = :{busy[0][1]}'` shows which), or run a second "
                f"cluster elsewhere: `keyrelay dev up --state-dir OTHER_DIR --port-base N`"
            )
        else:
            fix = (
                f"stop the program using it (`ss -ltnp 'sport = :{busy[0][1]}'` shows which), or choose other "
                f"ports: `keyrelay dev up --port-base N` (uses N to N+{max(PORT_OFFSETS.values())})"
            )
        raise DevStackError(f"port(s) {listed} on 127.0.0.1 already in use: {fix}")

    def _prepare(self, progress: Callable[[str], None]) -> None:
        """Write everything of a new cluster; the directory must be empty or a stale one of ours."""
        try:
            devsetup.softhsm_module()
        except FileNotFoundError as exc:
            raise DevStackError(str(exc)) from None
        entries = {p.name for p in self.root.iterdir()} - {".lock"}
        if entries and MARKER not in entries:
            raise DevStackError(
                f"{self.shown_dir} is not empty and holds no keyrelay dev cluster: choose another --state-dir, "
                "or empty it"
            )
        base = DEFAULT_PORT_BASE if self.port_base is None else self.port_base
        if not 1024 <= base <= 65535 - max(PORT_OFFSETS.values()):
            raise DevStackError(f"--port-base {base} is out of range: give 1024 to {65535 - max(PORT_OFFSETS.values())}")
        self._check_ports(self._layout_ports(base))
        if entries:  # an earlier first `up` was interrupted while preparing: start that afresh
            for name in entries:
                path = self.root / name
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        (self.root / MARKER).write_text("keyrelay dev state directory: `keyrelay dev down`, then remove it to start afresh\n")
        progress(f"preparing {self.shown_dir}: CAs and certificates, SoftHSM tokens and domain keys, configs")
        cluster = DevCluster(self.root, instance_id=INSTANCE, port_base=base).prepare()
        relay_port = base + PORT_OFFSETS["relay"]
        relay_config = write_relay_config(
            self.root / "relay.toml", port=relay_port, store=self.root / "relay.db", rate_limits=True,
            extra=f'metrics_listen = "127.0.0.1:{base + PORT_OFFSETS["relay-metrics"]}"',
        )
        ports = self._layout_ports(base)
        daemons = {}
        for name, daemon in cluster.daemons.items():
            daemons[name] = DaemonRecord(
                name, daemon.command, str(daemon.config), f"127.0.0.1:{daemon.port}", ports[name],
                str(daemon.health_ca), str(daemon.health_cert), str(daemon.health_key),
            )
        daemons["relay"] = DaemonRecord("relay", "relay", str(relay_config), f"127.0.0.1:{relay_port}", ports["relay"])
        bootstrap = cluster.admin_credentials()
        self._save({
            "version": STATE_VERSION,
            "port_base": base,
            "softhsm_conf": str(cluster.softhsm_conf),
            "gateway": cluster.gateway_target,
            "relay": f"127.0.0.1:{relay_port}",
            "private_endpoints": {INSTANCE: cluster.private_endpoint},
            "dedicated_internal": cluster.dedicated_internal,
            "bootstrap": {k: str(v) for k, v in bootstrap.items()},
            "provisioned": False,
            "daemons": daemons,
        })

    # -- up -----------------------------------------------------------------------------------------

    def _environment(self, state: dict) -> dict[str, str]:
        env = devsetup.dev_environment(Path(state["softhsm_conf"]))
        return {k: v for k, v in env.items() if not k.startswith(_OVERRIDE_PREFIXES)}

    def up(self, progress: Callable[[str], None] = lambda _: None) -> tuple[StackStatus, list[str]]:
        """Prepare (first time), start what is not running, wait for health, provision (first
        time). Returns the status and the names of the daemons this call started."""
        with self._locked():
            if not self.exists():
                self._prepare(progress)
            state = self.load_state()
            if self.port_base is not None and self.port_base != state["port_base"]:
                raise DevStackError(
                    f"{self.shown_dir} already holds a cluster on port base {state['port_base']}: leave out "
                    f"--port-base, or use another --state-dir for a cluster on {self.port_base}"
                )
            daemons: dict[str, DaemonRecord] = state["daemons"]
            to_start = [name for name in START_ORDER if not daemons[name].running()]
            self._check_ports({name: daemons[name].ports for name in to_start})
            started: list[str] = []
            try:
                # The first shared node writes the bootstrap admin credential; the others follow it.
                for group in (["shared-1"], ["shared-2", "dedicated"], ["gateway", "relay"]):
                    self._start_group([n for n in group if n in to_start], state, started, progress)
                if not state["provisioned"]:
                    progress(f"provisioning tenant {TENANT}: instance {INSTANCE}, access points, profiles, {SEALING_ALIAS}")
                    from devstack.provision import provision

                    provision(self.root, state, PROFILES)
                    state["provisioned"] = True
                    self._save(state)
            except BaseException:
                for name in reversed(started):
                    process = daemons[name].process
                    if process is not None:
                        processes.terminate(process, STOP_TIMEOUT)
                    daemons[name].pid = daemons[name].start_time = None
                self._save(state)
                raise
            return self._status(state), started

    def _start_group(self, names: list[str], state: dict, started: list[str], progress: Callable[[str], None]) -> None:
        daemons: dict[str, DaemonRecord] = state["daemons"]
        env = self._environment(state)
        procs, spawned = {}, {}
        for name in names:
            daemon = daemons[name]
            argv = [*devsetup.keyrelay_command(), daemon.command, "--config", daemon.config]
            proc, pid = processes.spawn(argv, env, self.root / "logs" / f"{name}.log")
            daemon.pid, daemon.start_time = pid.pid, pid.start_time
            procs[name], spawned[name] = proc, time.monotonic()
            started.append(name)
            self._save(state)  # a crash from here on still leaves `dev down` the pid
            progress(f"started {name} (pid {proc.pid}) on {daemon.address}")
        for name in names:
            daemon = daemons[name]
            try:
                devsetup.wait_until_serving(daemon.address, START_TIMEOUT, procs[name], daemon.credentials())
            except (RuntimeError, TimeoutError) as exc:
                log = self.root / "logs" / f"{name}.log"
                raise DevStackError(f"{name} did not start: {exc}; its log is {log}", processes.log_tail(log)) from None
            progress(f"{name} is serving ({time.monotonic() - spawned[name]:.1f}s after start)")

    # -- status and down ----------------------------------------------------------------------------

    def _status(self, state: dict) -> StackStatus:
        reports = []
        for name in START_ORDER:
            daemon: DaemonRecord = state["daemons"][name]
            if not daemon.running():
                condition = "stopped"
            else:
                condition = "serving" if _serving(daemon) else "not serving"
            reports.append(DaemonStatus(
                name, daemon.address, daemon.pid if condition != "stopped" else None, condition,
                str(self.root / "logs" / f"{name}.log"),
            ))
        profiles = {}
        if state["provisioned"]:
            profiles = {spec.name: str(Path(self.shown_dir) / spec.file) for spec in PROFILES}
        return StackStatus(self.shown_dir, reports, state["gateway"], state["relay"], state["private_endpoints"], profiles)

    def status(self) -> StackStatus:
        """The state of each daemon (from the state file, pids and health checks)."""
        if not self.exists():
            raise DevStackError(f"no dev cluster in {self.shown_dir}: start one with `keyrelay dev up`")
        return self._status(self.load_state())

    def down(self, progress: Callable[[str], None] = lambda _: None) -> dict[str, str]:
        """SIGTERM every running daemon (gateway first), wait for each; returns name -> outcome.
        An empty result: nothing was running."""
        if not self.exists():
            return {}
        with self._locked():
            state = self.load_state()
            outcomes = {}
            for name in STOP_ORDER:
                daemon: DaemonRecord = state["daemons"][name]
                process = daemon.process
                if process is None or not process.alive():
                    daemon.pid = daemon.start_time = None
                    continue
                progress(f"stopping {name} (pid {daemon.pid})")
                outcomes[name] = processes.terminate(process, STOP_TIMEOUT)
                daemon.pid = daemon.start_time = None
                self._save(state)
            self._save(state)
            return outcomes
