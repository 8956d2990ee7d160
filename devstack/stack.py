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
from devstack.provision import INSTANCE, SEALING_ALIAS, TENANT, provision
from devstack.processes import ProcessId
from foundation.tls import channel_credentials
from kms_gateway.devcluster import DevCluster, listener_port
from kms_node import devsetup
from foundation.postgres_db import is_postgres_dsn, redacted_dsn

DEFAULT_STATE_DIR = Path(".keyrelay")
DEFAULT_PORT_BASE = 7100
STATE_FILE = "dev-state.json"
# Written first when a directory is prepared: only a directory holding it is ever wiped.
MARKER = ".keyrelay-dev"
#: The daemons of a cluster with one replica of each role, in start order.
START_ORDER = ("shared-1", "shared-2", "dedicated", "gateway", "relay")
# Listeners of each role (names of PORT_OFFSETS), probed before a daemon starts.
_ROLE_LISTENERS = {
    "shared-1": ("shared-1", "shared-1-metrics"),
    "shared-2": ("shared-2", "shared-2-metrics"),
    "dedicated": ("dedicated", "private-endpoint", "dedicated-metrics"),
    "gateway": ("gateway", "gateway-metrics"),
    "relay": ("relay", "relay-metrics"),
}
MAX_REPLICAS = 4
STATE_VERSION = 2
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


def plan(base: int, replicas: int) -> dict[str, list[int]]:
    """Every daemon of a cluster, in start order, with its ports: the two shared nodes, then
    `replicas` dedicated nodes, gateways and relays (replica r adds REPLICA_STRIDE * r)."""
    daemons = {name: [listener_port(base, p) for p in _ROLE_LISTENERS[name]] for name in ("shared-1", "shared-2")}
    for role in ("dedicated", "gateway", "relay"):
        for replica in range(replicas):
            ports = [listener_port(base, p, replica) for p in _ROLE_LISTENERS[role]]
            daemons[DevCluster.replica_name(role, replica)] = ports
    return daemons


def _highest_offset(replicas: int) -> int:
    """How far above the port base a cluster of `replicas` listens."""
    return max(port for ports in plan(0, replicas).values() for port in ports)


def _start_groups(names: list[str]) -> list[list[str]]:
    """The first shared node alone (it writes the bootstrap credential), then the other nodes,
    then the gateways and relays."""
    nodes = [n for n in names if n.startswith(("shared", "dedicated")) and n != "shared-1"]
    front = [n for n in names if n.startswith(("gateway", "relay"))]
    return [[n for n in names if n == "shared-1"], nodes, front]


