"""The relay's config: a frozen dataclass loaded from TOML, `KEYRELAY_RELAY_*` and `--set` flags.

Example (see ``deploy/relay.toml``)::

    listen = "0.0.0.0:7301"

    [tls]                       # server TLS; clients authenticate with device tokens, not certificates
    cert = "relay.crt"
    key = "relay.key"

    [store]
    path = "relay.db"           # relative to this file's folder
    dsn = ""                    # or postgresql://relay@db.internal/keyrelay, shared by replicas

    [mailbox]
    max_messages = 10000
    message_ttl_seconds = 2592000   # 30 days; 0 keeps messages until acknowledged

The relay has no KMS address and no KMS credential, by design (seed 000): it holds only sealed
records and ciphertext, and a config naming the KMS is refused.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from typing import Mapping

from foundation import config as cfg

ENV_PREFIX = "KEYRELAY_RELAY"
DAY = 24 * 3600


@dataclass(frozen=True)
class ServerTlsConfig:
    """TLS of the relay's port: its certificate and key (clients need no certificate)."""

    cert: str = ""
    key: str = ""


@dataclass(frozen=True, repr=False)
class StoreConfig(cfg.StoreSettings):
    """Where the relay keeps accounts, records and mailboxes; see `StoreSettings`."""

    path: str = "keyrelay-relay.db"


@dataclass(frozen=True)
class MailboxConfig:
    """Limits and lifetime of mailboxes.

    A mailbox holding `max_messages` unacknowledged messages, or `max_bytes` of envelopes, refuses
    more with MAILBOX_FULL. A message not acknowledged within `message_ttl_seconds` is deleted (0:
    kept until acknowledged). A sender's client message id is remembered until its message expires,
    or for `dedupe_seconds` when messages do not expire, so a retry within that time stores nothing.
    """

    max_messages: int = 10_000
    max_bytes: int = 256 * 1024 * 1024
    message_ttl_seconds: float = 30 * DAY
    dedupe_seconds: float = 30 * DAY
    expiry_sweep_seconds: float = 60.0


@dataclass(frozen=True)
class RateLimitConfig:
    """Token buckets: requests per account, account creations per client address (an IPv6
    address counts by its /64) and for the whole relay; 0 turns a limit off. An account keeps at
    most `subscribe_streams_per_account` Subscribe streams open on one relay: a newer stream
    closes the oldest, so a device that reconnects is never locked out by its own stale streams."""

    requests_per_second: float = 200.0
    burst: int = 400
    account_creations_per_minute: float = 30.0
    account_creation_burst: int = 30
    account_creations_per_minute_total: float = 600.0
    subscribe_streams_per_account: int = 16


@dataclass(frozen=True)
class SenderQuotaConfig:
    """What one sender may store in one recipient's mailbox per `window_seconds` (`messages`,
    `bytes`), and in all mailboxes together (`all_recipients_bytes`), so that no sender fills a
    mailbox or the disk on its own. Token buckets refilled over the window; 0 turns a limit off."""

    window_seconds: float = 3600.0
    messages: int = 1000
    bytes: int = 64 * 1024 * 1024
    all_recipients_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class TokenConfig:
    """Device tokens expire `lifetime_seconds` after they are issued (0: never); a rotated token
    stays valid for `rotation_grace_seconds` beside its successor; `cache_seconds` is how long a
    relay trusts what it read of a token, so a revocation on another replica holds within it.
    `rotations_per_hour` limits RotateDeviceToken per account."""

    lifetime_seconds: float = 180 * DAY
    rotation_grace_seconds: float = 3600.0
    cache_seconds: float = 5.0
    rotations_per_hour: float = 10.0


