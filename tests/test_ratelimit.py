"""The one rate limit (corral/ratelimit.py), on a clock the test moves: a minute's worth
in a burst, then one per 60/rate seconds, never more than a minute's worth held."""

from __future__ import annotations

import pytest

from corral.ratelimit import KEPT, PerKey, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_a_minutes_worth_then_one_per_interval() -> None:
    clock = Clock()
    bucket = TokenBucket(6, clock)  # one every 10 s
    assert [bucket.take() for _ in range(7)] == [True] * 6 + [False]
    assert bucket.wait() == pytest.approx(10.0)
    clock.now += 4.0
    assert not bucket.take()
    assert bucket.wait() == pytest.approx(6.0)  # a refusal takes nothing
    clock.now += 6.0
    assert bucket.take()
    assert not bucket.take()


def test_an_idle_bucket_holds_no_more_than_a_minutes_worth() -> None:
    clock = Clock()
    bucket = TokenBucket(3, clock)
    clock.now += 3600.0
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_a_rate_below_one_a_minute_still_lets_one_through() -> None:
    clock = Clock()
    bucket = TokenBucket(0.5, clock)  # one every 2 minutes
    assert bucket.take()
    assert not bucket.take()
    assert bucket.wait() == pytest.approx(120.0)
    clock.now += 120.0
    assert bucket.wait() == 0.0
    assert bucket.admit() == 0.0
    assert bucket.admit() == pytest.approx(120.0)


def test_per_key_buckets_are_apart_and_zero_is_no_limit() -> None:
    clock = Clock()
    limits = PerKey(2, clock)
    assert [limits.admit("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(30.0)]
    assert limits.admit("b") == 0.0  # another caller's own bucket
    clock.now += 30.0
    assert limits.admit("a") == 0.0
    unlimited = PerKey(0, clock)
    assert all(unlimited.admit("a") == 0.0 for _ in range(1000))
    assert unlimited.buckets == {}


def test_per_key_keeps_the_buckets_of_the_last_minutes_callers_not_every_caller() -> None:
    """A key's bucket was kept for good, and the A2A door's anonymous callers off the host
    (`anonymous_remote`) are a key an address: one sender cycling addresses grew the daemon
    without bound (review's pass over the A2A door). A full bucket is a new one's equal,
    so those are let go once the buckets kept pass KEPT: what is kept is the callers of
    the last minute. A key let go takes as a new one would, and a key not yet refilled
    keeps its wait."""
    clock = Clock()
    limits = PerKey(2, clock)
    for n in range(3 * KEPT):
        assert limits.admit(f"10.0.{n // 256}.{n % 256}") == 0.0
    assert len(limits.buckets) == 3 * KEPT  # (within a minute: every one counts)
    limits.admit("slow")
    limits.admit("slow")
    clock.now += 60.0  # every address's bucket full again, slow's too
    assert [limits.admit("10.0.0.0") for _ in range(3)] == [0.0, 0.0,
                                                             pytest.approx(30.0)]
    # new callers: past the bound those of the minute before are let go (what is kept is
    # at most twice what a minute brought, however long the daemon runs)
    for n in range(KEPT + 2):
        assert limits.admit(f"fresh{n}") == 0.0
    assert len(limits.buckets) < 2 * KEPT, len(limits.buckets)
    assert "slow" not in limits.buckets
    assert limits.admit("10.0.0.0") == pytest.approx(30.0)  # (not full: kept, its wait)
