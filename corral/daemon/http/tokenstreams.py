"""The open streams of each token, each ended when its token is revoked or expires: a
stream was checked at its opening alone, and went on sending to whoever held a token the
operator had taken back. REST's streams and the dashboard's (under the token its session
was made from) and the A2A door's each hold one while open."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

from aiohttp import web

from ..tokens import TokenRevoked, Tokens
from . import sse

END_GRACE = 5.0  # seconds an ended stream's client has to take its end


class TokenStreams:
    """The streams open under each token, by its name, ended at its revocation."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens
        self.held_by: dict[str, dict[int, tuple[web.Request, asyncio.Future[None]]]] = {}
        tokens.stream.subscribe(self.revoked, TokenRevoked)

    @contextlib.contextmanager
    def lasting(self, request: web.Request, token: str | None, until: float | None = None
                ) -> Iterator[asyncio.Future[None]]:
        """While a stream is open: known as its token's, and ended at its expiry (or at
        `until`). What it yields is done when the stream is to end."""
        loop = asyncio.get_running_loop()
        stop: asyncio.Future[None] = loop.create_future()
        known = self.tokens.named(token) if token is not None else None
        if known is not None and known.expires is not None:
            until = known.expires if until is None else min(until, known.expires)
        timer = None if until is None else loop.call_later(
            max(0.0, until - time.time()), end, request, stop)
        held = self.held_by.setdefault(token, {}) if token is not None else None
        if held is not None:
            held[id(request)] = (request, stop)
        try:
            yield stop
        finally:
            if timer is not None:
                timer.cancel()
            if held is not None and token is not None:
                held.pop(id(request), None)
                if not held:
                    self.held_by.pop(token, None)

    def revoked(self, e: TokenRevoked) -> None:
        """Its streams end now, not when their clients go."""
        for request, stop in list(self.held_by.get(e.token.name, {}).values()):
            end(request, stop)


def end(request: web.Request, stop: asyncio.Future[None]) -> None:
    """End a stream now, its response ended as a whole one is (an EventSource sees a
    stream that ended, not a broken connection); its connection aborted past END_GRACE."""
    if stop.done():
        return
    stop.set_result(None)
    sse.end_connection(request, END_GRACE)
