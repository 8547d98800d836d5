"""Writes gathered per turn of the loop: one writev and one wake-up of the reader for a
burst, not one a message. The first write in a turn goes at once (a request and its
answer wait for no turn); what follows in the same turn is written once at its end, or at
once past `limit` bytes, so it stays small beside the transport's buffer, which is what
the backlog checks look at."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

Parts = Sequence[bytes | memoryview]

CORK_BYTES = 64 * 1024


class Cork:
    def __init__(self, loop: asyncio.AbstractEventLoop, write: Callable[[Parts], None],
                 limit: int = CORK_BYTES) -> None:
        """`write(parts)`: the transport's writelines, or what wraps it (it decides
        whether the transport can still take them)."""
        self._loop = loop
        self._write = write
        self.limit = limit
        self._turn = False  # written to in this turn of the loop
        self._parts: list[bytes | memoryview] = []  # written at the end of this turn
        self._bytes = 0

    def write(self, parts: Parts) -> None:
        """The pieces of one message, in one writev with what else the turn gathers."""
        if not self._turn:  # the turn's first: at once
            self._turn = True
            self._loop.call_soon(self._uncork)
            self._write(parts)
            return
        self._parts += parts
        self._bytes += sum(map(len, parts))
        if self._bytes >= self.limit:
            self.flush()

    def write_one(self, data: bytes) -> None:
        """`write` of a message that is one piece (every request of a task's path): no
        tuple made for it, no sum over its pieces."""
        if not self._turn:
            self._turn = True
            self._loop.call_soon(self._uncork)
            self._write((data,))
            return
        self._parts.append(data)
        self._bytes += len(data)
        if self._bytes >= self.limit:
            self.flush()

    def _uncork(self) -> None:
        """The turn is over: what it gathered is written."""
        self._turn = False
        self.flush()

    def flush(self) -> None:
        parts = self._parts
        if not parts:
            return
        self._parts, self._bytes = [], 0
        self._write(parts)
