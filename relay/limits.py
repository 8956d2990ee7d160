"""The relay's abuse limits besides the per-account request rate: what one sender may store, who
may create accounts how fast, and how many Subscribe streams one account keeps open.

All of them are held in this process's memory, per relay: with several replicas behind one
address, a client spreading its calls over them gets up to that many times each limit. The
mailbox limits (`MailboxLimits`), which are in the store, hold across replicas.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import OrderedDict

from foundation.errors import ResourceExhaustedError, quote
from foundation.ratelimit import TokenBucketLimiter
from relay.config import SenderQuotaConfig


def admit(limiter: TokenBucketLimiter, key: str, what: str, cost: float = 1) -> None:
    """Spend `cost` of `key`'s bucket, or raise ResourceExhaustedError saying when to retry."""
    wait = limiter.try_acquire(key, cost)
    if wait:
        raise ResourceExhaustedError(f"too many {what}; retry in {wait:.2f} s")


def address_key(address: str) -> str:
    """The key account creations are counted by: the client's IPv4 address, or the /64 of its
    IPv6 address (one host usually holds a whole /64, so a per-address limit would not hold)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an IP (a Unix socket peer): count it as it is
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class SenderQuotas:
    """Token buckets of a `SenderQuotaConfig`, keyed by (sender, recipient) and by sender.

    `charge` takes a message's share of every bucket or of none, and `refund` gives it back when
    the message turns out not to be stored (a duplicate, a full mailbox, no such recipient)."""

    def __init__(self, quota: SenderQuotaConfig) -> None:
        window = quota.window_seconds
        self._messages = TokenBucketLimiter(quota.messages / window, max(1, quota.messages))
        self._bytes = TokenBucketLimiter(quota.bytes / window, max(1, quota.bytes))
        self._total = TokenBucketLimiter(quota.all_recipients_bytes / window, max(1, quota.all_recipients_bytes))
        self._quota = quota

    def charge(self, sender: str, recipient: str, size: int) -> None:
        """Count one message of `size` bytes from `sender` to `recipient`, or raise
        ResourceExhaustedError naming the limit reached and when to retry (nothing counted)."""
        pair = f"{sender}\0{recipient}"
        spent: list[tuple[TokenBucketLimiter, str, float]] = []
        for limiter, key, cost, what in (
            (self._messages, pair, 1, f"{self._quota.messages} messages (sender_quota.messages)"),
            (self._bytes, pair, size, f"{self._quota.bytes} bytes (sender_quota.bytes)"),
            (self._total, sender, size, f"{self._quota.all_recipients_bytes} bytes to all recipients "
                                         "(sender_quota.all_recipients_bytes)"),
        ):
            wait = limiter.try_acquire(key, cost)
            if wait:
                for done, done_key, done_cost in spent:
                    done.refund(done_key, done_cost)
                whom = "" if limiter is self._total else f" to {quote(recipient)}"
                raise ResourceExhaustedError(
                    f"account {quote(sender)} has sent its quota of {what}{whom} per "
                    f"{self._quota.window_seconds:g} s; the message was not stored: retry in {wait:.1f} s"
                )
            spent.append((limiter, key, cost))

    def refund(self, sender: str, recipient: str, size: int) -> None:
        """Give back what `charge` counted for a message that was not stored."""
        self._messages.refund(f"{sender}\0{recipient}", 1)
        self._bytes.refund(f"{sender}\0{recipient}", size)
        self._total.refund(sender, size)


class Stream:
    """One Subscribe stream's registration: `wake` is set when its mailbox may hold something
    new; `replaced` once a newer stream of the account closed it."""

    __slots__ = ("wake", "replaced")

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.replaced = False


class MailboxSignals:
    """Wakes a mailbox's subscribers when a message arrives (or all of them: at shutdown, or when
    news of other relays' sends may have been lost), and keeps at most `max_streams` per account:
    registering one more replaces the oldest, which stops being woken at once.

    The oldest goes, not the newest: a device that lost its connection reconnects before the
    relay notices the old stream is dead, and must not be refused by its own stale streams. A
    hostile holder of the token gains nothing it did not have: it can read the mailbox anyway."""

    def __init__(self, max_streams: int = 16) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be at least 1 (got {max_streams})")
        self.max_streams = max_streams
        # user id -> its streams, oldest first
        self._streams: dict[str, OrderedDict[Stream, None]] = {}

    def register(self, user_id: str) -> Stream:
        """A new stream of `user_id`, replacing its oldest beyond `max_streams`."""
        stream = Stream()
        streams = self._streams.setdefault(user_id, OrderedDict())
        streams[stream] = None
        while len(streams) > self.max_streams:
            oldest, _ = streams.popitem(last=False)
            oldest.replaced = True
            oldest.wake.set()
        return stream

    def unregister(self, user_id: str, stream: Stream) -> None:
        streams = self._streams.get(user_id)
        if streams is not None:
            streams.pop(stream, None)
            if not streams:
                del self._streams[user_id]

    def notify(self, user_id: str) -> None:
        """Wake every subscriber of `user_id` (call on the event loop)."""
        for stream in self._streams.get(user_id, ()):
            stream.wake.set()

    def notify_all(self) -> None:
        for streams in self._streams.values():
            for stream in streams:
                stream.wake.set()

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._streams.values())
