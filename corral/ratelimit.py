"""The one rate limit: a token bucket holding a minute's worth (at least one), refilled
continuously, so a burst is allowed and a steady rate above the limit is not. An agent's
and a tenant's task admissions, a token's HTTP requests and a gateway client's tool calls
are all limited by it."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """`per_minute` takes a minute, at most a minute's worth (at least one) in a burst.
    `clock` is monotonic seconds (a test passes its own)."""

    __slots__ = ("capacity", "clock", "per_minute", "rate", "stamp", "tokens")

    def __init__(self, per_minute: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute)
        self.clock = clock
        self.tokens = self.capacity
        self.stamp = clock()

    def _level(self, now: float) -> float:
        """The tokens there are at `now` (refilled since the last take)."""
        return min(self.capacity, self.tokens + (now - self.stamp) * self.rate)

    def take(self) -> bool:
        """Take one token if there is one (True), else leave the bucket as it is."""
        now = self.clock()
        self.tokens, self.stamp = self._level(now), now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait(self) -> float:
        """Seconds until take() passes again, at this rate (0: now)."""
        return max(0.0, (1.0 - self._level(self.clock())) / self.rate)

    def admit(self) -> float:
        """0 when one is taken now, else the seconds until one could be."""
        return 0.0 if self.take() else self.wait()


KEPT = 1024  # buckets kept before the full ones are let go


class PerKey:
    """A bucket of `per_minute` for each key (a caller); `per_minute` 0 or less: no
    limit. A key's bucket is made at its first take and kept while it is not full: a full
    one is a new one's equal, and a caller's key may be its address (the A2A door's
    anonymous callers off the host), so what is kept is the last minute's callers."""

    def __init__(self, per_minute: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.buckets: dict[str, TokenBucket] = {}
        self.sweep_at = KEPT  # (doubled past a sweep that kept more: each key a sweep's
        # cost at most once, however many arrive)

    def admit(self, key: str) -> float:
        """0 when `key` may go now (and it is counted), else the seconds until it could."""
        if self.per_minute <= 0:
            return 0.0
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.sweep_at:
                now = self.clock()
                self.buckets = {k: b for k, b in self.buckets.items()
                                if b._level(now) < b.capacity}
                self.sweep_at = max(KEPT, 2 * len(self.buckets))
            bucket = self.buckets[key] = TokenBucket(self.per_minute, self.clock)
        return bucket.admit()
