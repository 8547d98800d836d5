"""The HTTP sites' connections (the [http] site's and the gateway's own): aiohttp's,
hardened (`HttpConnection`), and on each a POST in the common shape (HTTP/1.1, a
Content-Length body of at most LEAN_BODY bytes, nothing asked of the connection) for a
path the site serves lean (a model call, the MCP gateway's /mcp, the A2A door's
messages) read by httptools (llhttp, which aiohttp's own parser is too: one parser reads
every request) and answered through an Exchange (answers.py), without aiohttp's request
and response machinery: most of the CPU a call cost the daemon past its upstream's (issue
77), a fifth of an A2A message's. The first request of another shape hands the connection
to aiohttp as it came, for its life (served there alike, answering through an Exchange
all the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl

import httptools
import msgspec
from aiohttp import web
from aiohttp.hdrs import CONTENT_TYPE
from aiohttp.helpers import HeadersMixin, parse_content_type
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import RawRequestMessage
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from multidict import CIMultiDict
from yarl import URL

from ...text import clip, one_line
from ..http.route import problem
from .answers import Exchange, WrittenResponse
from .wire import ENDPOINTS, Endpoint

if TYPE_CHECKING:
    from .gateway import ModelGateway

MAX_FIELD, MAX_HEADERS = 8190, 128  # a request head past these is refused (a 400)
LEAN_BODY = 256 * 1024  # a larger body is aiohttp's to read (body_of: as it comes)
_PATHS = {e.path.encode(): e for e in ENDPOINTS}
# a POST's path -> what serves it lean (False: nothing done, aiohttp's as it came: a
# stream); None, aiohttp's
Serve = Callable[[Exchange], Awaitable[bool]]
Posts = Callable[[str], Serve | None]
# the heads lean takes (httptools, llhttp's parser, refused control bytes, a bare CR or
# LF, a folded line, a repeated Content-Length): a byte past ASCII, a fragment, an
# absolute URL, a repeated header, a head asking of the connection are aiohttp's
_PATH = re.compile(rb"/[!$%%&-;=?-Z_a-z~]{0,%d}" % (MAX_FIELD - 14))
_ASKING = frozenset({"transfer-encoding", "content-encoding", "expect", "upgrade"})
log = logging.getLogger("corral.gateway.http")


class HttpConnection(RequestHandler):
    """aiohttp's connection, reading nothing more once a request's head was refused.

    aiohttp feeds what follows a malformed head to its failed parser, each chunk one more
    error holding it twice: megabytes of one header line pinned that much per connection.
    `close()` is aiohttp's "no more requests": the 400 already queued is still answered.
    """

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # aiohttp has no hook for a refused head: its queue holds an error in place of a
        # request (the pinned aiohttp version; tests/test_http_hostile.py watches it)
        queued = self._messages
        if queued and not isinstance(queued[-1][0], RawRequestMessage):
            self.close()

    async def _handle_request(
            self, request: BaseRequest, start_time: float | None,
            request_handler: Callable[[BaseRequest], Awaitable[StreamResponse]]
    ) -> tuple[StreamResponse, bool]:
        if not (self._messages or self._buffer_paused or self._upgraded):
            # aiohttp's parser counts a request in flight from its body's end to its start
            # and pauses itself at its queue's bound: one started before its body came
            # stays counted, the parser pauses short of the bound the connection pauses
            # reading at, and the requests it holds wait for bytes a pipelining client
            # may never send (its connection then closed as idle, those never answered).
            # With the queue dry, what the parser holds is parsed now
            self.data_received(b"")
        return await super()._handle_request(request, start_time, request_handler)

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None
                     ) -> StreamResponse:
        answer = super().handle_error(request, status, exc, message)
        if not isinstance(exc, HttpProcessingError):
            return answer
        refusals = getattr(self._manager, "refusals", None)  # (server.py's runner's)
        if refusals is not None:
            refusals.refused(status, request.remote, exc)
        # a problem document, as every other refusal is (aiohttp's own is text/plain,
        # which the OpenAPI document names for no answer)
        refused = problem(status, clip(one_line(exc.message or str(exc)), 200))
        refused.force_close()
        return refused

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        # With no request in progress the connection's task is idle or in aiohttp's
        # lingering read (10 s) of a refused body: a daemon stopping after a large body
        # was refused waited those whole 10 s (its teardown's step deadline)
        if not self._request_in_progress and self._task_handler is not None:
            self._task_handler.cancel()
        await super().shutdown(timeout)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        if isinstance(kw.get("exc_info"), HttpProcessingError):
            return  # a refused request: told by handle_error, in one line
        super().log_exception(*args, **kw)  # a defect: its traceback, as aiohttp logs it


class LeanConnection(HttpConnection):
    """The hardened connection, its model calls and the POSTs `posts` serves (the MCP
    gateway's, the A2A door's) in the common shape answered here, one at a time (a
    request pipelined behind one waits in `_held` for its answer); a head it does not
    take (past MAX_FIELD or MAX_HEADERS too) is aiohttp's."""

    __slots__ = ("_call", "_ex", "_held", "_lean", "_models", "_posts", "_want")

    def __init__(self, manager: web.Server, models: ModelGateway | None, posts: Posts,
                 **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._models, self._posts = models, posts
        self._ex: Exchange | None = None  # the request answering (its `cancels`)
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
        if parsed is None:
            return self._hand_over()
        endpoint, url, headers, length, close = parsed
        path, _, query = url.partition("?")  # (a repeated name: its first value, as aiohttp's)
        serve = self._posts(path) if endpoint is None else None
        if serve is None and (endpoint is None or self._models is None):
            return self._hand_over()
        start, self._want = end + 4, end + 4 + length
        if len(held) < self._want:
            return  # (its body's bytes still to come)
        self._close = close  # (after its answer)
        self._request_in_progress, self._want = True, 0
        assert self.transport is not None
        ex = self._ex = Exchange(self, self.transport, headers, dict(reversed(parse_qsl(
            query, keep_blank_values=True))) if query else {}, bytes(held[start:start + length]),
            path=path, cancels=serve is not None)
        # (a POST served here keeps its head's bytes alone for a hand-over: its body is
        # the Exchange's, not copied twice for the call's life)
        self._call = self._loop.create_task(self._serve(
            ex, endpoint, serve, bytes(held[:start]) if serve is not None else b""))
        del held[:start + length]

    def _hand_over(self, first: bytes = b"") -> None:
        # a request's `Connection: close`, read lean, is aiohttp's to read again: set, it
        # would drop the bytes handed to it (its data_received reads nothing once closing)
        self._lean, self._close = False, False
        held, self._held = first + self._held, bytearray()
        super().data_received(held)

    async def _serve(self, ex: Exchange, endpoint: Endpoint | None, serve: Serve | None,
                     head: bytes) -> None:
        streams = False  # a POST answered with a stream: aiohttp's, as it came
        try:
            if serve is not None:
                streams = not await serve(ex)
            elif self._models is not None and endpoint is not None:
                self._models.lean += 1
                made = self._models.admit_read(ex, endpoint)
                if made is not None:
                    await made
            if self._paused:  # its answer unread: no other read until it is (aiohttp's
                # `writing_paused`, read past its property)
                with contextlib.suppress(ConnectionError):  # (gone: its call ended)
                    await self._drain_helper()
        except Exception:  # a defect: its traceback, and the connection's end
            log.exception("the call on %s failed", ex.path)
            self.force_close()
        finally:
            self._request_in_progress, self._call, self._ex = False, None, None
            waiter = self._handler_waiter  # (aiohttp's shutdown waits for it)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            if streams:
                self._hand_over(head + (ex.raw or b""))
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
        if self._call is not None and self._ex is not None and self._ex.cancels:
            self._call.cancel()  # (as aiohttp's handler would be)

    def _process_keepalive(self) -> None:
        if not (self._lean and self._request_in_progress):  # (answering: not idle)
            return super()._process_keepalive()
        self._keepalive_handle = None  # (armed again at its answer's end)


class LeanRequest(HeadersMixin):
    """What of aiohttp's request the handlers of a POST read lean read (http/mcp.py's,
    a2a/routes.py's): the one handler serves both; its answer is written by its Exchange
    (`answer_json`, `respond`). A request with a Cookie header is never the A2A door's
    lean (its handlers read no cookie)."""

    method, cookies, match_info = "POST", cast(Mapping[str, str], {}), cast(Mapping[str, str], {})

    def __init__(self, ex: Exchange, match_info: Mapping[str, str] | None = None) -> None:
        self.ex, self.path = ex, ex.path  # its answer's writer
        self.headers = self._headers = CIMultiDict(ex.headers)
        self.query, self.transport, self.protocol = ex.query, ex.transport, ex.conn
        self.raw = ex.raw or b""
        if match_info is not None:
            self.match_info = match_info
        # as aiohttp's: the peer's address, a unix socket's peer its name (read here: a
        # cached_property's lookup cost the door more than the read)
        peer = ex.transport.get_extra_info("peername")
        self.remote = None if peer is None else str(
            peer[0] if isinstance(peer, list | tuple) else peer)

    async def read(self) -> bytes:
        return self.raw

    @property
    def content(self) -> LeanRequest:  # (route.body_of's reader: the body at once)
        return self

    async def readany(self) -> bytes:
        raw, self.raw = self.raw, b""
        return raw

    @property
    def scheme(self) -> str:
        return "https" if self.transport.get_extra_info("sslcontext") is not None else "http"

    @property
    def host(self) -> str:
        return self.headers["Host"]  # (a head without one is aiohttp's)

    @property
    def content_type(self) -> str:
        """As aiohttp's, its parse kept by the header's text (a few are ever sent)."""
        return _content_type(self.ex.headers.get("content-type"))

    @property
    def url(self) -> URL:
        """Its address (a 401's metadata's origin), as its Host header names it."""
        return URL.build(scheme=self.scheme, authority=self.host)


@functools.lru_cache(maxsize=64)
def _content_type(raw: str | None) -> str:
    return "application/octet-stream" if raw is None else parse_content_type(raw)[0]


WRITTEN = web.StreamResponse()  # a lean POST's answer, written: nothing more to do


def answer_json(request: web.Request, body: bytes, status: int = 200,
                headers: Mapping[str, str] | None = None) -> web.StreamResponse:
    """A JSON answer written as HTTP/1.1 bytes by an Exchange (answers.py), whichever path
    read its request: aiohttp's response machinery was a tenth of the daemon's CPU a
    tools/call."""
    if isinstance(request, LeanRequest):  # (its writer at hand: nothing returned is written)
        request.ex.answer(status, "application/json", body, headers)
        return WRITTEN
    if request.transport is None:  # the client went: aiohttp's response, for it to drop
        return web.Response(body=body, status=status, headers=headers,
                            content_type="application/json")
    Exchange(request.protocol, request.transport, {}, {}, b"", request).answer(
        status, "application/json", body, headers)
    return WrittenResponse(request, status)


def respond(ex: Exchange, resp: web.StreamResponse) -> None:
    """What a handler returned for a request read lean, written (one `answer_json` wrote:
    nothing more)."""
    if isinstance(resp, web.Response):  # (an error, or a 202: not written yet)
        ex.answer(resp.status, resp.headers.get(CONTENT_TYPE, resp.content_type),
                  resp.body if isinstance(resp.body, bytes) else b"",
                  {k: v for k, v in resp.headers.items() if k != CONTENT_TYPE})


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
    """A POST's endpoint (a model call's; else None), URL, headers, body's length and
    whether it closes the connection from its head (to its blank line), or None when not
    of the common shape."""
    if not head.startswith(b"POST "):
        return None  # (not parsed: a GET's connection is aiohttp's at once)
    read = _HeadFields()
    parser = httptools.HttpRequestParser(read)
    try:
        parser.feed_data(head)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None  # (aiohttp's to refuse, saying why, or to upgrade)
    url, fields = read.url, read.fields
    endpoint, n = _PATHS.get(path := url.partition(b"?")[0]), len(url)
    # (a model call's URL that is its path alone: a path known, its characters with it)
    if head[n + 5:n + 16] != b" HTTP/1.1\r\n" or \
            ((endpoint is None or len(path) < n) and _PATH.fullmatch(url) is None) or \
            not 0 < len(fields) < 2 * MAX_HEADERS or (len(head) > MAX_FIELD and max(
                map(len, head.split(b"\r\n"))) > MAX_FIELD):
        return None
    joined = b"\n".join(fields)
    if not joined.isascii():
        return None  # (a byte past ASCII: aiohttp's to read)
    # names and values in turn, a value's trailing space off: a comprehension, as timed,
    # half the CPU of mapping a methodcaller over the slices
    pairs = iter(joined.decode().split("\n"))
    headers = {name.lower(): value.rstrip(" \t") for name, value in
               zip(pairs, pairs, strict=True)}
    connection = headers.get("connection", "keep-alive").lower()
    if 2 * len(headers) < len(fields) or not _ASKING.isdisjoint(headers) or \
            connection not in ("keep-alive", "close"):
        return None  # (repeated, a compressed body, asking of the connection: aiohttp's)
    length = headers.get("content-length", "")  # (HTTP/1.1 without a Host: aiohttp's 400)
    return (endpoint, url.decode(), headers, size, connection == "close") if "host" in \
        headers and length.isdecimal() and (size := int(length)) <= LEAN_BODY else None
