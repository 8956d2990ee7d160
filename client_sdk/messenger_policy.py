"""What a `Messenger` refuses from a hostile relay or sender, and what it remembers to do so.

`MessengerPolicy` holds the settings; the rest is the bookkeeping behind them, pure logic on
times given by the caller (wall-clock seconds), with no I/O: the messenger persists it, encrypted,
beside the device file.

- `PeerVersions`: the highest directory record version seen of each peer, and when each newer
  version was first seen. A lower "newest" record is a rollback; a signature by a version below
  the highest is accepted only for `superseded_grace_seconds` after a newer one was first seen.
- `SeenWindow`: the (sender, message id) of every message taken whose send time is within
  `message_ttl_seconds`, at most `seen_limit` of them. An envelope is new, a repeat of a taken
  one (redelivered by the relay under the same relay id, or replayed under another), or too old
  to tell, and then refused. When the limit forces an entry out before its time, the sender's
  *horizon* rises to its send time: nothing of that sender's sent at or before it is accepted
  again, so no replay ever gets through, whatever the limit.
- `RefusedDeliveries`: how often each envelope whose sender's record the KMS would not open has
  been delivered, so that it is dropped after `refused_deliveries` deliveries.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, Iterable

DAY = 24 * 3600.0
#: How many peers' versions are remembered; the peer whose newest version was seen longest ago
#: is forgotten first.
PEER_LIMIT = 10_000


@dataclass(frozen=True)
class MessengerPolicy:
    """How a `Messenger` treats old, repeated, rolled-back and undeliverable messages.

    Attributes:
        message_ttl_seconds: an envelope whose signed send time is older than this is refused
            (`envelope-too-old`), and a taken message's id is remembered this long. The relay's
            default `mailbox.message_ttl_seconds`, 30 days: an envelope older than that cannot
            be a genuine one still waiting in the mailbox.
        clock_skew_seconds: how far a sender's clock may be ahead of this device's (an envelope
            sent further in the future is refused, `envelope-from-future`) or behind it (added to
            the TTL).
        seen_limit: at most this many message ids are remembered: the relay's default
            `mailbox.max_messages`.
        superseded_grace_seconds: after this device first sees a peer's version N+1, signatures
            by N (messages that were in flight) are accepted this long, then refused
            (`superseded-sender-version`).
        refused_deliveries: an envelope whose sender's record the KMS will not open (a record
            sealed under a key that does not exist or that this credential may not use) is kept
            in the mailbox for another try until it has been delivered this often, then dropped
            (acknowledged). 1 drops it at once.
        refusal_cache_seconds: a sender's record version that failed to open is not sent to the
            KMS again for this long (per Messenger): one bad sender costs one KMS call, not one
            per message.
    """

    message_ttl_seconds: float = 30 * DAY
    clock_skew_seconds: float = 300.0
    seen_limit: int = 10_000
    superseded_grace_seconds: float = DAY
    refused_deliveries: int = 2
    refusal_cache_seconds: float = 300.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"MessengerPolicy.{item.name} must be a finite number, not {value!r}")
        if self.message_ttl_seconds <= 0:
            raise ValueError("MessengerPolicy.message_ttl_seconds must be above 0: the window needs an end")
        if self.clock_skew_seconds < 0 or self.superseded_grace_seconds < 0 or self.refusal_cache_seconds < 0:
            raise ValueError(
                "MessengerPolicy.clock_skew_seconds, superseded_grace_seconds and refusal_cache_seconds must be 0 or more"
            )
        if not isinstance(self.seen_limit, int) or self.seen_limit < 1:
            raise ValueError("MessengerPolicy.seen_limit must be a whole number of at least 1")
        if not isinstance(self.refused_deliveries, int) or self.refused_deliveries < 1:
            raise ValueError("MessengerPolicy.refused_deliveries must be a whole number of at least 1")


# -- peers' versions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Superseded:
    """Why a version is no longer accepted: `version` replaced it, first seen at `since`
    (wall-clock seconds; None: longer ago than the grace period, and no longer recorded)."""

    version: int
    since: float | None


class _Peer:
    __slots__ = ("newest", "floor", "raised")

    def __init__(self, newest: int = 0, floor: int = 0, raised: dict[int, float] | None = None) -> None:
        self.newest = newest  # the highest version seen
        self.floor = floor  # versions below it are refused outright: their grace has run out
        self.raised = raised or {}  # version -> when first seen, while its grace runs


class PeerVersions:
    """The highest directory record version seen of each peer (see the module docstring)."""

    def __init__(self, limit: int = PEER_LIMIT) -> None:
        self._limit = limit
        self._peers: OrderedDict[str, _Peer] = OrderedDict()

    def newest(self, peer: str) -> int:
        """The highest version seen of `peer` (0: none)."""
        state = self._peers.get(peer)
        return state.newest if state else 0

    def superseded(self, peer: str, version: int, now: float, grace: float) -> Superseded | None:
        """Why a signature by `peer`'s `version` is refused at `now`, or None if it is accepted: it
        is the newest seen (or newer), or a newer one was first seen less than `grace` ago."""
        state = self._peers.get(peer)
        if state is None or version >= state.newest:
            return None
        if version < state.floor:
            return Superseded(state.floor, None)
        newer = [(since, v) for v, since in state.raised.items() if v > version]
        if not newer:
            return Superseded(state.newest, None)
        since, by = min(newer)
        return None if now - since < grace else Superseded(by, since)

    def observe(self, peer: str, version: int, now: float, grace: float) -> bool:
        """Note that `peer`'s `version` exists (its record opened); True if it is a new highest."""
        state = self._peers.get(peer)
        if state is not None and version <= state.newest:
            return False
        if state is None:
            state = self._peers[peer] = _Peer()
        state.newest = version
        state.raised[version] = now
        self._peers.move_to_end(peer)
        self._prune(now, grace)
        return True

    def merge(self, other: "PeerVersions") -> None:
        """Take in what `other` (another process's record) knows: the higher versions, the higher
        floors, the earlier first sightings."""
        for peer, theirs in other._peers.items():
            mine = self._peers.setdefault(peer, _Peer())
            mine.newest, mine.floor = max(mine.newest, theirs.newest), max(mine.floor, theirs.floor)
            for version, since in theirs.raised.items():
                mine.raised[version] = min(since, mine.raised.get(version, since))
            mine.raised = {v: t for v, t in mine.raised.items() if v >= mine.floor}
        while len(self._peers) > self._limit:
            self._peers.popitem(last=False)

    def _prune(self, now: float, grace: float) -> None:
        for state in self._peers.values():
            for version, since in list(state.raised.items()):
                if now - since >= grace:
                    state.floor = max(state.floor, version)
                    del state.raised[version]
        while len(self._peers) > self._limit:
            self._peers.popitem(last=False)

    def to_json(self, now: float, grace: float) -> dict[str, Any]:
        self._prune(now, grace)
        return {
            peer: {"newest": s.newest, "floor": s.floor, "raised": [[v, t] for v, t in sorted(s.raised.items())]}
            for peer, s in self._peers.items()
        }

    @classmethod
    def from_json(cls, data: Any, limit: int = PEER_LIMIT) -> "PeerVersions":
        """Read `to_json`'s output; ValueError if it is not that."""
        versions = cls(limit)
        if not isinstance(data, dict):
            raise ValueError("not a table of peers")
        for peer, item in data.items():
            raised = {_version(v): _time(t) for v, t in item["raised"]}
            versions._peers[str(peer)] = _Peer(_version(item["newest"]), _version(item["floor"], 0), raised)
        return versions


