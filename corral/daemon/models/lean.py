"""The model gateway's calls served lean on its own site (issue 77). The site's connections
are aiohttp's, except that a request for a model endpoint in the common shape (HTTP/1.1,
a Content-Length body of at most LEAN_BODY bytes, nothing asked of the connection) is
parsed here and answered through an Exchange (answers.py), without aiohttp's request and
response machinery: most of the CPU a call cost the daemon past its upstream's. The first request
of another shape hands the connection to aiohttp as it came, for its life (the gateway
serves it there too, answering through an Exchange all the same).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from aiohttp import web

from ..http.server import MAX_FIELD, MAX_HEADERS, HttpConnection
from .answers import Exchange
from .wire import ENDPOINTS, Endpoint

if TYPE_CHECKING:
    from .gateway import ModelGateway

LEAN_BODY = 256 * 1024  # a larger body is aiohttp's to read (body_of: as it comes)
_PATHS = {e.path.encode(): e for e in ENDPOINTS}
MCP = b"/mcp"  # the MCP gateway's POST, answered lean unless it streams (http/mcp.py)
log = logging.getLogger("corral.gateway.http")


class LeanConnection(HttpConnection):
    """The hardened connection (http/server.py), its model calls of the common shape and
    the MCP gateway's POSTs answered whole (http/mcp.py) answered here, one at a time (a
    request pipelined behind one waits in `_held` for its answer); a head it does not
    take (past MAX_FIELD or MAX_HEADERS too) is aiohttp's."""

    __slots__ = ("_call", "_held", "_lean", "_mcp", "_mcp_call", "_models")

    def __init__(self, manager: web.Server, models: ModelGateway | None,
                 mcp: Callable[[Exchange], Awaitable[bool]], **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._models = models
        self._mcp = mcp
        self._mcp_call = False  # the call answering is of /mcp: its client's end cancels it
        self._lean = True  # until a request of another shape: aiohttp's to the end
        self._held = b""
        self._call: asyncio.Task[None] | None = None

    def data_received(self, data: bytes) -> None:
        if not self._lean:
            super().data_received(data)
        elif not (self._force_close or self._close):
            self._held += data
            if not self._request_in_progress:
                self._next()
            elif len(self._held) > LEAN_BODY and not self._buffer_paused:
                self._pause_reading_for_buffer()  # (resumed at the answer's end)

    def _next(self) -> None:
        held = self._held
        end = held.find(b"\r\n\r\n")
        if end < 0:
            if len(held) > MAX_FIELD * 2:
                self._hand_over()
            return
        parsed = _head(held[:end])
        if parsed is None:
            return self._hand_over()
        endpoint, path, headers, length = parsed
        start = end + 4
        if len(held) < start + length:
            return  # (its body's bytes still to come)
        if endpoint is not None and self._models is None:
            return self._hand_over()
        self._close = headers.get("connection", "").lower() == "close"  # after its answer
        self._held = held[start + length:]
        self._request_in_progress, self._mcp_call = True, endpoint is None
        assert self.transport is not None
        query = path.partition("?")[2]  # (a repeated name: its first value, as aiohttp's)
        ex = Exchange(self, self.transport, headers, dict(reversed(parse_qsl(
            query, keep_blank_values=True))) if query else {}, held[start:start + length])
        self._call = self._loop.create_task(self._serve(
            ex, endpoint, held[:start + length] if endpoint is None else b""))

    def _hand_over(self) -> None:
        self._lean = False
        held, self._held = self._held, b""
        super().data_received(held)

    async def _serve(self, ex: Exchange, endpoint: Endpoint | None, raw: bytes) -> None:
        streams = False  # a POST of /mcp answered with a stream: aiohttp's, as it came
        try:
            if endpoint is None:
                streams = not await self._mcp(ex)
            elif self._models is not None:
                self._models.lean += 1
                made = await self._models.admit(ex, endpoint)
                if made is not None:
                    await made
        except Exception:  # a defect: its traceback, and the connection's end
            log.exception("the call on %s failed", endpoint.path if endpoint else "/mcp")
            self.force_close()
        finally:
            self._request_in_progress, self._call = False, None
            waiter = self._handler_waiter  # (aiohttp's shutdown waits for it)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            if self._buffer_paused:
                self._resume_reading_for_buffer()
            if streams:
                self._held = raw + self._held
                self._hand_over()
            elif self._close or self._force_close:
                ex.transport.close()
            else:
                self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
                if self._keepalive_handle is None and self._keepalive_timeout > 0:
                    self._keepalive_handle = self._loop.call_at(
                        self._next_keepalive_close_time, self._process_keepalive)
                if self._held:
                    self._next()

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self._call is not None and self._mcp_call:  # (as aiohttp's handler would be)
            self._call.cancel()

    def _process_keepalive(self) -> None:
        if self._lean and self._request_in_progress:  # answering: not idle
            self._keepalive_handle = None  # (armed again at its answer's end)
            return
        super()._process_keepalive()


def _head(head: bytes) -> tuple[Endpoint | None, str, dict[str, str], int] | None:
    """A model call's request line and headers (None its endpoint: a POST of /mcp), or
    None when not of the common shape."""
    lines = head.split(b"\r\n")
    method, _, rest = lines[0].partition(b" ")
    target, _, version = rest.partition(b" ")
    path = target.partition(b"?")[0]
    endpoint = _PATHS.get(path)
    if method != b"POST" or version != b"HTTP/1.1" or (endpoint is None and path != MCP) \
            or len(lines) > MAX_HEADERS or len(lines[0]) > MAX_FIELD:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or len(line) > MAX_FIELD:
            return None
        key = name.decode("latin-1").lower()
        if key in headers or key in ("transfer-encoding", "content-encoding", "expect",
                                     "upgrade") or (
                key == "connection" and value.strip().lower() not in (b"keep-alive",
                                                                      b"close")):
            return None  # (a repeated header, a compressed body, or one asking of the
            # connection: aiohttp's)
        headers[key] = value.strip().decode("latin-1")
    length = headers.get("content-length", "")
    if not length.isdecimal() or int(length) > LEAN_BODY:
        return None
    return endpoint, target.decode("latin-1"), headers, int(length)
