"""Giving the memory of finished tasks' payloads back to the system.

glibc's malloc serves blocks below its mmap threshold (128 KiB at first) from its heaps,
and a block freed in the middle of a heap stays mapped: a task's 100 KB input and output
are such blocks, and the finished outputs kept (`tasks_kept_mb`) pin the pages around the
holes the others leave. Measured: after 10,000 tasks of 100 KB the supervisor's RSS was
95-114 MiB of which 77 MiB was live; `malloc_trim(0)` gives the free pages back (1.8 ms
with ~30 MiB to give, 0.1 ms with none). So once payloads of at least TRIM_AFTER bytes
have been let go, a trim runs TRIM_DELAY later: at most one a second while tasks flow,
and one within a second of the last, so memory is back to what is live when the work
stops. A wave of suspended tasks' attempts asks for a trim within TRIM_DELAY whatever it
let go (`settled`). The trim runs on a thread of the loop's default executor.

Not taken: a fixed, lower mmap threshold (`M_MMAP_THRESHOLD` 64 KiB), which keeps RSS at
what is live without trimming, made a 100 KB task's round trip 60 % slower and a 1 MB
one's twice as slow (each message mapped and faulted in anew).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

TRIM_AFTER = 4 * 1024 * 1024
TRIM_DELAY = 1.0


def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes  # on the first trim, not at every start-up

    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None
    return trim


class Releaser:
    """Counts the payload bytes let go and trims the heap after enough of them."""

    def __init__(self) -> None:
        self.released = 0  # bytes let go since the last trim
        self.total = 0  # and since the start
        self.trims = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the timer's
        self._trim: Callable[[int], int] | bool | None = False  # False: not looked up yet

    def let_go(self, nbytes: int) -> None:
        self.released += nbytes
        self.total += nbytes
        if self._timer is not None and self._loop is not None and self._loop.is_closed():
            self._timer = None  # its loop is gone (an embedding program's): it never runs
        if self.released >= TRIM_AFTER:
            self._arm()

    def settled(self, nbytes: int) -> None:
        """A wave of work held at once has ended, `nbytes` of it let go (an estimate): a
        trim within TRIM_DELAY whatever the amount, so that what a burst left free goes
        back once it is over rather than at the next 4 MiB."""
        self.let_go(nbytes)
        if self.released:
            self._arm()

    def _arm(self) -> None:
        if self._timer is None:
            self._loop = asyncio.get_running_loop()
            self._timer = self._loop.call_later(TRIM_DELAY, self.trim)

    def trim(self) -> None:
        self._timer = None
        self.released = 0
        if self._trim is False:
            self._trim = _malloc_trim()
        if callable(self._trim) and self._loop is not None:
            # off the loop: glibc walks every arena's free blocks, longer the bigger the
            # heap, and ctypes lets the GIL go meanwhile
            self._loop.run_in_executor(None, self._trim, 0)
            self.trims += 1
