"""The node's config: a frozen dataclass loaded from TOML, `KEYRELAY_NODE_*` and `--set` flags.

Example (see ``deploy/node-shared.toml`` and ``deploy/node-dedicated.toml``)::

    mode = "shared"                 # or "dedicated", with instance_id
    listen = "127.0.0.1:7101"

    [hsm]
    module = "/usr/lib/softhsm/libsofthsm2.so"
    tokens = ["kr-shared-a", "kr-shared-b"]
    pin_env = "KEYRELAY_HSM_PIN"    # the PIN itself never goes in this file

    [store]
    path = "node.db"                # SQLite, relative to this file's folder ...
    dsn = ""                        # ... unless this names PostgreSQL: "postgresql://kms@db.internal/keyrelay"
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from typing import Mapping

from foundation import config as cfg
from foundation.access_policy import INSTANCE_ID

ENV_PREFIX = "KEYRELAY_NODE"


@dataclass(frozen=True)
class HsmConfig:
    """The node's HSM pool."""

    module: str = "/usr/lib/softhsm/libsofthsm2.so"
    tokens: tuple[str, ...] = ()
    pin_env: str = "KEYRELAY_HSM_PIN"
    pin_file: str = ""
    so_pin_env: str = "KEYRELAY_HSM_SO_PIN"
    so_pin_file: str = ""
    domain_key_label: str = "keyrelay-domain-key"
    sessions_per_slot: int = 4
    threads: int = 0
    slot_retry_seconds: float = 5.0
    checkout_timeout_seconds: float = 5.0


@dataclass(frozen=True, repr=False)
class StoreConfig(cfg.StoreSettings):
    """The node's key store (and on a shared node its control plane); see `StoreSettings`."""

    path: str = "keyrelay-node.db"


@dataclass(frozen=True)
class TlsConfig:
    """Mutual TLS on the node's internal port, under the internal CA.

    With it the port accepts only clients whose certificate the internal CA issued: the gateway
    (certificate common name `gateway_cn`) for every service, and dedicated nodes (common names
    starting `keyrelay-node`) for credential checks only. Without it the node listens in plain
    text, for development, and only on a loopback address.
    """

    cert: str = ""
    key: str = ""
    client_ca: str = ""
    gateway_cn: str = "keyrelay-gateway"


@dataclass(frozen=True)
class PrivateEndpointConfig:
    """A dedicated node's private endpoint: the tenant's crypto calls, with access-point credentials."""

    listen: str = ""
    cert: str = ""
    key: str = ""
    client_ca: str = ""
    zone: str = "private"
    registry_nodes: tuple[str, ...] = ()
    credential_cache_seconds: float = 5.0
    #: The hash-chained audit log of the endpoint's requests (one JSON line each, as the gateway's).
    audit_path: str = "keyrelay-private-audit.log"
    #: Per-tenant token bucket, as the gateway's `rate_limit`; 0 turns it off.
    requests_per_second: float = 1000.0
    burst: int = 2000


