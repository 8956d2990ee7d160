"""When the SDK retries a call: exponential backoff with jitter, bounded by a time budget.

Shared by the KMS and relay clients, synchronous and asyncio alike: they ask `Backoff.next_delay()`
how long to wait before the next attempt, or None when the budget is spent.
"""

from __future__ import annotations

import random
import time

from foundation.errors import DeadlineExceededError, UnavailableError

#: Errors after which an idempotent call may be sent again.
RETRYABLE = (UnavailableError, DeadlineExceededError)


class Backoff:
    """Delays of 0.05 s doubling to `maximum`, each jittered to 50-100 %, until `budget` seconds
    have passed since the object was made."""

    def __init__(self, budget: float, *, first: float = 0.05, maximum: float = 1.0) -> None:
        self._deadline = time.monotonic() + budget
        self._delay = first
        self._maximum = maximum

    def remaining(self) -> float:
        """Seconds left of the budget (0 when spent)."""
        return max(0.0, self._deadline - time.monotonic())

    def next_delay(self) -> float | None:
        """Seconds to wait before the next attempt, or None when no attempt fits in the budget
        (then the caller raises the error it has, rather than one of an attempt cut short)."""
        delay = self._delay * random.uniform(0.5, 1.0)
        if delay >= self.remaining():
            return None
        self._delay = min(self._delay * 2, self._maximum)
        return delay
