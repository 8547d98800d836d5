"""Our ends of a child's pipes, as the loop's pipe transports take them.

uvloop's transport closes its fd itself and then calls the file object's `close()`, which
closes the same number again: another thread may have been given that number in between
(a package scan's directory fd was seen taken so). So uvloop's transport gets a `LoopOwned`
end, a duplicate fd whose `close()` closes nothing, and the file object is closed once.
asyncio's own transports close only through `close()`: they get the file object as it is."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any


class LoopOwned:
    """A pipe's fd that its transport's loop closes (libuv): `close()` only says so."""

    __slots__ = ("_fd", "_pipe", "closed")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        st = os.fstat(fd)
        self._pipe = (st.st_dev, st.st_ino)
        self.closed = False

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        self.closed = True  # the fd is libuv's to close, and closed by it already

    def close_if_ours(self) -> None:
        """Close the fd unless a transport that failed to start closed it already (uvloop
        closes what it opened): the number then is free, or another file's."""
        try:
            st = os.fstat(self._fd)
        except OSError:
            return
        if (st.st_dev, st.st_ino) == self._pipe:
            os.close(self._fd)


def closes_its_pipes(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether `loop`'s pipe transports close their fd themselves (uvloop's)."""
    uvloop = sys.modules.get("uvloop")  # (a loop of uvloop's: uvloop is imported)
    return uvloop is not None and isinstance(loop, uvloop.Loop)


def for_transport(loop: asyncio.AbstractEventLoop, pipe: Any) -> Any:
    """What to give `loop.connect_*_pipe` for `pipe` (a file object, or None), `pipe`
    closed if it is not that; a `LoopOwned` end no transport took is closed by
    `discard`."""
    if pipe is None or not closes_its_pipes(loop):
        return pipe
    end = LoopOwned(os.dup(pipe.fileno()))
    pipe.close()
    return end


def discard(pipe: Any) -> None:
    if isinstance(pipe, LoopOwned):
        if not pipe.closed:
            pipe.closed = True
            pipe.close_if_ours()
    else:
        pipe.close()
