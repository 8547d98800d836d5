"""A complaint that may repeat a million times is told once per interval, with a count:
a peer that sends garbage must not turn each bad line into a log line. The first is
reported at once, the rest of the interval counted and summed up with the next one (or
by `flush`, when the source goes away)."""

from __future__ import annotations

import time
from collections.abc import Callable

INTERVAL = 10.0


class Throttle:
    def __init__(self, report: Callable[[str], None], interval: float = INTERVAL) -> None:
        self.report = report
        self.interval = interval
        self.total = 0  # every complaint, reported or not
        self._held = 0  # complaints since the last report
        self._last = ""
        self._next = 0.0

    def __call__(self, text: str) -> None:
        self.total += 1
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            self._last = text
            return
        self._next = now + self.interval
        held, self._held = self._held, 0
        self.report(text if not held else
                    f"{text} (and {held} more like it in the last {self.interval:g} s)")

    def flush(self) -> None:
        """Report what is held (the source is going away)."""
        if self._held:
            held, self._held = self._held, 0
            self.report(f"{self._last} ({held} like it since the last report)")
