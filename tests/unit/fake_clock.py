"""A settable clock for unit tests of code that takes a `clock` callable."""

from __future__ import annotations

T0 = 1_750_000_000.0


class Clock:
    """Returns `now`, advanced by `step` at every reading so successive times are distinct."""

    def __init__(self, now: float = T0, step: float = 0.001) -> None:
        self.now = now
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
