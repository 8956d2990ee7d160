"""A token-bucket rate limiter with one bucket per key (tenant, access point, peer ...).

Each key may spend up to `burst` tokens at once; its bucket refills at `rate_per_second`. A refused
call spends nothing and learns how long to wait. Memory stays bounded: buckets live in LRU order,
the least recently used is dropped beyond `max_keys`, and a bucket that has refilled completely is
dropped as soon as it is the oldest (it behaves exactly like a new one).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable


class TokenBucketLimiter:
    """Per-key token buckets: `try_acquire(key)` is 0.0 when allowed, else seconds to wait.

    A `rate_per_second` of 0 or less means unlimited. Safe to call from several threads.
    """

    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if rate_per_second > 0 and burst < 1:
            raise ValueError(f"burst must be at least 1 (got {burst})")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1 (got {max_keys})")
        self.rate = float(rate_per_second)
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        # key -> (tokens, time of the last refill); least recently used first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def __len__(self) -> int:
        """The number of buckets held."""
        return len(self._buckets)

    def __bool__(self) -> bool:
        # A limiter is true even while it holds no bucket (`__len__` alone would make a fresh one
        # false, and `limiter or default` would silently drop it).
        return True

    def try_acquire(self, key: str, cost: float = 1) -> float:
        """Spend `cost` tokens of `key`'s bucket: 0.0 when allowed, else the seconds until the
        bucket holds enough (nothing is spent then).

        Raises ValueError for a negative cost or one above `burst`, which could never be allowed.
        """
        if self.unlimited:
            return 0.0
        if not 0 <= cost <= self.burst:
            raise ValueError(f"cost must be between 0 and the burst {self.burst} (got {cost})")
        with self._lock:
            now = self._clock()
            tokens = self._refill(self._buckets.pop(key, None), now)
            if tokens >= cost:
                tokens -= cost
                wait = 0.0
            else:
                wait = (cost - tokens) / self.rate
            self._buckets[key] = (tokens, now)
            self._drop_idle(now)
            return wait

    def refund(self, key: str, cost: float = 1) -> None:
        """Give back `cost` tokens spent by `try_acquire(key, cost)` for a call that then did
        nothing (a bucket never holds more than `burst`)."""
        if self.unlimited:
            return
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is not None:
                now = self._clock()
                self._buckets[key] = (min(float(self.burst), self._refill(bucket, now) + cost), now)

    def _refill(self, bucket: tuple[float, float] | None, now: float) -> float:
        if bucket is None:
            return float(self.burst)
        tokens, updated = bucket
        return min(float(self.burst), tokens + max(0.0, now - updated) * self.rate)

    def _drop_idle(self, now: float) -> None:
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        while self._buckets:
            oldest = next(iter(self._buckets.values()))
            if self._refill(oldest, now) < self.burst:
                break
            self._buckets.popitem(last=False)