def _version(value: Any, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError("bad version")
    return value


def _time(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("bad time")
    return float(value)


# -- seen messages --------------------------------------------------------------------------------


class Freshness(Enum):
    """What `SeenWindow.check` makes of an envelope."""

    NEW = "new"
    #: The relay delivered a taken message again under its relay id (its acknowledgement was lost).
    REDELIVERED = "redelivered"
    #: A taken message under another relay id: stored again, by a relay replaying it.
    REPLAYED = "replayed"
    #: Sent longer ago than the message TTL (and the clock skew).
    EXPIRED = "expired"
    #: Sent no later than a message of its sender's that the seen limit made this device forget.
    FORGOTTEN = "forgotten"
    #: Sent further in the future than the clock skew allows.
    FUTURE = "future"


class SeenWindow:
    """The messages taken within the message TTL (see the module docstring)."""

    def __init__(self, ttl: float, skew: float, limit: int) -> None:
        self._ttl, self._skew, self._limit = ttl, skew, limit
        self._entries: dict[tuple[str, str], tuple[float, str]] = {}  # (sender, id) -> (send time, relay id)
        self._heap: list[tuple[float, str, str]] = []  # (send time, sender, id), the oldest first
        self._horizons: dict[str, float] = {}  # sender -> newest send time forgotten for the limit
        self._horizon = -math.inf  # the same for senders whose horizon was itself forgotten

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, sender: str, message_id: str, send_time: float, relay_id: str, now: float) -> Freshness:
        """What an envelope taken now would be; changes nothing."""
        if send_time > now + self._skew:
            return Freshness.FUTURE
        if send_time < now - self._ttl - self._skew:
            return Freshness.EXPIRED
        entry = self._entries.get((sender, message_id))
        if entry is not None:
            # An entry from before relay ids were kept ("") cannot tell; it is dropped quietly.
            return Freshness.REDELIVERED if entry[1] in ("", relay_id) else Freshness.REPLAYED
        if send_time <= max(self._horizons.get(sender, -math.inf), self._horizon):
            return Freshness.FORGOTTEN
        return Freshness.NEW

    def add(self, sender: str, message_id: str, send_time: float, relay_id: str, now: float) -> None:
        """Remember a taken message; forget what has expired, and the oldest beyond the limit."""
        key = (sender, message_id)
        if key not in self._entries:
            heapq.heappush(self._heap, (send_time, sender, message_id))
        self._entries[key] = (send_time, relay_id)
        self._expire(now)
        while len(self._entries) > self._limit:
            oldest, sender_out, id_out = heapq.heappop(self._heap)
            del self._entries[(sender_out, id_out)]
            self._horizons[sender_out] = max(oldest, self._horizons.get(sender_out, -math.inf))
        self._bound_horizons()

    def _bound_horizons(self) -> None:
        # Past the limit the lowest horizons merge into the one for every sender: stricter, never laxer.
        while len(self._horizons) > self._limit:
            out = min(self._horizons, key=self._horizons.__getitem__)
            self._horizon = max(self._horizon, self._horizons.pop(out))

    def _expire(self, now: float) -> None:
        cutoff = now - self._ttl - self._skew
        while self._heap and self._heap[0][0] < cutoff:
            _, sender, message_id = heapq.heappop(self._heap)
            del self._entries[(sender, message_id)]

    def _expire_horizons(self, now: float) -> None:
        # An expired horizon no longer matters: `check` refuses what it covered as EXPIRED.
        cutoff = now - self._ttl - self._skew
        for sender in [s for s, t in self._horizons.items() if t < cutoff]:
            del self._horizons[sender]
        if self._horizon < cutoff:
            self._horizon = -math.inf

    def to_json(self, now: float) -> dict[str, Any]:
        self._expire(now)
        self._expire_horizons(now)
        entries = sorted((t, s, m, self._entries[(s, m)][1]) for t, s, m in self._heap)
        return {
            "entries": [[s, m, t, r] for t, s, m, r in entries],
            "horizons": dict(self._horizons),
            "horizon": None if self._horizon == -math.inf else self._horizon,
        }

    @classmethod
    def from_json(cls, data: Any, now: float, ttl: float, skew: float, limit: int) -> "SeenWindow":
        """Read `to_json`'s output (with another limit, the oldest go); ValueError if it is not that."""
        window = cls(ttl, skew, limit)
        for sender, message_id, send_time, relay_id in data["entries"]:
            window.add(str(sender), str(message_id), _time(send_time), str(relay_id), now)
        for sender, horizon in data["horizons"].items():
            window._horizons[str(sender)] = max(_time(horizon), window._horizons.get(str(sender), -math.inf))
        if data["horizon"] is not None:
            window._horizon = max(window._horizon, _time(data["horizon"]))
        window._bound_horizons()
        window._expire_horizons(now)
        return window

    @classmethod
    def from_pairs(cls, pairs: Iterable[Any], now: float, ttl: float, skew: float, limit: int) -> "SeenWindow":
        """The window of an older SDK's list of (sender, message id) pairs, oldest first: their send
        times are unknown, so each is kept a whole TTL from `now`, and repeats are dropped quietly."""
        window = cls(ttl, skew, limit)
        for sender, message_id in pairs:
            window.add(str(sender), str(message_id), now, "", now)
        return window


# -- envelopes the KMS would not open -------------------------------------------------------------


class RefusedDeliveries:
    """Per relay message id, how often an envelope whose sender's record the KMS refused has been
    delivered, and when first; at most `limit` of them (the oldest go first)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._counts: OrderedDict[str, list] = OrderedDict()  # relay id -> [deliveries, first time]

    def __len__(self) -> int:
        return len(self._counts)

    def count(self, relay_id: str, now: float) -> int:
        """Count one more refused delivery of `relay_id`; returns how many there have been."""
        item = self._counts.setdefault(relay_id, [0, now])
        item[0] += 1
        while len(self._counts) > self._limit:
            self._counts.popitem(last=False)
        return item[0]

    def forget(self, relay_id: str) -> bool:
        """Stop counting `relay_id` (it was acknowledged); True if it was counted."""
        return self._counts.pop(relay_id, None) is not None

    def to_json(self, now: float, ttl: float) -> list[list]:
        for relay_id in [r for r, (_, first) in self._counts.items() if first < now - ttl]:
            del self._counts[relay_id]  # the relay has let it expire by now
        return [[relay_id, n, first] for relay_id, (n, first) in self._counts.items()]

    @classmethod
    def from_json(cls, data: Any, limit: int) -> "RefusedDeliveries":
        refused = cls(limit)
        for relay_id, n, first in data:
            refused._counts[str(relay_id)] = [_version(n), _time(first)]
        while len(refused._counts) > limit:
            refused._counts.popitem(last=False)
        return refused
