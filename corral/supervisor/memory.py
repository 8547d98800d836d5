"""Giving the memory of finished tasks' payloads back to the system (docs/operations.md).

glibc keeps a freed block below its mmap threshold mapped in its heap, and kept outputs pin
the pages around the holes; `malloc_trim(0)` gives them back (1.8 ms with ~30 MiB). So
once TRIM_AFTER bytes were let go a trim runs TRIM_DELAY later, on a thread. Not taken: a
lower `M_MMAP_THRESHOLD`, which made a 100 KB task's round trip 60 % slower.
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
