"""The gateway's config: a frozen dataclass loaded from TOML, `KEYRELAY_GATEWAY_*` and `--set` flags.

Example (see ``deploy/gateway.toml``)::

    shared_nodes = ["10.0.1.11:7101", "10.0.1.12:7101"]   # internal ports of the shared KMS replicas

    [listeners]                 # one TLS port per network zone
    public = "0.0.0.0:7443"
    vpc = "10.0.0.5:7444"

    [zone_cidrs]                # a client in one of these ranges is in that zone, whichever port it used
    vpc = ["10.0.0.0/8"]

    [tls]                       # what clients see: server certificate, and the KMS CA issuing credentials
    cert = "gateway.crt"
    key = "gateway.key"
    client_ca = "kms-ca.crt"

    [internal]                  # mutual TLS to the nodes, under the internal CA
    ca = "internal-ca.crt"
    cert = "keyrelay-gateway.crt"
    key = "keyrelay-gateway.key"
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Mapping

from foundation import config as cfg
from foundation.access_policy import valid_zone

ENV_PREFIX = "KEYRELAY_GATEWAY"


@dataclass(frozen=True)
class ServerTlsConfig:
    """TLS of the client-facing listeners."""

    cert: str = ""
    key: str = ""
    client_ca: str = ""


@dataclass(frozen=True)
class InternalTlsConfig:
    """Mutual TLS from the gateway to the nodes."""

    ca: str = ""
    cert: str = ""
    key: str = ""


@dataclass(frozen=True)
class AuditConfig:
    """The hash-chained audit log: one JSON line per request."""

    path: str = "keyrelay-audit.log"


@dataclass(frozen=True)
class RateLimitConfig:
    """Per-tenant token bucket; requests_per_second = 0 turns it off."""

    requests_per_second: float = 1000.0
    burst: int = 2000


@dataclass(frozen=True)
class GatewayConfig:
    """Everything a gateway needs to run. Validated by `validate`."""

    listeners: dict[str, str] = field(default_factory=lambda: {"public": "127.0.0.1:7443"})
    zone_cidrs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    shared_nodes: tuple[str, ...] = ("127.0.0.1:7101",)
    log_level: str = "info"
    shutdown_grace_seconds: float = 10.0
    metrics_listen: str = ""
    default_timeout_seconds: float = 10.0
    registry_cache_seconds: float = 30.0
    registry_negative_cache_seconds: float = 2.0
    credential_cache_seconds: float = 5.0
    health_check_seconds: float = 2.0
    tls: ServerTlsConfig = field(default_factory=ServerTlsConfig)
    internal: InternalTlsConfig = field(default_factory=InternalTlsConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)

    def validate(self) -> None:
        """Raise ConfigError naming the key and the fix for the first problem found."""
        if not self.listeners:
            raise cfg.ConfigError('listeners is empty: name at least one zone, e.g. [listeners] public = "0.0.0.0:7443"')
        for zone, listen in self.listeners.items():
            if not valid_zone(zone):
                raise cfg.ConfigError(f"listeners.{zone}: zone names are 1-32 of a-z, 0-9 and '-'")
            cfg.check_host_port(f"listeners.{zone}", listen)
        for zone, cidrs in self.zone_cidrs.items():
            if not valid_zone(zone):
                raise cfg.ConfigError(f"zone_cidrs.{zone}: zone names are 1-32 of a-z, 0-9 and '-'")
            for cidr in cidrs:
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    raise cfg.ConfigError(f"zone_cidrs.{zone}: {cidr!r} is not a CIDR such as 10.0.0.0/8") from None
        if not self.shared_nodes:
            raise cfg.ConfigError("shared_nodes is empty: list the internal host:port of each shared KMS replica")
        for endpoint in self.shared_nodes:
            cfg.check_host_port("shared_nodes", endpoint)
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise cfg.ConfigError(f"log_level must be debug, info, warning or error (got {self.log_level!r})")
        for name in ("tls.cert", "tls.key", "tls.client_ca", "internal.ca", "internal.cert", "internal.key"):
            section, key = name.split(".")
            if not getattr(getattr(self, section), key):
                raise cfg.ConfigError(
                    f"{name} is not set: the gateway serves clients over TLS with client certificates and "
                    "talks to nodes over mutual TLS (`keyrelay pki` makes the certificates)"
                )
        if self.metrics_listen:
            cfg.check_host_port("metrics_listen", self.metrics_listen)
        for key in ("default_timeout_seconds", "health_check_seconds"):
            if getattr(self, key) <= 0:
                raise cfg.ConfigError(f"{key} must be above 0")
        for key in (
            "registry_cache_seconds", "registry_negative_cache_seconds", "credential_cache_seconds",
            "shutdown_grace_seconds",
        ):
            if getattr(self, key) < 0:
                raise cfg.ConfigError(f"{key} must be 0 or more")
        if self.rate_limit.requests_per_second < 0 or self.rate_limit.burst < 1:
            raise cfg.ConfigError("rate_limit.requests_per_second must be >= 0 (0: off) and rate_limit.burst >= 1")
        if not self.audit.path:
            raise cfg.ConfigError("audit.path is empty: name the audit log file")


def load_gateway_config(
    path: str | None, *, environ: Mapping[str, str] | None = None, overrides: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Load, resolve relative paths against the config file, and validate a gateway config."""
    config = cfg.load(GatewayConfig, path, env_prefix=ENV_PREFIX, environ=environ, overrides=overrides)
    config = replace(
        config,
        tls=cfg.resolve_paths(path, config.tls, "cert", "key", "client_ca"),
        internal=cfg.resolve_paths(path, config.internal, "ca", "cert", "key"),
        audit=cfg.resolve_paths(path, config.audit, "path"),
    )
    config.validate()
    return config
