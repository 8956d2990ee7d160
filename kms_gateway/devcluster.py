"""A development cluster on one machine: PKI, SoftHSM pools, configs, and the daemons as processes.

`DevCluster(root).prepare()` writes everything a gateway in front of a shared KMS (N replicas on
one pool and one store) and one dedicated instance (its own token and store, with a private
endpoint) need:

- two CAs: the *internal* CA (mutual TLS between gateway and nodes) and the *KMS* CA (server
  certificates clients see, and access-point credentials, issued by the shared KMS);
- SoftHSM tokens and domain keys (`keyrelay hsm init`);
- a config per daemon.

`start()` runs each daemon the way a user does (`keyrelay node`, `keyrelay gateway`) and waits
for health. Ports are free ones picked at `prepare()`, or with `port_base` the fixed layout of
`PORT_OFFSETS` (what `keyrelay dev up` uses, so its profile stays valid across restarts). The shared KMS writes the bootstrap admin credential at first start, and
`admin_profile()` points at it. Used by the end-to-end tests and the gateway benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from foundation.pki import CertificateAuthority, certificate_pem, write_credential
from foundation.tls import channel_credentials
from kms_node import devsetup

INTERNAL_HOSTS = ("127.0.0.1", "localhost")
GATEWAY_CN = "keyrelay-gateway"
#: Port of each listener as an offset from `DevCluster.port_base`; replica r (from 0) of a
#: gateway, dedicated node or relay adds `REPLICA_STRIDE * r`.
REPLICA_STRIDE = 20
PORT_OFFSETS = {
    "gateway": 0, "shared-1": 1, "shared-2": 2, "dedicated": 3, "private-endpoint": 4, "relay": 5,
    "gateway-metrics": 10, "shared-1-metrics": 11, "shared-2-metrics": 12, "dedicated-metrics": 13, "relay-metrics": 14,
}



def listener_port(base: int, name: str, replica: int = 0) -> int:
    """The fixed port of listener `name` (of PORT_OFFSETS) of replica `replica` (from 0)."""
    return base + PORT_OFFSETS[name] + REPLICA_STRIDE * replica


@dataclass
class Daemon:
    """One daemon of the cluster: its config, port and process."""

    name: str
    command: str
    config: Path
    port: int
    health_ca: Path | None = None
    health_cert: Path | None = None
    health_key: Path | None = None
    process: devsetup.NodeProcess | None = None

    def health_credentials(self):
        """TLS credentials for health checks; None for a plain-text daemon."""
        if self.health_ca is None:
            return None
        return channel_credentials(str(self.health_ca), str(self.health_cert or ""), str(self.health_key or ""))


@dataclass
class DevCluster:
    """Files and processes of a development cluster under `root`."""

    root: Path
    shared_replicas: int = 2
    instance_id: str = "dev-dedicated"
    shared_tokens: tuple[str, ...] = ("kr-shared-a", "kr-shared-b")
    dedicated_tokens: tuple[str, ...] = ("kr-dedicated-a",)
    listeners: dict[str, int] = field(default_factory=dict)
    gateway_extra: str = ""
    port_base: int | None = None
    #: Gateways and dedicated nodes (of the one instance) to run side by side.
    replicas: int = 1
    #: PostgreSQL DSNs of the "shared" and "dedicated" key stores; SQLite files when absent.
    store_dsns: dict[str, str] = field(default_factory=dict)
    daemons: dict[str, Daemon] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.pki = self.root / "pki"
        self.logs = self.root / "logs"
        self.bootstrap_dir = self.root / "bootstrap"
        self.audit_path = self.root / "audit.log"
        self.softhsm_conf = devsetup.write_softhsm_conf(self.root)
        self.env = devsetup.dev_environment(self.softhsm_conf)

    # -- files ------------------------------------------------------------------------------------

    def port(self, name: str, replica: int = 0) -> int:
        """The port of a listener named in `PORT_OFFSETS` (of replica `replica`, from 0): fixed
        with `port_base`, else a free one."""
        if self.port_base is None:
            return devsetup.free_port()
        return listener_port(self.port_base, name, replica)

    @staticmethod
    def replica_name(role: str, replica: int) -> str:
        """`gateway`, `gateway-2`, ...: the first replica keeps the role's plain name."""
        return role if replica == 0 else f"{role}-{replica + 1}"

    def _credential(self, ca: CertificateAuthority, name: str, *, server: bool, client: bool) -> tuple[Path, Path]:
        cert, key = ca.issue(name, hosts=INTERNAL_HOSTS, server=server, client=client)

        paths = write_credential(self.pki / "certs", name, certificate_pem(cert), key, ca.certificate_pem)
        return paths["cert"], paths["key"]

    def prepare(self) -> "DevCluster":
        """Make the CAs, certificates, HSM tokens and configs (once; the root must be empty)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        internal = CertificateAuthority.create(self.pki / "internal-ca", "keyrelay internal CA")
        kms = CertificateAuthority.create(self.pki / "kms-ca", "keyrelay KMS CA")
        self.internal_ca = self.pki / "internal-ca" / "ca.crt"
        self.kms_ca = self.pki / "kms-ca" / "ca.crt"
        self.gateway_client = self._credential(internal, GATEWAY_CN, server=False, client=True)
        shared_cert = self._credential(internal, "keyrelay-node-shared", server=True, client=True)
        dedicated_cert = self._credential(internal, f"keyrelay-node-{self.instance_id}", server=True, client=True)
        gateway_server = self._credential(kms, "gateway", server=True, client=False)
        private_server = self._credential(kms, f"private-{self.instance_id}", server=True, client=False)

        shared_ports = [self.port(f"shared-{index}") for index in range(1, self.shared_replicas + 1)]
        for index, port in enumerate(shared_ports, start=1):
            config = devsetup.write_node_config(
                self.root / f"shared-{index}.toml",
                tokens=list(self.shared_tokens),
                listen=f"127.0.0.1:{port}",
                store_path=str(self.root / "shared.db"),
                store_dsn=self.store_dsns.get("shared", ""),
                extra=f'metrics_listen = "127.0.0.1:{self.port(f"shared-{index}-metrics")}"\n'
                + self._tls_section(internal_cert=shared_cert)
                + f'[ca]\ncert = "{self.kms_ca}"\nkey = "{self.pki / "kms-ca" / "ca.key"}"\n'
                f'bootstrap_dir = "{self.bootstrap_dir}"\n',
            )
            self._add(f"shared-{index}", "node", config, port, self.internal_ca, *self.gateway_client)
        self.shared_endpoints = [f"127.0.0.1:{p}" for p in shared_ports]
        registry = ", ".join(f'"127.0.0.1:{p}"' for p in shared_ports)
        self.dedicated_endpoints, self.private_endpoints = [], []
        for replica in range(self.replicas):
            name = self.replica_name("dedicated", replica)
            dedicated_port, private_port = self.port("dedicated", replica), self.port("private-endpoint", replica)
            config = devsetup.write_node_config(
                self.root / f"{name}.toml",
                tokens=list(self.dedicated_tokens),
                listen=f"127.0.0.1:{dedicated_port}",
                store_path=str(self.root / "dedicated.db"),
                store_dsn=self.store_dsns.get("dedicated", ""),
                mode="dedicated",
                instance_id=self.instance_id,
                extra=f'metrics_listen = "127.0.0.1:{self.port("dedicated-metrics", replica)}"\n'
                + self._tls_section(internal_cert=dedicated_cert)
                + f'[private_endpoint]\nlisten = "127.0.0.1:{private_port}"\ncert = "{private_server[0]}"\n'
                f'key = "{private_server[1]}"\nclient_ca = "{self.kms_ca}"\nregistry_nodes = [{registry}]\n'
                f'credential_cache_seconds = 1\naudit_path = "{self.root / f"{name}-private-audit.log"}"\n',
            )
            self._add(name, "node", config, dedicated_port, self.internal_ca, *self.gateway_client)
            self.dedicated_endpoints.append(f"127.0.0.1:{dedicated_port}")
            self.private_endpoints.append(f"127.0.0.1:{private_port}")
        self.private_endpoint = self.private_endpoints[0]
        self.dedicated_internal = self.dedicated_endpoints[0]

        if not self.listeners:
            if self.port_base is None:
                self.listeners = {"public": devsetup.free_port(), "vpc": devsetup.free_port()}
            else:
                self.listeners = {"public": self.port("gateway")}
        self._health_probe = self._credential(kms, "health-probe", server=False, client=True)
        self._gateway_server = gateway_server
        metrics = self.port("gateway-metrics") if self.port_base is not None else None
        self.add_gateway("gateway", self.listeners, self.audit_path, self.gateway_extra, metrics)
        for replica in range(1, self.replicas):
            name = self.replica_name("gateway", replica)
            listeners = {zone: self.port("gateway", replica) for zone in self.listeners}
            metrics = self.port("gateway-metrics", replica) if self.port_base is not None else None
            self.add_gateway(name, listeners, self.root / f"audit-{replica + 1}.log", self.gateway_extra, metrics)
        devsetup.hsm_init(self.daemons["shared-1"].config, self.env)
        devsetup.hsm_init(self.daemons["dedicated"].config, self.env)
        return self

    def add_gateway(
        self, name: str, listeners: dict[str, int], audit_path: Path, extra: str = "", metrics_port: int | None = None
    ) -> Daemon:
        """Write the config of a gateway (another one may run beside the first, e.g. with other limits)."""
        listen = "".join(f'{zone} = "127.0.0.1:{port}"\n' for zone, port in listeners.items())
        shared = ", ".join(f'"{e}"' for e in self.shared_endpoints)
        config = self.root / f"{name}.toml"
        config.write_text(
            f"shared_nodes = [{shared}]\nshutdown_grace_seconds = 5\nhealth_check_seconds = 0.5\n"
            f'credential_cache_seconds = 1\nmetrics_listen = "127.0.0.1:{metrics_port or devsetup.free_port()}"\n{extra}\n'
            f"[listeners]\n{listen}\n"
            f'[tls]\ncert = "{self._gateway_server[0]}"\nkey = "{self._gateway_server[1]}"\nclient_ca = "{self.kms_ca}"\n\n'
            f'[internal]\nca = "{self.internal_ca}"\ncert = "{self.gateway_client[0]}"\nkey = "{self.gateway_client[1]}"\n\n'
            f'[audit]\npath = "{audit_path}"\n'
        )
        # The gateway asks for a client certificate even on health checks; any KMS-CA one will do.
        self._add(name, "gateway", config, next(iter(listeners.values())), self.kms_ca, *self._health_probe)
        return self.daemons[name]

    def _tls_section(self, *, internal_cert: tuple[Path, Path]) -> str:
        return (
            f'[tls]\ncert = "{internal_cert[0]}"\nkey = "{internal_cert[1]}"\nclient_ca = "{self.internal_ca}"\n'
            f'gateway_cn = "{GATEWAY_CN}"\n'
        )

    def _add(self, name: str, command: str, config: Path, port: int, ca: Path, cert: Path, key: Path) -> None:
        self.daemons[name] = Daemon(name, command, config, port, ca, cert, key)

    # -- processes --------------------------------------------------------------------------------

    def start(self, *names: str, timeout: float = 90.0) -> None:
        """Start the named daemons (all, in dependency order, by default) and wait for health."""
        for name in names or list(self.daemons):
            daemon = self.daemons[name]
            daemon.process = devsetup.NodeProcess(
                daemon.config, self.env, self.logs / f"{name}.log", daemon.port,
                command=daemon.command, health_credentials=daemon.health_credentials(),
            ).start(timeout)

    def stop(self, *names: str) -> dict[str, int]:
        """SIGTERM the named daemons (all by default, gateway first); returns their exit statuses."""
        statuses = {}
        for name in names or reversed(list(self.daemons)):
            daemon = self.daemons[name]
            if daemon.process is not None and daemon.process.proc is not None and daemon.process.proc.poll() is None:
                statuses[name] = daemon.process.terminate()
        return statuses

    def kill_all(self) -> None:
        """SIGKILL whatever is still running (test clean-up)."""
        for daemon in self.daemons.values():
            if daemon.process is not None:
                daemon.process.kill()

    @property
    def gateway_target(self) -> str:
        return f"127.0.0.1:{self.listeners[next(iter(self.listeners))]}"

    def zone_target(self, zone: str) -> str:
        return f"127.0.0.1:{self.listeners[zone]}"

    def admin_credentials(self) -> dict[str, Path]:
        """The bootstrap admin credential the shared KMS wrote at first start."""
        return {
            "ca": self.bootstrap_dir / "ca.crt",
            "cert": self.bootstrap_dir / "bootstrap-admin.crt",
            "key": self.bootstrap_dir / "bootstrap-admin.key",
        }