@dataclass(frozen=True)
class CaConfig:
    """The KMS CA that issues access-point credentials (shared nodes only)."""

    cert: str = ""
    key: str = ""
    operator_tenant: str = "operator"
    bootstrap_dir: str = ""


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node needs to run. Validated by `validate`."""

    mode: str = "shared"
    instance_id: str = ""
    listen: str = "127.0.0.1:7101"
    log_level: str = "info"
    shutdown_grace_seconds: float = 10.0
    deletion_sweep_seconds: float = 60.0
    metrics_listen: str = ""
    hsm: HsmConfig = field(default_factory=HsmConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    private_endpoint: PrivateEndpointConfig = field(default_factory=PrivateEndpointConfig)
    ca: CaConfig = field(default_factory=CaConfig)

    def validate(self) -> None:
        """Raise ConfigError naming the key and the fix for the first problem found."""
        if self.mode not in ("shared", "dedicated"):
            raise cfg.ConfigError(f"mode must be 'shared' or 'dedicated' (got {self.mode!r})")
        if self.mode == "dedicated" and not INSTANCE_ID.fullmatch(self.instance_id):
            raise cfg.ConfigError(
                "a dedicated node needs instance_id: 1-63 characters of a-z, 0-9 and '-' "
                f"(got {self.instance_id!r})"
            )
        if self.mode == "shared" and self.instance_id:
            raise cfg.ConfigError("instance_id is only for mode = 'dedicated'; remove it or change the mode")
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise cfg.ConfigError(f"listen must be host:port (got {self.listen!r})")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise cfg.ConfigError(f"log_level must be debug, info, warning or error (got {self.log_level!r})")
        if not self.hsm.tokens:
            raise cfg.ConfigError("hsm.tokens is empty: list the labels of the pool's tokens, e.g. [\"kr-a\", \"kr-b\"]")
        if len(set(self.hsm.tokens)) != len(self.hsm.tokens):
            raise cfg.ConfigError("hsm.tokens lists a token twice")
        if not self.hsm.module or not os.path.exists(self.hsm.module):
            raise cfg.ConfigError(
                f"hsm.module {self.hsm.module!r} does not exist: install SoftHSM (apt-get install softhsm2) "
                "or point it at your HSM vendor's PKCS#11 library"
            )
        if not self.hsm.pin_env and not self.hsm.pin_file:
            raise cfg.ConfigError("set hsm.pin_env or hsm.pin_file to say where the HSM user PIN comes from")
        if self.hsm.sessions_per_slot < 1:
            raise cfg.ConfigError(f"hsm.sessions_per_slot must be at least 1 (got {self.hsm.sessions_per_slot})")
        if self.hsm.threads < 0:
            raise cfg.ConfigError("hsm.threads must be 0 (one per session) or more")
        for key in ("slot_retry_seconds", "checkout_timeout_seconds"):
            if getattr(self.hsm, key) <= 0:
                raise cfg.ConfigError(f"hsm.{key} must be above 0")
        if self.shutdown_grace_seconds < 0 or self.deletion_sweep_seconds <= 0:
            raise cfg.ConfigError("shutdown_grace_seconds must be >= 0 and deletion_sweep_seconds > 0")
        self.store.check()
        if self.metrics_listen:
            cfg.check_host_port("metrics_listen", self.metrics_listen)
        self._validate_tls()

    def _validate_tls(self) -> None:
        tls, private, ca = self.tls, self.private_endpoint, self.ca
        if any((tls.cert, tls.key, tls.client_ca)) and not all((tls.cert, tls.key, tls.client_ca)):
            raise cfg.ConfigError("tls needs cert, key and client_ca together (or none of them, for development)")
        if not tls.cert and not cfg.is_loopback(self.listen):
            raise cfg.ConfigError(
                f"listen {self.listen!r} is not a loopback address and tls is not set: a node accepts plain-text "
                "connections only on 127.0.0.1 or ::1; set tls.cert, tls.key and tls.client_ca"
            )
        if private.listen:
            if self.mode != "dedicated":
                raise cfg.ConfigError("private_endpoint is for dedicated nodes; remove it or set mode = 'dedicated'")
            cfg.check_host_port("private_endpoint.listen", private.listen)
            missing = [k for k in ("cert", "key", "client_ca", "registry_nodes") if not getattr(private, k)]
            if missing:
                raise cfg.ConfigError(
                    f"private_endpoint needs {', '.join('private_endpoint.' + k for k in missing)}: its clients "
                    "present access-point certificates, checked against the shared KMS nodes (registry_nodes)"
                )
            for endpoint in private.registry_nodes:
                cfg.check_host_port("private_endpoint.registry_nodes", endpoint)
            if not tls.cert:
                raise cfg.ConfigError("private_endpoint needs tls: the node checks credentials over mutual TLS")
            if private.credential_cache_seconds < 0:
                raise cfg.ConfigError("private_endpoint.credential_cache_seconds must be 0 or more")
            if not private.audit_path:
                raise cfg.ConfigError("private_endpoint.audit_path is empty: name the audit log file")
            if private.requests_per_second < 0 or private.burst < 1:
                raise cfg.ConfigError(
                    "private_endpoint.requests_per_second must be >= 0 (0: off) and private_endpoint.burst >= 1"
                )
        if ca.cert or ca.key:
            if self.mode != "shared":
                raise cfg.ConfigError("ca is for the shared KMS node, which issues credentials; remove it here")
            if not (ca.cert and ca.key):
                raise cfg.ConfigError("ca needs both cert and key")
        if ca.bootstrap_dir and not ca.cert:
            raise cfg.ConfigError("ca.bootstrap_dir needs ca.cert and ca.key to sign the bootstrap credential")

    def user_pin(self, environ: Mapping[str, str] | None = None) -> cfg.Secret:
        """The HSM user PIN, from the environment variable or file the config names."""
        return cfg.read_secret("HSM user PIN", self.hsm.pin_env, self.hsm.pin_file, os.environ if environ is None else environ)

    def so_pin(self, environ: Mapping[str, str] | None = None) -> cfg.Secret:
        """The HSM security-officer PIN (only `keyrelay hsm init` needs it)."""
        return cfg.read_secret("HSM SO PIN", self.hsm.so_pin_env, self.hsm.so_pin_file, os.environ if environ is None else environ)


def load_node_config(
    path: str | None, *, environ: Mapping[str, str] | None = None, overrides: Mapping[str, str] | None = None
) -> NodeConfig:
    """Load, resolve relative paths against the config file, and validate a node config."""
    if path is not None:
        _refuse_inline_pins(path)
    config = cfg.load(NodeConfig, path, env_prefix=ENV_PREFIX, environ=environ, overrides=overrides)
    config = replace(
        config,
        hsm=replace(
            config.hsm,
            pin_file=cfg.resolve_path(path, config.hsm.pin_file),
            so_pin_file=cfg.resolve_path(path, config.hsm.so_pin_file),
        ),
        store=replace(config.store, path=cfg.resolve_path(path, config.store.path)),
        tls=cfg.resolve_paths(path, config.tls, "cert", "key", "client_ca"),
        private_endpoint=cfg.resolve_paths(path, config.private_endpoint, "cert", "key", "client_ca", "audit_path"),
        ca=cfg.resolve_paths(path, config.ca, "cert", "key", "bootstrap_dir"),
    )
    config.validate()
    return config


def _refuse_inline_pins(path: str) -> None:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return  # cfg.load reports these with the right message
    hsm = data.get("hsm", {})
    if isinstance(hsm, dict) and ({"pin", "so_pin", "user_pin"} & set(hsm)):
        raise cfg.ConfigError(
            f"{path}: a PIN must not be written in the config; put it in an environment variable "
            "(hsm.pin_env) or a file readable only by the node (hsm.pin_file)"
        )
