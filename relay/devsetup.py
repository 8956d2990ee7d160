"""Development set-up of a relay: a config on a loopback port and a `keyrelay relay` process.

Used by the end-to-end tests (and ready for `keyrelay dev up`), so that they start the relay the way
a user does.
"""

from __future__ import annotations

import os
from pathlib import Path

from client_sdk.relay_client import RelayClient
from kms_node import devsetup


def write_relay_config(path: Path, *, port: int, store: Path, extra: str = "", rate_limits: bool = False) -> Path:
    """A plain-text loopback relay config; `extra` is TOML appended to the top level. Rate limits
    and sender quotas are off unless `rate_limits` (tests and benchmarks send far faster than a person)."""
    limits = "" if rate_limits else (
        "[rate_limit]\nrequests_per_second = 0\naccount_creations_per_minute = 0\naccount_creations_per_minute_total = 0\n"
        "[sender_quota]\nmessages = 0\nbytes = 0\nall_recipients_bytes = 0\n"
    )
    path.write_text(
        f'listen = "127.0.0.1:{port}"\nshutdown_grace_seconds = 5\n{extra}\n[store]\npath = "{store}"\n{limits}'
    )
    return path


class RelayProcess:
    """`keyrelay relay` on a free loopback port, with its config, store and log in `root`."""

    def __init__(self, root: Path, extra: str = "") -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.db = root / "relay.db"
        self.log = root / "relay.log"
        self.port = devsetup.free_port()
        self.config = write_relay_config(root / "relay.toml", port=self.port, store=self.db, extra=extra)
        # Only this config decides: no KEYRELAY_RELAY_* variable of the caller's environment applies.
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYRELAY_RELAY_")}
        self.process = devsetup.NodeProcess(self.config, env, self.log, self.port, command="relay")

    @property
    def target(self) -> str:
        return self.process.target

    def start(self, timeout: float = 60.0) -> "RelayProcess":
        """Start the relay and wait until it reports SERVING."""
        self.process.start(timeout=timeout)
        return self

    def client(self, token: str | None = None, **kwargs) -> RelayClient:
        """An SDK client of this relay (retrying sends for up to 90 s unless told otherwise)."""
        kwargs.setdefault("timeout", 5)
        kwargs.setdefault("retry_seconds", 90)
        return RelayClient(self.target, device_token=token, **kwargs)
