"""MCP over HTTP under a `jsonrpc.Peer` (`send` takes each message, `feed` gets the
server's): Streamable HTTP, and the legacy HTTP+SSE of 2024-11-05 servers, found by the
spec's backwards-compatibility procedure. A 404 for a request with a session id means the
session is gone (`on_lost`); a response stream that ends early is resumed with GET and
`Last-Event-ID`. Loaded only when a remote server is configured: a daemon without one
loads no aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin

import aiohttp
import msgspec

from .. import jsonrpc
from ..redact import url as _url
from ..timeouts import cancel_all, kept
from . import resend, sse
from .paramheaders import EVENT_STREAM as EVENT_STREAM
from .paramheaders import JSON as JSON
from .paramheaders import METHOD_HEADER as METHOD_HEADER
from .paramheaders import NAME_HEADER as NAME_HEADER
from .paramheaders import SESSION_HEADER as SESSION_HEADER
from .paramheaders import VERSION_HEADER as VERSION_HEADER
from .paramheaders import ParamHeaders, header_value

log = logging.getLogger("corral.mcp.http")

NAMED = frozenset({"tools/call", "prompts/get", "resources/read"})
MAX_RESUMES = 5  # reconnections of one response stream that bring nothing new
DRAIN_TIMEOUT = 1.0  # seconds to read an answered POST stream to its end
LEGACY_STATUSES = (400, 404, 405)
MAX_AUTH_ROUNDS = 2  # new credentials for one request: authorize, then step up once
# seconds an idle connection is kept for the next request: well inside the idle limits
# servers close connections at (Node's, uvicorn's), as a request sent on a connection the
# server is closing is reset unread, and one that may act is not sent again (resend.py)
KEEPALIVE = 2.0


class _Meta(msgspec.Struct):
    """What a request's `_meta` says of its revision (2026-07-28 requests carry it)."""

    version: str | None = msgspec.field(default=None,
                                        name="io.modelcontextprotocol/protocolVersion")


class _Target(msgspec.Struct):
    """What a request's params name (a tool or prompt, a resource), a tool's arguments
    (some of which its schema may mark for headers), and the request's `_meta`."""

    name: str | None = None
    uri: str | None = None
    arguments: msgspec.Raw = msgspec.Raw()  # empty: none given
    meta: _Meta | None = msgspec.field(default=None, name="_meta")


class _Head(msgspec.Struct):
    """What the transport needs of a message: is it a request, its id, its headers."""

    id: jsonrpc.Id | None = None
    method: str | None = None
    params: _Target | None = None

    def mirrored(self, marks: ParamHeaders) -> dict[str, str]:
        """The headers that say the method, its target and its revision again, for
        intermediaries (SEP-2243; an older server ignores them)."""
        if self.method is None:
            return {}
        h = {METHOD_HEADER: self.method}
        p = self.params
        if p is None:
            return h
        if p.meta is not None and p.meta.version is not None:
            h[VERSION_HEADER] = p.meta.version  # the header says what the body says
        target = p.uri if self.method == "resources/read" \
            else p.name if self.method in NAMED else None
        if target is not None:
            h[NAME_HEADER] = header_value(target)
        if self.method == "tools/call":
            h.update(marks.headers(p.name, p.arguments))
        return h


_head = msgspec.json.Decoder(_Head)
_incoming = msgspec.json.Decoder(jsonrpc.Envelope | list[jsonrpc.Envelope])


class HttpError(Exception):
    """An HTTP exchange failed; `message` says how, for the request it belonged to."""


# An auth hook: given the 401/403 response, get credentials so that a retry may succeed
# (raises HttpError when it cannot); `headers()` gives what to send with every request.
class Auth:
    async def headers(self) -> dict[str, str]:
        return {}

    async def on_unauthorized(self, resp: aiohttp.ClientResponse) -> bool:
        """Called with a 401 or 403; True when a retry with new credentials makes sense."""
        return False