def _stop_order(names: list[str]) -> list[str]:
    """Gateways and relays first, then dedicated nodes, then the shared nodes, last one first."""
    rank = {"gateway": 0, "relay": 1, "dedicated": 2, "shared": 3}
    return sorted(names, key=lambda n: (rank[n.split("-")[0]], -names.index(n)))


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
    #: Role -> PostgreSQL DSN (password redacted) of its store; empty: SQLite files.
    postgres: dict[str, str] = field(default_factory=dict)

    @property
    def all_serving(self) -> bool:
        return all(d.state == "serving" for d in self.daemons)


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

    def __init__(
        self,
        state_dir: str | os.PathLike = DEFAULT_STATE_DIR,
        port_base: int | None = None,
        *,
        postgres: str | None = None,
        replicas: int | None = None,
    ) -> None:
        self.shown_dir = str(state_dir)
        self.root = Path(state_dir).resolve()
        self.port_base = port_base
        self.postgres = postgres
        self.replicas = replicas
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
        # Owner-only: it holds the dev CAs' keys, the credentials, and the configs (with the
        # --postgres DSN as given, password included if it has one).
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.root / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DevStackError(
                    f"another `keyrelay dev` command is working on {self.shown_dir}; wait for it to finish"
                ) from None
            yield

    # -- preparing ----------------------------------------------------------------------------------

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
                f"ports: `keyrelay dev up --port-base N` (uses N to N+{_highest_offset(self.replicas or 1)})"
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
        replicas = self.replicas or 1
        if not 1 <= replicas <= MAX_REPLICAS:
            raise DevStackError(f"--replicas {replicas} is out of range: give 1 to {MAX_REPLICAS}")
        if replicas > 1 and self.postgres is None:
            raise DevStackError(
                f"--replicas {replicas} needs --postgres DSN: replicas share their stores there, and relays wake "
                "each other's subscribers through it"
            )
        top = _highest_offset(replicas)
        if not 1024 <= base <= 65535 - top:
            raise DevStackError(f"--port-base {base} is out of range: give 1024 to {65535 - top}")
        ports = plan(base, replicas)
        self._check_ports(ports)
        if self.postgres is not None and not is_postgres_dsn(self.postgres):
            raise DevStackError(
                f"--postgres {redacted_dsn(self.postgres)!r} is not a PostgreSQL DSN: give postgresql://USER@HOST:PORT/DATABASE"
            )
        dsns = self._postgres_schemas() if self.postgres else {}
        if entries:  # an earlier first `up` was interrupted while preparing: start that afresh
            for name in entries:
                path = self.root / name
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        (self.root / MARKER).write_text("keyrelay dev state directory: `keyrelay dev down`, then remove it to start afresh\n")
        progress(f"preparing {self.shown_dir}: CAs and certificates, SoftHSM tokens and domain keys, configs")
        cluster = DevCluster(
            self.root, instance_id=INSTANCE, port_base=base, replicas=replicas,
            store_dsns={role: dsns[role] for role in ("shared", "dedicated") if role in dsns},
        ).prepare()
        daemons = {}
        for name, daemon in cluster.daemons.items():
            daemons[name] = DaemonRecord(
                name, daemon.command, str(daemon.config), f"127.0.0.1:{daemon.port}", ports[name],
                str(daemon.health_ca), str(daemon.health_cert), str(daemon.health_key),
            )
        for replica in range(replicas):
            name = DevCluster.replica_name("relay", replica)
            port, metrics = ports[name]
            config = self._write_relay_config(name, port, metrics, dsns.get("relay", ""))
            daemons[name] = DaemonRecord(name, "relay", str(config), f"127.0.0.1:{port}", ports[name])
        bootstrap = cluster.admin_credentials()
        self._save({
            "version": STATE_VERSION,
            "port_base": base,
            "replicas": replicas,
            "postgres": {role: redacted_dsn(dsn) for role, dsn in dsns.items()},
            "softhsm_conf": str(cluster.softhsm_conf),
            "gateway": cluster.gateway_target,
            "relay": daemons["relay"].address,
            "private_endpoints": {INSTANCE: cluster.private_endpoint},
            "dedicated_endpoints": cluster.dedicated_endpoints,
            "bootstrap": {k: str(v) for k, v in bootstrap.items()},
            "provisioned": False,
            "order": list(ports),
            "daemons": {name: daemons[name] for name in ports},
        })

    def _write_relay_config(self, name: str, port: int, metrics: int, dsn: str) -> Path:
        """A loopback relay config (plain text) on SQLite or PostgreSQL. The per-account rate
        limit is the default; accounts may be created faster than by default (tests, benchmarks
        and tours make many from one address)."""
        config = self.root / f"{name}.toml"
        config.write_text(
            f'listen = "127.0.0.1:{port}"\nmetrics_listen = "127.0.0.1:{metrics}"\nshutdown_grace_seconds = 5\n\n'
            f'[store]\npath = "{self.root / "relay.db"}"\n' + (f'dsn = "{dsn}"\n' if dsn else "")
            + "\n[rate_limit]\naccount_creations_per_minute = 600\naccount_creation_burst = 600\n"
        )
        return config

    def _postgres_schemas(self) -> dict[str, str]:
        """Create this cluster's schemas (shared KMS, dedicated instance, relay) in the database of
        `--postgres`; returns a DSN per role, each with its schema as the search path."""
        import secrets

        import psycopg

        prefix = f"keyrelay_dev_{secrets.token_hex(3)}"
        try:
            with psycopg.connect(self.postgres, autocommit=True, connect_timeout=10) as conn:
                for role in ("shared", "dedicated", "relay"):
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {prefix}_{role}")
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DevStackError(
                f"cannot use PostgreSQL at {redacted_dsn(self.postgres)}: {first}. Give --postgres a DSN such as "
                "postgresql://USER@HOST:5432/DATABASE of a running server where USER may create schemas"
            ) from None
        separator = "&" if "?" in self.postgres else "?"
        return {
            role: f"{self.postgres}{separator}options=-csearch_path%3D{prefix}_{role}"
            for role in ("shared", "dedicated", "relay")
        }

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
            self._check_same_layout(state)
            daemons: dict[str, DaemonRecord] = state["daemons"]
            to_start = [name for name in state["order"] if not daemons[name].running()]
            self._check_ports({name: daemons[name].ports for name in to_start})
            started: list[str] = []
            try:
                for group in _start_groups(to_start):
                    self._start_group(group, state, started, progress)
                if not state["provisioned"]:
                    progress(f"provisioning tenant {TENANT}: instance {INSTANCE}, access points, profiles, {SEALING_ALIAS}")
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

    def _check_same_layout(self, state: dict) -> None:
        """Options of a later `up` must match the cluster the directory holds."""
        given = {"--port-base": (self.port_base, state["port_base"]), "--replicas": (self.replicas, state["replicas"])}
        for flag, (wanted, actual) in given.items():
            if wanted is not None and wanted != actual:
                raise DevStackError(
                    f"{self.shown_dir} already holds a cluster with {flag} {actual}: leave out {flag}, or use "
                    f"another --state-dir for a cluster with {flag} {wanted}"
                )
        if self.postgres is not None and not state["postgres"]:
            raise DevStackError(
                f"{self.shown_dir} holds a cluster on SQLite: leave out --postgres, or use another --state-dir"
            )

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
        for name in state["order"]:
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
        return StackStatus(
            self.shown_dir, reports, state["gateway"], state["relay"], state["private_endpoints"], profiles,
            postgres=state["postgres"],
        )

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
            for name in _stop_order(state["order"]):
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
