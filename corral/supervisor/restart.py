"""The restart policy: when to restart, after how long, and when to give up (the keys'
meanings: docs/config.md). A failed start (an exit within `start_secs`) is not a restart
of a process that ran, so it does not count against `max_restarts`; a life that reaches
the window's end clears the count.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Literal

import msgspec

RestartMode = Literal["always", "on-failure", "never"]

_JITTER = random.Random()


class RestartDecision(msgspec.Struct, frozen=True):
    restart: bool
    delay: float = 0.0
    give_up: bool = False  # restart was wanted but the intensity limit is reached
    failed_start: int = 0  # the exit was a failed start: the how-manieth in a row


class StartWindow(msgspec.Struct, frozen=True):
    """How long a process must be up for its start to count (0: at once), and how many
    failed starts in a row are retried."""

    secs: float = 0.0
    retries: int = 3


class RestartPolicy:
    def __init__(
        self,
        mode: RestartMode,
        *,
        max_restarts: int,
        window: float,
        backoff_initial: float,
        backoff_max: float,
        stable_after: float,
        start: StartWindow | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.mode = mode
        self.max_restarts = max_restarts
        self.window = window
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.start = start or StartWindow()
        self._failed_starts = 0  # in a row, since a life last reached the window's end
        # one generator for all policies: seeding one per replica (os.urandom and 2.5 KB of
        # state) cost 20 ms in the turn that created a thousand replicas
        self._rng = rng or _JITTER
        # the times of recent restarts, made at the first: most replicas never restart,
        # and a deque each would be walked by every full pass of the collector
        self._restarts: deque[float] | None = None
        self._attempt = 0  # consecutive quick failures; drives the exponent

    def wants_restart(self, clean_exit: bool) -> bool:
        return self.mode == "always" or (self.mode == "on-failure" and not clean_exit)

    def backoff(self, attempt: int) -> float:
        """Delay before restart number `attempt` (0-based): equal jitter in [d/2, d]."""
        ceiling = min(self.backoff_max, self.backoff_initial * (2.0**attempt))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def on_exit(self, *, clean_exit: bool, uptime: float, now: float) -> RestartDecision:
        if uptime >= self.stable_after:
            self._attempt = 0
        if uptime < self.start.secs:
            return self._failed_start()
        self._failed_starts = 0
        if not self.wants_restart(clean_exit):
            return RestartDecision(restart=False)
        if self._restarts is None:
            self._restarts = deque()
        while self._restarts and now - self._restarts[0] > self.window:
            self._restarts.popleft()
        if len(self._restarts) >= self.max_restarts:
            return RestartDecision(restart=False, give_up=True)
        self._restarts.append(now)
        delay = self.backoff(self._attempt)
        self._attempt += 1
        return RestartDecision(restart=True, delay=delay)

    def _failed_start(self) -> RestartDecision:
        self._failed_starts += 1
        if self._failed_starts > self.start.retries:
            return RestartDecision(restart=False, give_up=True, failed_start=self._failed_starts)
        delay = self.backoff(self._attempt)
        self._attempt += 1
        return RestartDecision(restart=True, delay=delay, failed_start=self._failed_starts)

    def reset(self) -> None:
        """A start by hand forgives the past."""
        self._restarts = None
        self._attempt = 0
        self._failed_starts = 0

    @property
    def recent_restarts(self) -> int:
        return len(self._restarts) if self._restarts is not None else 0
