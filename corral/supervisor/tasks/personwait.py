"""The seconds a call waited for a person, told to whoever times the call.

An approval holds a tool call inside the call (approvals.py waits for the ask where the
call is made), so a timer around the call counts the person's wait as the call's: an
approved tool's p50 was the minutes someone took to click, and its p95/p99 said nothing
of the tool (issue 78). The gateway times each call with a holder in its context
(`timed`); the approval's wait, made in that context (the call's own asyncio task, or
one it started: a task copies the context, holder and all), adds its seconds to it
(`waiting`). A wait made in another context on the call's behalf (an MCP server's
elicitation, answered from its connection's reader) adds to the holder the call's context
had when it was made (`held`). A wait nobody times (a worker's call, a model call) adds
to no holder.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token


class PersonWait:
    """Seconds the calls of one timed context waited for a person; entered, the holder
    of what runs in this context until it is left (`timed`). (A class, not a generator's
    context manager: every gateway call enters one, and this is a third of the cost.)"""

    __slots__ = ("_token", "seconds")

    def __init__(self) -> None:
        self.seconds = 0.0
        self._token: Token[PersonWait | None] | None = None

    def __enter__(self) -> PersonWait:
        self._token = _HELD.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _HELD.reset(self._token)


_HELD: ContextVar[PersonWait | None] = ContextVar("corral_person_wait", default=None)


def timed() -> PersonWait:
    """A holder of the person's waits of what runs in this context, `with` it."""
    return PersonWait()


def held() -> PersonWait | None:
    """The holder of this context's calls (None: nobody times them)."""
    return _HELD.get()


@contextmanager
def waiting(into: PersonWait | None = None) -> Iterator[None]:
    """Around a wait for a person: its seconds added to `into`, else to the context's
    holder, if any."""
    held = into if into is not None else _HELD.get()
    start = time.perf_counter()
    try:
        yield
    finally:
        if held is not None:
            held.seconds += time.perf_counter() - start
