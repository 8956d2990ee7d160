"""The state a `Messenger` keeps beside its device file to apply its `MessengerPolicy`.

Two files, encrypted like the device file (see `client_sdk.device_keys`):

- `NAME.seen` (format version 2): the messages taken within the message TTL (`SeenWindow`) and
  the deliveries of envelopes whose sender's record the KMS refused (`RefusedDeliveries`). Saved
  before each batch of acknowledgements, so that an acknowledged message is always remembered.
  Version 1, written by SDKs before this policy, is a list of (sender, message id) pairs: it is
  read, each pair kept for a whole TTL from then, and replaced by version 2 at the next save.
- `NAME.peers` (format version 1): each peer's highest record version (`PeerVersions`). Saved as
  soon as a version rises, merged under the device file's lock with what other processes of the
  device saved, so that a process never lowers what another one saw.

A file that is absent or does not decrypt reads as empty, and so, with a warning, does one whose
version or content this SDK does not read: the device then knows what a new device knows.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from client_sdk.device_keys import DeviceKeys
from client_sdk.messenger_policy import (
    Freshness,
    MessengerPolicy,
    PeerVersions,
    RefusedDeliveries,
    SeenWindow,
    Superseded,
)

log = logging.getLogger(__name__)

SEEN_VERSION = 2
PEERS_VERSION = 1
_LEGACY_SEEN_VERSION = 1
_BAD_STATE = (ValueError, KeyError, TypeError, AttributeError)


class MessengerState:
    """The policy's bookkeeping for one Messenger, thread-safe; `wall_clock` gives Unix seconds."""

    def __init__(self, device: DeviceKeys, policy: MessengerPolicy, wall_clock: Callable[[], float]) -> None:
        self._device = device
        self._policy = policy
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._dirty = False
        now = wall_clock()
        self._seen, self._refused = self._load_seen(now)
        self._peers = self._load_peers()

    @property
    def policy(self) -> MessengerPolicy:
        return self._policy

    # -- peers' versions ----------------------------------------------------------------------

    def newest(self, peer: str) -> int:
        """The highest record version of `peer` this device has seen (0: none)."""
        with self._lock:
            return self._peers.newest(peer)

    def superseded(self, peer: str, version: int) -> Superseded | None:
        """Why a signature by `peer`'s `version` is refused now (None: it is accepted)."""
        with self._lock:
            return self._peers.superseded(peer, version, self._wall(), self._policy.superseded_grace_seconds)

    def observe(self, peer: str, version: int) -> None:
        """Note that `peer`'s record `version` opened; a new highest is saved at once."""
        grace = self._policy.superseded_grace_seconds
        with self._lock:
            now = self._wall()
            if not self._peers.observe(peer, version, now, grace):
                return
            mine = PeerVersions.from_json(self._peers.to_json(now, grace))

        def merge(stored: tuple[int, Any] | None) -> tuple[int, Any]:
            merged = self._read_peers(stored)
            merged.merge(mine)
            return PEERS_VERSION, merged.to_json(now, grace)

        try:
            _, content = self._device.update_peers(merge)
        except OSError as exc:
            log.warning("could not save the peers file %s: %s", self._device.peers_path, exc.strerror)
            return
        with self._lock:  # what other processes of this device saw, too
            self._peers.merge(PeerVersions.from_json(content))

    # -- messages -------------------------------------------------------------------------------

    def freshness(self, sender: str, message_id: str, send_time: float, relay_id: str) -> Freshness:
        """Whether a verified envelope is new, a repeat, or too old or too new to accept."""
        with self._lock:
            return self._seen.check(sender, message_id, send_time, relay_id, self._wall())

    def take(self, sender: str, message_id: str, send_time: float, relay_id: str) -> None:
        """Remember a message the application has taken (saved by the next `save`)."""
        with self._lock:
            self._seen.add(sender, message_id, send_time, relay_id, self._wall())
            self._refused.forget(relay_id)
            self._dirty = True

    def refused_delivery(self, relay_id: str) -> int:
        """Count a delivery of an envelope whose sender's record the KMS refused; returns how many
        there have been, and stops counting once the policy drops it."""
        with self._lock:
            deliveries = self._refused.count(relay_id, self._wall())
            if deliveries >= self._policy.refused_deliveries:
                self._refused.forget(relay_id)
            self._dirty = True
            return deliveries

    def save(self) -> None:
        """Write the seen-messages file if anything changed (logs, and carries on, if it cannot)."""
        with self._lock:
            if not self._dirty:
                return
            now = self._wall()
            content = {
                "seen": self._seen.to_json(now),
                "refused": self._refused.to_json(now, self._policy.message_ttl_seconds),
            }
            self._dirty = False
        try:
            self._device.save_seen(content, SEEN_VERSION)
        except OSError as exc:
            log.warning("could not save the seen-messages file %s: %s", self._device.seen_path, exc.strerror)

    # -- loading -------------------------------------------------------------------------------

    def _load_seen(self, now: float) -> tuple[SeenWindow, RefusedDeliveries]:
        p = self._policy
        window = (p.message_ttl_seconds, p.clock_skew_seconds, p.seen_limit)
        stored = self._device.load_seen()
        try:
            if stored is not None and stored[0] == SEEN_VERSION:
                content = stored[1]
                return (
                    SeenWindow.from_json(content["seen"], now, *window),
                    RefusedDeliveries.from_json(content["refused"], p.seen_limit),
                )
            if stored is not None and stored[0] == _LEGACY_SEEN_VERSION:
                self._dirty = True  # written again in this version at the next save
                return SeenWindow.from_pairs(list(stored[1])[-p.seen_limit:], now, *window), RefusedDeliveries(p.seen_limit)
        except _BAD_STATE:
            pass
        if stored is not None:
            log.warning("the seen-messages file %s is not one this SDK reads: starting afresh", self._device.seen_path)
        return SeenWindow(*window), RefusedDeliveries(p.seen_limit)

    def _load_peers(self) -> PeerVersions:
        return self._read_peers(self._device.load_peers())

    def _read_peers(self, stored: tuple[int, Any] | None) -> PeerVersions:
        if stored is None:
            return PeerVersions()
        try:
            if stored[0] == PEERS_VERSION:
                return PeerVersions.from_json(stored[1])
        except _BAD_STATE:
            pass
        log.warning("the peers file %s is not one this SDK reads: starting afresh", self._device.peers_path)
        return PeerVersions()
