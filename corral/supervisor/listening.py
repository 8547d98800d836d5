"""How long the loop was able to listen: monotonic time minus the loop's own stalls.

A worker's silence is its fault only for the time corral could read its pipe: in a stalled
loop a pong sits unread while the heartbeat timer fires late. So the heartbeat loop
measures how late each tick woke up, and hang detection's clock leaves that out.
"""

from __future__ import annotations

import time

# a tick this late is a stall worth telling the operator about
STALL_REPORTED = 1.0


class ListeningClock:
    def __init__(self) -> None:
        self.stalled = 0.0  # seconds the loop could not listen, in total
        self.stalls = 0  # ticks that came at least STALL_REPORTED late
        self.longest = 0.0

    def now(self) -> float:
        """A monotonic clock that stands still while the loop is stalled."""
        return time.monotonic() - self.stalled

    def tick(self, lateness: float) -> float:
        """A periodic timer woke up `lateness` seconds after it was due; returns the
        length of the stall when it is one to report, else 0."""
        if lateness <= 0:
            return 0.0
        self.stalled += lateness
        if lateness < STALL_REPORTED:
            return 0.0
        self.stalls += 1
        self.longest = max(self.longest, lateness)
        return lateness
