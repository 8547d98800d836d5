"""The model gateway's calls served lean on its own site (issue 77). The site's connections
are aiohttp's, except that a request for a model endpoint in the common shape (HTTP/1.1,
a Content-Length body of at most LEAN_BODY bytes, nothing asked of the connection) is
read by httptools (llhttp, which aiohttp's own parser is too: one parser reads every
request of the gateways) and answered through an Exchange (answers.py), without
aiohttp's request and response machinery: most of the CPU a call cost the daemon past its
upstream's. The first request of another shape hands the connection to aiohttp as it
came, for its life (the gateway serves it there too, answering through an Exchange all
the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import httptools
import msgspec
from aiohttp import web

from ..http.server import MAX_FIELD, MAX_HEADERS, HttpConnection
from .answers import Exchange
from .wire import ENDPOINTS, Endpoint

if TYPE_CHECKING:
    from .gateway import ModelGateway

LEAN_BODY = 256 * 1024  # a larger body is aiohttp's to read (body_of: as it comes)
_PATHS = {e.path.encode(): e for e in ENDPOINTS}
MCP = b"/mcp"  # the MCP gateway's POST, answered lean unless it streams (http/mcp.py)
# the heads lean takes (httptools, llhttp's parser, refused control bytes, a bare CR or
# LF, a folded line, a repeated Content-Length): a byte past ASCII, a fragment, an
# absolute URL, a repeated header, a head asking of the connection are aiohttp's
_PATH = re.compile(rb"/[!$%%&-;=?-Z_a-z~]{0,%d}" % (MAX_FIELD - 14))
_ASKING = frozenset({"transfer-encoding", "content-encoding", "expect", "upgrade"})
log = logging.getLogger("corral.gateway.http")


class LeanConnection(HttpConnection):
    """The hardened connection (http/server.py), its model calls of the common shape and
    the MCP gateway's POSTs answered whole (http/mcp.py) answered here, one at a time (a
    request pipelined behind one waits in `_held` for its answer); a head it does not
    take (past MAX_FIELD or MAX_HEADERS too) is aiohttp's."""

    __slots__ = ("_call", "_held", "_lean", "_mcp", "_mcp_call", "_models", "_want")

    def __init__(self, manager: web.Server, models: ModelGateway | None,
                 mcp: Callable[[Exchange], Awaitable[bool]], **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._models, self._mcp = models, mcp
        self._mcp_call = False  # the call answering is of /mcp: its client's end cancels it
        self._lean = True  # until a request of another shape: aiohttp's to the end
        self._held, self._want = bytearray(), 0  # (its bytes parsed again once `_want` came)
        self._call: asyncio.Task[None] | None = None

    def data_received(self, data: bytes) -> None:
        if not self._lean:
            super().data_received(data)
        elif not (self._force_close or self._close):
            self._held += data  # (in place: a body sent byte by byte is not copied each time)
            if not self._request_in_progress:
                if len(self._held) >= self._want:
                    self._next()
            elif len(self._held) > LEAN_BODY and not self._buffer_paused:
                self._pause_reading_for_buffer()  # (resumed at the answer's end)

    def _next(self) -> None:
        held = self._held
        end = held.find(b"\r\n\r\n")
        if end < 0:
            return self._hand_over() if len(held) > MAX_FIELD * 2 else None
        parsed = _head(bytes(held[:end + 4]))
        if parsed is None or (parsed[0] is not None and self._models is None):
            return self._hand_over()
        endpoint, path, headers, length, close = parsed
        start, self._want = end + 4, end + 4 + length
        if len(held) < self._want:
            return  # (its body's bytes still to come)
        self._close = close  # (after its answer)
        self._request_in_progress, self._mcp_call, self._want = True, endpoint is None, 0
        assert self.transport is not None
        query = path.partition("?")[2]  # (a repeated name: its first value, as aiohttp's)
        ex = Exchange(self, self.transport, headers, dict(reversed(parse_qsl(
            query, keep_blank_values=True))) if query else {}, bytes(held[start:start + length]))
        self._call = self._loop.create_task(self._serve(
            ex, endpoint, bytes(held[:start + length]) if endpoint is None else b""))
        del held[:start + length]

    def _hand_over(self, first: bytes = b"") -> None:
        # a request's `Connection: close`, read lean, is aiohttp's to read again: set, it
        # would drop the bytes handed to it (its data_received reads nothing once closing)
        self._lean, self._close = False, False
        held, self._held = first + self._held, bytearray()
        super().data_received(held)

    async def _serve(self, ex: Exchange, endpoint: Endpoint | None, raw: bytes) -> None:
        streams = False  # a POST of /mcp answered with a stream: aiohttp's, as it came
        try:
            if endpoint is None:
                streams = not await self._mcp(ex)
            elif self._models is not None:
                self._models.lean += 1
                made = self._models.admit_read(ex, endpoint)
                if made is not None:
                    await made
            if self.writing_paused:  # its answer unread: no other read until it is
                with contextlib.suppress(ConnectionError):  # (gone: its call ended)
                    await self._drain_helper()
        except Exception:  # a defect: its traceback, and the connection's end
            log.exception("the call on %s failed", endpoint.path if endpoint else "/mcp")
            self.force_close()
        finally:
            self._request_in_progress, self._call = False, None
            waiter = self._handler_waiter  # (aiohttp's shutdown waits for it)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            if streams:
                self._hand_over(raw)
            elif self._close or self._force_close:
                ex.transport.close()
            else:
                self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
                if self._keepalive_handle is None and self._keepalive_timeout > 0:
                    self._keepalive_handle = self._loop.call_at(
                        self._next_keepalive_close_time, self._process_keepalive)
                if self._held:
                    self._next()
            if self._buffer_paused and (len(self._held) <= LEAN_BODY
                                        or not self._request_in_progress):
                self._resume_reading_for_buffer()  # (at each answer, held grew a read each)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self._call is not None and self._mcp_call:  # (as aiohttp's handler would be)
            self._call.cancel()

    def _process_keepalive(self) -> None:
        if not (self._lean and self._request_in_progress):  # (answering: not idle)
            return super()._process_keepalive()
        self._keepalive_handle = None  # (armed again at its answer's end)


class _HeadFields(msgspec.Struct, gc=False):
    """httptools' callbacks: a head's URL, and its fields' names and values in turn (a
    Struct: made a head with no Python of its own)."""

    url: bytes = b""
    fields: list[bytes] = msgspec.field(default_factory=list)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields += (name, value)


def _head(head: bytes) -> tuple[Endpoint | None, str, dict[str, str], int, bool] | None:
    """A model call's request line, headers, body's length and whether it closes the
    connection (None its endpoint: a POST of /mcp) from its head (to its blank line), or
    None when not of the common shape."""
    read = _HeadFields()
    parser = httptools.HttpRequestParser(read)
    try:
        parser.feed_data(head)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None  # (aiohttp's to refuse, saying why, or to upgrade)
    url, fields = read.url, read.fields
    endpoint, n = _PATHS.get(path := url.partition(b"?")[0]), len(url)
    queried = len(path) < n  # (else the URL is a path known, its characters with it)
    if (endpoint is None and path != MCP) or not head.startswith(b"POST ") or \
            head[n + 5:n + 16] != b" HTTP/1.1\r\n" or \
            (queried and _PATH.fullmatch(url) is None) or \
            not 0 < len(fields) < 2 * MAX_HEADERS or (len(head) > MAX_FIELD and max(
                map(len, head.split(b"\r\n"))) > MAX_FIELD):
        return None
    joined = b"\n".join(fields)
    if not joined.isascii():
        return None  # (a byte past ASCII: aiohttp's to read)
    headers = {}
    pairs = iter(joined.decode().split("\n"))  # (names and values in turn)
    for name, value in zip(pairs, pairs, strict=True):
        headers[name.lower()] = value.rstrip(" \t")
    connection = headers.get("connection", "keep-alive").lower()
    if 2 * len(headers) < len(fields) or not _ASKING.isdisjoint(headers) or \
            connection not in ("keep-alive", "close"):
        return None  # (repeated, a compressed body, asking of the connection: aiohttp's)
    length = headers.get("content-length", "")  # (HTTP/1.1 without a Host: aiohttp's 400)
    return (endpoint, url.decode(), headers, size, connection == "close") if "host" in \
        headers and length.isdecimal() and (size := int(length)) <= LEAN_BODY else None
