"""The token-bucket limiter on a fake clock: bursts, refusals with a retry-after, refill, the
unlimited setting and the bound on the number of buckets."""

from __future__ import annotations

import threading

import pytest

from foundation.ratelimit import TokenBucketLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


def test_burst_then_refusal_with_retry_after(clock):
    limiter = TokenBucketLimiter(5, burst=3, clock=clock)
    assert [limiter.try_acquire("acme") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.try_acquire("acme") == pytest.approx(0.2)
    clock.advance(0.1)
    assert limiter.try_acquire("acme") == pytest.approx(0.1)


def test_refill_is_gradual_and_capped_at_the_burst(clock):
    limiter = TokenBucketLimiter(10, burst=2, clock=clock)
    limiter.try_acquire("acme", cost=2)
    clock.advance(0.1)
    assert limiter.try_acquire("acme") == 0.0
    assert limiter.try_acquire("acme") > 0
    clock.advance(3600)
    assert [limiter.try_acquire("acme") for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]


def test_a_refusal_spends_nothing(clock):
    limiter = TokenBucketLimiter(1, burst=4, clock=clock)
    limiter.try_acquire("acme", cost=3)
    assert limiter.try_acquire("acme", cost=4) == pytest.approx(3.0)
    assert limiter.try_acquire("acme", cost=1) == 0.0


def test_keys_have_their_own_buckets(clock):
    limiter = TokenBucketLimiter(1, burst=1, clock=clock)
    assert limiter.try_acquire("acme") == 0.0
    assert limiter.try_acquire("acme") > 0
    assert limiter.try_acquire("globex") == 0.0


@pytest.mark.parametrize("rate", [0, -1])
def test_zero_or_negative_rate_is_unlimited(clock, rate):
    limiter = TokenBucketLimiter(rate, burst=0, clock=clock)
    assert all(limiter.try_acquire("acme", cost=1000) == 0.0 for _ in range(1000))
    assert len(limiter) == 0


def test_a_cost_above_the_burst_is_refused_loudly(clock):
    limiter = TokenBucketLimiter(1, burst=2, clock=clock)
    with pytest.raises(ValueError, match="burst"):
        limiter.try_acquire("acme", cost=3)


def test_bucket_count_stays_within_max_keys(clock):
    limiter = TokenBucketLimiter(1, burst=5, clock=clock, max_keys=10)
    for i in range(100):
        limiter.try_acquire(f"tenant-{i}")
        assert len(limiter) <= 10
    # The most recently used keys keep their (partly spent) buckets.
    limiter.try_acquire("tenant-99", cost=4)
    assert limiter.try_acquire("tenant-99") > 0


def test_recently_used_keys_survive_eviction(clock):
    limiter = TokenBucketLimiter(1, burst=1, clock=clock, max_keys=3)
    limiter.try_acquire("busy")
    for i in range(10):
        assert limiter.try_acquire("busy") > 0  # refused, but touched: stays most recent
        limiter.try_acquire(f"other-{i}")
    assert limiter.try_acquire("busy") > 0


def test_refilled_buckets_are_dropped(clock):
    limiter = TokenBucketLimiter(10, burst=5, clock=clock)
    for i in range(50):
        limiter.try_acquire(f"tenant-{i}")
    clock.advance(60)
    limiter.try_acquire("late")
    assert len(limiter) == 1


def test_threads_never_spend_more_than_the_burst(clock):
    limiter = TokenBucketLimiter(1, burst=100, clock=clock)
    allowed = []

    def spend() -> None:
        allowed.extend(1 for _ in range(50) if limiter.try_acquire("acme") == 0.0)

    threads = [threading.Thread(target=spend) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(allowed) == 100


def test_a_limiter_without_buckets_is_still_true():
    """`limiter or default` must keep a limiter that has not seen a key yet."""
    limiter = TokenBucketLimiter(1, 1)
    assert len(limiter) == 0 and bool(limiter)
