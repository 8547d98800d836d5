"""The model gateway's HTTP/1.1 client for its upstreams: one request at a time on each
kept-alive connection, over an asyncio Protocol, its answer read by corral's one answer
reader (http1answer.py: llhttp, as the gateways' requests are: decisions 1671, 2200). Not
aiohttp's client: its machinery per call (a task, several futures, a stream reader) was a
third of the latency the gateway added to a small completion. An answer's head past
MAX_HEAD, or its body past MAX_ANSWER, fails the call naming the bound.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections.abc import Mapping
from typing import NamedTuple, cast
from urllib.parse import urlsplit

import msgspec

from ...http1answer import Http1Answer

MAX_ANSWER = 32 * 1024 * 1024  # bytes of an answer's body, a stream's events in all
KEEPALIVE = 60.0  # seconds an idle connection is kept for the next call
_HIGH, _LOW = 256 * 1024, 64 * 1024  # unread bytes that pause and resume reading
JOINED = 16 * 1024  # a body up to this size is written joined to its head: one buffer
MAX_TARGETS = 256  # URLs whose parts are kept (the config's models' endpoints)
_IDLE = float("inf")  # a connection's deadline between calls
_tls: ssl.SSLContext | None = None


class UpstreamFailed(Exception):
    """The connection failed, timed out, or the answer broke HTTP/1.1 or a bound; the
    message says which."""


class UpstreamUnanswered(UpstreamFailed):
    """The request was sent and its answer's head did not come in time: the upstream may
    have made the call (a whole answer's head comes after all of it is written), and
    billed it."""


class _Wire(asyncio.Protocol):
    """One connection's bytes as they arrive, and the one waiter for more."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        # (asyncio.get_running_loop asks the kernel for the pid, each time)
        self.loop = asyncio.get_running_loop()
        self.buffer = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.closed: BaseException | None = None  # why the connection ended, once it has
        self.paused = False
        self.expired = False  # the call's time ran out (not the body's end)
        self.received = 0  # bytes of this call's answer so far
        self.idle_since = 0.0
        # the call's deadline, checked by a timer armed once and re-armed when it fires
        # (a timer made and cancelled a call was a tenth of the client's CPU)
        self.deadline, self.timeout = _IDLE, 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.fires = _IDLE  # when `timer` fires
        # its answers' reader, made once (llhttp reads the answers of a kept-alive
        # connection in turn, so none is made a call, its callbacks looked up by name)
        self.answer = Http1Answer("the upstream", UpstreamFailed)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.buffer += data
        if len(self.buffer) > _HIGH and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.closed = self.closed or UpstreamFailed("the upstream closed the connection")
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {type(exc).__name__}: {exc}".rstrip(": ") if exc else ""
        self.closed = self.closed or UpstreamFailed(
            f"the upstream closed the connection{reason}")
        self._wake()

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def more(self) -> asyncio.Future[None]:
        """What is done when bytes arrive or the connection ends (UpstreamFailed, raised
        at once, if it had): awaited by the caller (no coroutine of its own a wait)."""
        if self.closed is not None:
            raise self.closed
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        waiter = self.waiter = self.loop.create_future()
        return waiter

    def take(self, n: int) -> bytes:
        if n >= len(self.buffer):  # (all of it: most reads) one copy
            data = bytes(self.buffer)
            self.buffer.clear()
        else:
            data = bytes(self.buffer[:n])
            del self.buffer[:n]
        if self.paused and len(self.buffer) < _LOW and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def arm(self, deadline: float, timeout: float) -> None:
        """The call's time ends at `deadline` (the timer armed only when it would fire
        after it)."""
        self.deadline, self.timeout = deadline, timeout
        if self.fires > deadline:
            if self.timer is not None:
                self.timer.cancel()
            self.timer, self.fires = self.loop.call_at(deadline, self._due), deadline

    def disarm(self, dropped: bool = False) -> None:
        """The call ended; `dropped`: the connection with it (its timer cancelled, not
        left holding it)."""
        self.deadline = _IDLE
        if dropped:
            self.answer.close()
            if self.timer is not None:
                self.timer.cancel()
                self.timer, self.fires = None, _IDLE

    def _due(self) -> None:
        self.timer, self.fires = None, _IDLE
        if self.deadline == _IDLE:
            return  # between calls: armed again by the next
        if self.loop.time() + 0.001 < self.deadline:  # (a later call's: not yet)
            self.timer, self.fires = self.loop.call_at(self.deadline, self._due), self.deadline
            return
        self.closed, self.expired = UpstreamFailed(
            f"the upstream did not answer in {self.timeout:g} s"), True
        if self.transport is not None:
            self.transport.abort()
        self._wake()


class UpstreamAnswer(msgspec.Struct):
    """An answer's status and headers (names lowercased), its body read whole (`read`) or
    as it comes (`ready`, then `more`) to where its Content-Length, its chunked encoding
    or the connection's end says (llhttp's reading); `release` gives the connection back,
    or ends it. A Struct: made a call with no Python of its own."""

    status: int
    headers: dict[str, str]
    ended: bool  # its body's end read (a small answer's came with its head)
    _client: UpstreamClient
    _origin: str
    _wire: _Wire
    _message: Http1Answer
    _decoder: zlib._Decompress | None = None
    received: int = 0  # bytes of its body so far, decoded (what a broken one passed)
    unanswered: int = 0  # tries before it the upstream took, unanswered (upstream.py)
    to_close: bool = False  # the connection is not kept after it

    async def read(self) -> bytes:
        """The body's bytes not yet taken (`ready`), to its end."""
        parts = [self.ready()]
        while not self.ended:
            await self.more()
            parts.append(self.ready())
        return b"".join(parts)

    def ready(self) -> bytes:
        """The body's bytes at hand (b"": none yet), decoded as its Content-Encoding says;
        `ended` once its end is read."""
        wire, message = self._wire, self._message
        if wire.buffer and not message.complete:  # (bytes past its end are left unread)
            message.feed(wire.take(len(wire.buffer)))
        chunk = message.take()
        self.ended = self.ended or message.complete
        if "content-encoding" in self.headers:  # (asked for identity: seldom)
            self._decoder = self._decoder or _decoder(self.headers["content-encoding"])
            if self._decoder is not None:
                chunk = self._decoder.decompress(chunk, MAX_ANSWER + 1 - self.received)
        self.received += len(chunk)
        if self.received > MAX_ANSWER:
            self.to_close = True  # (its end may have been read: not kept all the same)
            raise UpstreamFailed(f"the upstream's answer is over MAX_ANSWER "
                                 f"({MAX_ANSWER} bytes)")
        return chunk

    async def more(self) -> None:
        """Until bytes arrive: UpstreamFailed saying the body was cut, unless it is to the
        connection's end and that was it."""
        try:
            await self._wire.more()
        except UpstreamFailed as exc:
            if self._wire.expired:
                raise
            self._message.ended(str(exc))  # (its end, where its body runs to the close)
            self.ended = True

    def release(self) -> None:
        wire, message = self._wire, self._message
        reusable = self.ended and not self.to_close and not message.extra and \
            message.kept_alive and wire.closed is None
        kept = reusable and not wire.buffer
        wire.disarm(dropped=not kept)
        if kept:
            self._client.keep(self._origin, wire)
        elif wire.transport is not None:
            wire.transport.abort()


def _decoder(encoding: str) -> zlib._Decompress | None:
    encoding = encoding.strip().lower()
    if encoding in ("identity", ""):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(wbits=47)  # gzip's or zlib's header, told apart
    raise UpstreamFailed(f"the upstream's Content-Encoding {encoding[:40]!r} is not one "
                         "corral reads (asked for identity)")


class _Address(NamedTuple):
    """A URL's parts as a request to it needs them."""

    origin: str  # scheme, host and port: the connections kept for it
    tls: bool
    host: str
    port: int
    line: bytes  # the request line and its Host header


def _address(url: str) -> _Address:
    parts = urlsplit(url)
    tls, host, port = parts.scheme == "https", parts.hostname or "", parts.port
    port = port or (443 if tls else 80)
    shown = f"[{host}]" if ":" in host else host
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    line = f"POST {path} HTTP/1.1\r\nHost: {shown if parts.port is None else f'{shown}:{port}'}"
    return _Address(f"{parts.scheme}://{host}:{port}", tls, host, port, line.encode("latin-1"))


def fields(headers: Mapping[str, str]) -> bytes:
    """Headers as a request's lines; UpstreamFailed naming one that holds a line break.
    A caller whose headers are the same on every call (a route's) encodes them once."""
    text = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if "\0" in text or text.count("\n") != len(headers) or \
            text.count("\r") != len(headers):
        name = next(n for n, v in headers.items() if any(c in n + v for c in "\r\n\0"))
        raise UpstreamFailed(f"the header {name[:40]!r} for the upstream holds a line "
                             "break")
    # (an agent's header aiohttp read is UTF-8 with surrogateescape: its bytes as they came)
    return text.encode("utf-8", "surrogateescape")


def _request(line: bytes, body: bytes, lines: bytes) -> bytes:
    """The request's head (a large body is written after it, not joined to it: a copy
    of a 16 MiB body for as long as the call waits)."""
    return b"%b\r\nContent-Length: %d\r\nAccept-Encoding: identity\r\n%b\r\n" % (
        line, len(body), lines)


class UpstreamClient:
    """Kept-alive connections per origin (scheme, host and port), the newest reused first."""

    def __init__(self) -> None:
        self.idle: dict[str, list[_Wire]] = {}
        self.targets: dict[str, _Address] = {}  # a URL -> its parts, parsed once

    def keep(self, origin: str, wire: _Wire) -> None:
        wire.idle_since, wire.received = time.monotonic(), 0
        self.idle.setdefault(origin, []).append(wire)

    def _reused(self, origin: str) -> _Wire | None:
        kept = self.idle.get(origin)
        now = time.monotonic()
        while kept:
            wire = kept.pop()
            # (bytes that came while it was idle answer no call: were they read as the
            # next call's answer, an upstream would answer another caller's request)
            if wire.closed is None and not wire.received and \
                    now - wire.idle_since < KEEPALIVE:
                return wire
            wire.disarm(dropped=True)
            if wire.transport is not None:
                wire.transport.abort()
        return None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str] | bytes,
                   timeout: float, extra: Mapping[str, str] | None = None) -> UpstreamAnswer:
        """The answer's head read (its body not yet); UpstreamFailed when it cannot be.
        `headers` as `fields` encoded them, or to encode; `extra`: the call's own, after
        them. A kept connection that fails before any of the answer came (the upstream
        closed it while idle) is tried once more on a new one."""
        target = self.targets.get(url)
        if target is None:
            if len(self.targets) >= MAX_TARGETS:
                self.targets.clear()
            target = self.targets[url] = _address(url)
        lines = headers if isinstance(headers, bytes) else fields(headers)
        head = _request(target.line, body, lines + fields(extra) if extra else lines)
        message = (head + body,) if len(body) <= JOINED else (head, body)
        wire = self._reused(target.origin)
        loop = wire.loop if wire is not None else asyncio.get_running_loop()
        deadline = loop.time() + timeout
        kept = wire is not None
        while True:
            if wire is None:
                wire = await _connect(target, deadline, timeout)
            assert wire.transport is not None
            wire.arm(deadline, timeout)
            answer = wire.answer
            answer.begin()
            try:
                wire.transport.writelines(message)
                while not answer.head_done:  # (interim answers read past, bounded)
                    if not wire.buffer:
                        await wire.more()
                    answer.feed(wire.take(len(wire.buffer)))
                if answer.status == 101:  # (what follows is no HTTP's)
                    raise UpstreamFailed("the upstream switched protocols (101), asked "
                                         "for none")
                return UpstreamAnswer(answer.status, answer.headers, answer.complete, self,
                                      target.origin, wire, answer)
            except BaseException as exc:
                wire.disarm(dropped=True)
                wire.transport.abort()
                if kept and isinstance(exc, UpstreamFailed) and not (wire.received
                                                                     or wire.expired):
                    wire, kept = None, False  # (closed while idle: once more, on a new one)
                    continue
                if wire.expired and isinstance(exc, UpstreamFailed):
                    raise UpstreamUnanswered(str(exc)) from None
                raise

    def close(self) -> None:
        for kept in self.idle.values():
            for wire in kept:
                wire.disarm(dropped=True)
                if wire.transport is not None:
                    wire.transport.abort()
        self.idle.clear()


async def _connect(target: _Address, deadline: float, timeout: float) -> _Wire:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(deadline):
            _, wire = await loop.create_connection(
                _Wire, target.host, target.port, ssl=_context() if target.tls else None)
    except TimeoutError:
        raise UpstreamFailed(f"no connection in {timeout:g} s") from None
    except OSError as exc:
        raise UpstreamFailed(f"no connection: {type(exc).__name__}: {exc}") from None
    return wire


def _context() -> ssl.SSLContext:
    global _tls
    if _tls is None:
        _tls = ssl.create_default_context()
    return _tls
