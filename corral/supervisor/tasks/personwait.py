"""The seconds a call waited for a person, told to whoever times the call (a timer around
an approved call would count the person's minutes as the call's).

The gateway times each call with a holder in its context (`timed`); a wait made in that
context adds to it (`waiting`); one made in another context on the call's behalf (an MCP
server's elicitation) adds to the holder the call's context had (`held`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token


class PersonWait:
    """Seconds the calls of one timed context waited for a person. (A class, not a
    generator's context manager: every gateway call enters one, a third of the cost.)"""

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


def held() -> PersonWait | None:
    """The holder of this context's calls (None: nobody times them)."""
    return _HELD.get()


@contextmanager
def waiting(into: PersonWait | None = None) -> Iterator[None]:
    """Around a wait for a person: its seconds added to `into`, else to the context's holder."""
    held = into if into is not None else _HELD.get()
    start = time.perf_counter()
    try:
        yield
    finally:
        if held is not None:
            held.seconds += time.perf_counter() - start