@dataclass(frozen=True)
class RelayConfig:
    """Everything a relay needs to run. Validated by `validate`."""

    listen: str = "127.0.0.1:7301"
    log_level: str = "info"
    shutdown_grace_seconds: float = 10.0
    metrics_listen: str = ""
    store_threads: int = 4
    tls: ServerTlsConfig = field(default_factory=ServerTlsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    mailbox: MailboxConfig = field(default_factory=MailboxConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    sender_quota: SenderQuotaConfig = field(default_factory=SenderQuotaConfig)
    tokens: TokenConfig = field(default_factory=TokenConfig)

    def validate(self) -> None:
        """Raise ConfigError naming the key and the fix for the first problem found."""
        cfg.check_host_port("listen", self.listen)
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise cfg.ConfigError(f"log_level must be debug, info, warning or error (got {self.log_level!r})")
        if bool(self.tls.cert) != bool(self.tls.key):
            raise cfg.ConfigError("tls needs cert and key together (or neither, for development on loopback)")
        if not self.tls.cert and not cfg.is_loopback(self.listen):
            raise cfg.ConfigError(
                f"listen {self.listen!r} is not a loopback address and tls is not set: device tokens must not "
                "cross a network in plain text; set tls.cert and tls.key, or listen on 127.0.0.1"
            )
        self.store.check()
        if self.metrics_listen:
            cfg.check_host_port("metrics_listen", self.metrics_listen)
        if self.store_threads < 1:
            raise cfg.ConfigError("store_threads must be at least 1")
        box = self.mailbox
        if box.max_messages < 1 or box.max_bytes < 256 * 1024:
            raise cfg.ConfigError(
                "mailbox.max_messages must be at least 1 and mailbox.max_bytes at least 262144 (one envelope)"
            )
        if box.message_ttl_seconds < 0:
            raise cfg.ConfigError("mailbox.message_ttl_seconds must be 0 (keep until acknowledged) or more")
        if box.dedupe_seconds <= 0 or box.expiry_sweep_seconds <= 0:
            raise cfg.ConfigError("mailbox.dedupe_seconds and mailbox.expiry_sweep_seconds must be above 0")
        if self.shutdown_grace_seconds < 0:
            raise cfg.ConfigError("shutdown_grace_seconds must be 0 or more")
        limit = self.rate_limit
        if (
            min(limit.requests_per_second, limit.account_creations_per_minute, limit.account_creations_per_minute_total) < 0
            or limit.burst < 1 or limit.account_creation_burst < 1
        ):
            raise cfg.ConfigError(
                "rate_limit.requests_per_second, rate_limit.account_creations_per_minute and "
                "rate_limit.account_creations_per_minute_total must be >= 0 (0: off), and rate_limit.burst and "
                "rate_limit.account_creation_burst >= 1"
            )
        if limit.subscribe_streams_per_account < 1:
            raise cfg.ConfigError("rate_limit.subscribe_streams_per_account must be at least 1")
        quota = self.sender_quota
        if quota.window_seconds <= 0 or quota.messages < 0:
            raise cfg.ConfigError("sender_quota.window_seconds must be above 0 and sender_quota.messages >= 0 (0: off)")
        for name in ("bytes", "all_recipients_bytes"):
            value = getattr(quota, name)
            if value != 0 and value < 256 * 1024:
                raise cfg.ConfigError(f"sender_quota.{name} must be 0 (off) or at least 262144 (one envelope)")
        tokens = self.tokens
        if min(tokens.lifetime_seconds, tokens.rotation_grace_seconds, tokens.cache_seconds, tokens.rotations_per_hour) < 0:
            raise cfg.ConfigError(
                "tokens.lifetime_seconds, tokens.rotation_grace_seconds, tokens.cache_seconds and "
                "tokens.rotations_per_hour must be 0 or more"
            )
        if tokens.lifetime_seconds and tokens.lifetime_seconds < 2 * max(tokens.rotation_grace_seconds, 60):
            raise cfg.ConfigError(
                "tokens.lifetime_seconds must be 0 (never expire) or at least twice tokens.rotation_grace_seconds "
                "(and 120 s): clients rotate a token when half its lifetime is gone"
            )


def load_relay_config(
    path: str | None, *, environ: Mapping[str, str] | None = None, overrides: Mapping[str, str] | None = None
) -> RelayConfig:
    """Load, resolve relative paths against the config file, and validate a relay config."""
    if path is not None:
        _refuse_kms_settings(path)
    config = cfg.load(RelayConfig, path, env_prefix=ENV_PREFIX, environ=environ, overrides=overrides)
    config = replace(
        config,
        tls=cfg.resolve_paths(path, config.tls, "cert", "key"),
        store=cfg.resolve_paths(path, config.store, "path"),
    )
    config.validate()
    return config


def _refuse_kms_settings(path: str) -> None:
    """Say why a KMS setting does not belong here, rather than only "unknown key"."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return  # cfg.load reports these with the right message
    kms_keys = sorted(k for k in data if k.lower().startswith(("kms", "gateway", "shared_nodes")))
    if kms_keys:
        raise cfg.ConfigError(
            f"{path}: {', '.join(kms_keys)}: the relay never talks to the KMS and holds no KMS address or "
            "credential; clients seal and open records with the KMS themselves. Remove these keys."
        )