class HttpTransport:
    def __init__(
        self,
        name: str,
        url: str,
        *,
        feed: Callable[[bytes], None],
        on_lost: Callable[[str], None],
        headers: dict[str, str] | None = None,
        auth: Auth | None = None,
        max_message: int = jsonrpc.DEFAULT_MAX_LINE,
        connect_timeout: float = 10.0,
        sse_only: bool = False,
        param_headers: ParamHeaders | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.feed = feed
        self.on_lost = on_lost
        self.static_headers = dict(headers or {})
        self.auth = auth
        self.max_message = max_message
        self.session_id: str | None = None
        # the HTTP+SSE transport: found at the first initialize, or configured
        # (`transport = "sse"`), when no POST to the stream URL is tried at all
        self.legacy = False
        self.sse_only = sse_only
        self.param_headers = param_headers or ParamHeaders()
        self._post_url = url
        self._http: aiohttp.ClientSession | None = None
        self._connect_timeout = connect_timeout
        self._tasks: set[asyncio.Task[Any]] = set()
        self._order: asyncio.Task[None] | None = None  # the last notification's POST
        self._listener: asyncio.Task[None] | None = None
        self._legacy_endpoint: asyncio.Future[str] | None = None
        self._closed = False
        self.lost: str | None = None

    # -- the seam ---------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if self._closed:
            return
        head = _head.decode(data)
        is_request = head.method is not None and head.id is not None
        task = asyncio.ensure_future(self._send(data, head, self._order))
        if not is_request:
            # notifications and responses are delivered in order, and before any request
            # sent after them (`notifications/initialized` before the first list call)
            self._order = task
        kept(self._tasks, task)

    async def close(self) -> None:
        """End the session (DELETE, as the spec asks) and every stream."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await cancel_all([*self._tasks, *([self._listener] if self._listener else [])])
        http = self._http
        if http is not None:
            if self.session_id is not None and not self.legacy:
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with asyncio.timeout(2.0):
                        async with http.delete(self.url, headers=await self._headers()) as resp:
                            await resp.read()
            await http.close()
            self._http = None

    # -- requests ---------------------------------------------------------------------------
    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = self._new_session(aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE))
        return self._http

    def _new_session(self, connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=connector, trace_configs=[resend.tracing()],
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout),
            # the server's messages are bounded by max_message, not aiohttp's defaults
            read_bufsize=2**16)

    async def _headers(self, accept: str = f"{JSON}, {EVENT_STREAM}") -> dict[str, str]:
        h = {"Accept": accept, **self.static_headers}
        if self.session_id is not None:
            h[SESSION_HEADER] = self.session_id
        if self.param_headers.protocol_version is not None:
            h[VERSION_HEADER] = self.param_headers.protocol_version
        if self.auth is not None:
            h.update(await self.auth.headers())
        return h

    async def _send(self, data: bytes, head: _Head, previous: asyncio.Task[None] | None
                    ) -> None:
        if previous is not None:  # (waited for, not awaited: this one's cancel is not its)
            await asyncio.wait((previous,))
        try:
            await self._post(data, head)
        except HttpError as exc:
            self._fail(head, str(exc))
        except (aiohttp.ClientConnectionError, OSError, TimeoutError) as exc:
            self._fail(head, f"cannot reach {shown(self._post_url)}: {jsonrpc.describe(exc)}")
            self._lose(f"unreachable: {jsonrpc.describe(exc)}")
        except aiohttp.ClientError as exc:
            self._fail(head, f"HTTP exchange with {shown(self._post_url)} failed: "
                             f"{jsonrpc.describe(exc)}")
        if head.method == "notifications/initialized" and not self.legacy \
                and self._listener is None and not self._closed:
            self._listener = asyncio.ensure_future(self._listen())

    def _fail(self, head: _Head, message: str) -> None:
        if head.method is None or head.id is None:
            log.warning("%s: %s", self.name, message)
            return
        self.feed(jsonrpc.encode(jsonrpc.ErrorResponse(
            head.id, jsonrpc.ErrorObject(jsonrpc.REFUSED, message))))

    def _lose(self, reason: str) -> None:
        if self.lost is None and not self._closed:
            self.lost = reason
            self.on_lost(reason)

    async def _post(self, data: bytes, head: _Head) -> None:
        http = self._session()
        if self.legacy or self.sse_only:
            await self._start_legacy()
            await self._legacy_post(data)
            return
        auth_rounds = 0
        while True:
            headers = await self._headers()
            headers["Content-Type"] = JSON
            headers.update(head.mirrored(self.param_headers))
            async with contextlib.AsyncExitStack() as stack:
                resp = await resend.posted(stack, http, self.url, data, headers,
                                           resend.repeatable(head.method, head.id),
                                           self._new_session)
                status = resp.status
                if (status in (401, 403) and self.auth is not None
                        and auth_rounds < MAX_AUTH_ROUNDS
                        and await self.auth.on_unauthorized(resp)):
                    auth_rounds += 1  # a 401, then perhaps a 403 asking for more scopes
                    continue
                if status == 404 and self.session_id is not None:
                    self._lose("session expired (HTTP 404)")
                    raise HttpError(f"{self.name}: the server ended the session "
                                    "(HTTP 404); re-initializing")
                if 400 <= status < 500 and await self._fed_error(resp, head):
                    return  # the request's own JSON-RPC error (2026-07-28 sends it so)
                if (status in LEGACY_STATUSES and head.method == "initialize"
                        and self.session_id is None):
                    await resp.read()
                    break  # an HTTP+SSE server: below
                if status >= 400:
                    raise HttpError(await _http_error(resp))
                sid = resp.headers.get(SESSION_HEADER)
                if sid is not None and head.method == "initialize":
                    self.session_id = sid
                if status == 202 or head.id is None or head.method is None:
                    await resp.read()
                    return
                ctype = resp.content_type
                if ctype == EVENT_STREAM:
                    await self._read_response_stream(resp, head)
                elif ctype == JSON:
                    body = await _read_bounded(resp, self.max_message)
                    if body.strip():
                        self._answered(body, head.id)
                else:
                    raise HttpError(f"unexpected content type {ctype!r} from {shown(self.url)} "
                                    f"(HTTP {status})")
                return
        await self._start_legacy()
        await self._legacy_post(data)

    async def _fed_error(self, resp: aiohttp.ClientResponse, head: _Head) -> bool:
        """Feed a 4xx answer that is this request's JSON-RPC error; False when the answer
        is no JSON, or may be a legacy server's refusal of `initialize`."""
        if head.id is None or resp.content_type != JSON:
            return False
        body = await _read_bounded(resp, self.max_message)
        try:
            answer: _Head | None = _head.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
            answer = None
        if answer is not None and answer.method is None and answer.id == head.id:
            self.feed(body)
            return True
        if (resp.status in LEGACY_STATUSES and head.method == "initialize"
                and self.session_id is None):
            return False
        raise HttpError(_error_text(resp, body[:500]))

    # -- streams ------------------------------------------------------------------------------
    async def _read_response_stream(self, resp: aiohttp.ClientResponse, head: _Head) -> None:
        """Feed a POST's event stream until the response to `head.id` has come; resume it
        with GET + Last-Event-ID if the server closes it before then."""
        parser = sse.Parser(self.max_message)
        answered = await self._pump(resp, parser, head.id)
        if answered:
            # read to its end, so that the connection goes back to the pool (left unread,
            # it would be closed, and every call would pay a new connection)
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with asyncio.timeout(DRAIN_TIMEOUT):
                    await self._pump(resp, parser, None)
            return
        resumes = 0
        while not answered:
            if parser.last_id is None:
                raise HttpError(f"{shown(self.url)} closed the response stream of {head.method} "
                                "before answering, and gave no event id to resume from")
            if resumes >= MAX_RESUMES:
                raise HttpError(f"{shown(self.url)} closed the response stream of {head.method} "
                                f"{MAX_RESUMES} times without answering")
            resumes += 1
            await asyncio.sleep(parser.retry)
            before = parser.last_id
            headers = await self._headers(EVENT_STREAM)
            headers["Last-Event-ID"] = parser.last_id
            async with self._session().get(self.url, headers=headers) as again:
                if again.status >= 400:
                    raise HttpError(f"resuming the stream of {head.method}: "
                                    f"{await _http_error(again)}")
                answered = await self._pump(again, parser, head.id)
            if parser.last_id != before:
                resumes = 0

    async def _pump(self, resp: aiohttp.ClientResponse, parser: sse.Parser,
                    until: jsonrpc.Id | None) -> bool:
        """Feed the stream's messages; True once the response to `until` went by (the
        stream is then left: a resumed or POST stream is done with)."""
        try:
            async for chunk in resp.content.iter_any():
                for ev in parser.feed(chunk):
                    if ev.event != "message" or not ev.data.strip():
                        continue
                    if until is None:
                        self.feed(ev.data)
                    elif self._answered(ev.data, until):
                        return True
        except sse.TooLarge as exc:
            raise HttpError(f"{shown(self.url)}: {exc} (limit {self.max_message} bytes)") from None
        except aiohttp.ClientPayloadError:
            pass  # the stream broke off: resumable like a closed one
        return False

    def _answered(self, data: bytes, rid: jsonrpc.Id) -> bool:
        """Feed a message of `rid`'s POST (its body or stream); True if it answers `rid`.
        One whose envelope is not UTF-8 is that answer's error (whose it is cannot be read;
        decision 1086); any other goes to the peer as a stdio server's line does."""
        try:
            got = _incoming.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            got = []
        except UnicodeDecodeError:
            self.feed(jsonrpc.encode(jsonrpc.ErrorResponse(rid, jsonrpc.ErrorObject(
                jsonrpc.PARSE_ERROR,
                f"the answer of MCP server {self.name} is {jsonrpc.not_utf8(data)}"))))
            return True
        self.feed(data)
        return any(e.method is msgspec.UNSET and e.id == rid
                   for e in (got if isinstance(got, list) else (got,)))

    async def _listen(self) -> None:
        """The GET stream: what the server sends outside any request, for the session's
        lifetime, reconnected (with Last-Event-ID) when it ends."""
        parser = sse.Parser(self.max_message)
        failures = 0
        while not self._closed:
            try:
                headers = await self._headers(EVENT_STREAM)
                if parser.last_id is not None:
                    headers["Last-Event-ID"] = parser.last_id
                async with self._session().get(self.url, headers=headers) as resp:
                    if resp.status == 405:
                        return  # the server offers no stream outside requests
                    if resp.status == 404 and self.session_id is not None:
                        self._lose("session expired (HTTP 404)")
                        return
                    if resp.status >= 400 or resp.content_type != EVENT_STREAM:
                        log.info("%s: no GET stream (HTTP %d)", self.name, resp.status)
                        return
                    failures = 0
                    await self._pump(resp, parser, None)
            except (aiohttp.ClientError, OSError, TimeoutError, HttpError) as exc:
                failures += 1
                log.info("%s: GET stream: %s", self.name, jsonrpc.describe(exc))
                if failures > MAX_RESUMES:
                    return
            await asyncio.sleep(parser.retry)

    # -- the legacy HTTP+SSE transport --------------------------------------------------------
    async def _start_legacy(self) -> None:
        if self._legacy_endpoint is None:
            self.legacy = True
            self._legacy_endpoint = asyncio.get_running_loop().create_future()
            self._listener = asyncio.ensure_future(self._legacy_stream())
        self._post_url = await self._legacy_endpoint

    async def _legacy_stream(self) -> None:
        assert self._legacy_endpoint is not None
        found = self._legacy_endpoint
        parser = sse.Parser(self.max_message)
        try:
            headers = await self._headers(EVENT_STREAM)
            async with self._session().get(self.url, headers=headers) as resp:
                if resp.status >= 400 or resp.content_type != EVENT_STREAM:
                    raise HttpError(
                        f"{shown(self.url)} is neither a Streamable HTTP endpoint nor an HTTP+SSE "
                        f"one (the initialize POST failed and GET answered HTTP "
                        f"{resp.status} {resp.content_type})")
                async for chunk in resp.content.iter_any():
                    for ev in parser.feed(chunk):
                        if ev.event == "endpoint" and not found.done():
                            if (why := jsonrpc.not_utf8(ev.data)) is not None:
                                raise HttpError(f"{shown(self.url)} sent an endpoint that is {why}")
                            found.set_result(urljoin(self.url, ev.data.decode().strip()))
                        elif ev.event == "message" and ev.data.strip():
                            self.feed(ev.data)
            raise HttpError(f"{shown(self.url)} closed the SSE stream")
        except (aiohttp.ClientError, OSError, TimeoutError, HttpError, sse.TooLarge) as exc:
            why = jsonrpc.describe(exc)
            if not found.done():
                found.set_exception(HttpError(why))
            self._lose(f"SSE stream lost: {why}")

    async def _legacy_post(self, data: bytes) -> None:
        headers = await self._headers(JSON)
        headers["Content-Type"] = JSON
        async with self._session().post(self._post_url, data=data, headers=headers) as resp:
            if resp.status >= 400:
                raise HttpError(await _http_error(resp))
            await resp.read()  # the answer comes on the SSE stream


def shown(url: object) -> str:
    """A URL as messages say it: its password hidden (redact.py)."""
    return _url(str(url))


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    if resp.content_length is not None and resp.content_length > limit:
        raise HttpError(f"a {resp.content_length}-byte answer from {shown(resp.url)} is over the "
                        f"limit of {limit} bytes")
    buf = bytearray()
    async for chunk in resp.content.iter_any():
        buf += chunk
        if len(buf) > limit:
            raise HttpError(f"an answer from {shown(resp.url)} of more than {limit} bytes (the "
                            "limit)")
    return bytes(buf)


async def _http_error(resp: aiohttp.ClientResponse) -> str:
    return _error_text(resp, await resp.content.read(500))


def _error_text(resp: aiohttp.ClientResponse, raw: bytes) -> str:
    body = raw.decode("utf-8", "replace").strip()
    text = f"HTTP {resp.status} {resp.reason or ''}".strip()
    return f"{resp.method} {shown(resp.url)}: {text}" + (f": {body}" if body else "")

