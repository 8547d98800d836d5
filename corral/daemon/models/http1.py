"""The model gateway's HTTP/1.1 client for its upstreams: one request at a time on each
kept-alive connection, over an asyncio Protocol, its answer parsed here. Not aiohttp's
client: its machinery per call (a task, several futures, a stream reader) was a third of
the latency the gateway added to a small completion. An answer's head past MAX_HEAD, or its
body past MAX_ANSWER, fails the call naming the bound.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024  # bytes of an answer's status line and headers
MAX_ANSWER = 32 * 1024 * 1024  # bytes of an answer's body, a stream's events in all
KEEPALIVE = 60.0  # seconds an idle connection is kept for the next call
_HIGH, _LOW = 256 * 1024, 64 * 1024  # unread bytes that pause and resume reading
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

    async def more(self) -> None:
        """Until bytes arrive or the connection ends (UpstreamFailed if it had)."""
        if self.closed is not None:
            raise self.closed
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        self.waiter = self.loop.create_future()
        await self.waiter

    def take(self, n: int) -> bytes:
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        if self.paused and len(self.buffer) < _LOW and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def expire(self, why: str) -> None:
        """The call's time is up: the connection ends, its reader told why."""
        self.closed, self.expired = UpstreamFailed(why), True
        if self.transport is not None:
            self.transport.abort()
        self._wake()


class UpstreamAnswer:
    """An answer's status and headers (names lowercased), its body read whole (`read`) or
    as it comes (`chunks`); `release` gives the connection back, or ends it mid-body."""

    def __init__(self, client: UpstreamClient, origin: str, wire: _Wire, status: int,
                 headers: dict[str, str], timer: asyncio.TimerHandle) -> None:
        self.status = status
        self.headers = headers
        self._client, self._origin, self._wire, self._timer = client, origin, wire, timer
        self._framing = _Framing(status, headers, wire)
        self._done = False
        self.received = 0  # bytes of its body so far, decoded (what a broken one passed)
        self.unanswered = 0  # tries before it the upstream took, unanswered (upstream.py)

    def at_hand(self) -> bool:
        """Whether some of the body has come already (read without a wait)."""
        return bool(self._wire.buffer) or self._framing.length == 0

    async def read(self) -> bytes:
        framing, wire = self._framing, self._wire
        if 0 <= framing.length <= min(len(wire.buffer), MAX_ANSWER) \
                and "content-encoding" not in self.headers:  # (come whole: most answers)
            self._done, self.received = True, framing.length
            return wire.take(framing.length)
        return b"".join([chunk async for chunk in self.chunks()])

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive, decoded as its Content-Encoding says."""
        decoder = _decoder(self.headers.get("content-encoding", "identity"))
        total = 0
        async for raw in self._framing.parts():
            chunk = decoder.decompress(raw, MAX_ANSWER + 1 - total) if decoder else raw
            total += len(chunk)
            self.received = total
            if total > MAX_ANSWER:
                raise UpstreamFailed(f"the upstream's answer is over MAX_ANSWER "
                                     f"({MAX_ANSWER} bytes)")
            if chunk:
                yield chunk
        self._done = True

    def release(self) -> None:
        self._timer.cancel()
        wire = self._wire
        reusable = self._done and not self._framing.to_close and wire.closed is None
        if reusable and not wire.buffer:
            self._client.keep(self._origin, wire)
        elif wire.transport is not None:
            wire.transport.abort()


class _Framing:
    """Where an answer's body ends: its Content-Length, its chunked encoding, or the
    connection's end."""

    def __init__(self, status: int, headers: dict[str, str], wire: _Wire) -> None:
        self.wire = wire
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self.to_close = headers.get("connection", "").lower() == "close"
        if status in (204, 304):
            length = "0"
        if self.chunked or length is None:
            self.length = -1
            self.to_close = self.to_close or not self.chunked
        elif length.isdigit() and len(length) < 19:
            self.length = int(length)
        else:
            raise UpstreamFailed(f"the upstream's Content-Length {length[:40]!r} is not a "
                                 "number")

    async def parts(self) -> AsyncIterator[bytes]:
        if self.chunked:
            async for part in self._chunked():
                yield part
            return
        wire, left = self.wire, self.length
        while left:
            if not wire.buffer:
                try:
                    await wire.more()
                except UpstreamFailed:
                    if wire.expired:
                        raise
                    if left < 0:  # a body to the connection's end: this is its end
                        return
                    raise UpstreamFailed("the upstream's answer ended before its "
                                         "Content-Length") from None
            part = wire.take(len(wire.buffer) if left < 0 else left)
            left -= len(part) if left > 0 else 0
            yield part

    async def _chunked(self) -> AsyncIterator[bytes]:
        wire = self.wire
        while True:
            line = await _line(wire, "a chunk's size")
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise UpstreamFailed(f"the upstream's chunk size {size_text[:20]!r} is "
                                     "not hexadecimal") from None
            if size == 0:
                while await _line(wire, "its trailers"):
                    pass
                return
            while size:
                while not wire.buffer:
                    await _more(wire, "a chunk")
                part = wire.take(min(size, len(wire.buffer)))
                size -= len(part)
                yield part
            if await _line(wire, "a chunk's end"):
                raise UpstreamFailed("the upstream's chunk is longer than its size")


async def _more(wire: _Wire, what: str) -> None:
    try:
        await wire.more()
    except UpstreamFailed as exc:
        raise UpstreamFailed(f"the upstream's answer was cut in {what} ({exc})") from None


async def _line(wire: _Wire, what: str) -> bytes:
    while (end := wire.buffer.find(b"\r\n")) < 0:
        if len(wire.buffer) > MAX_HEAD:
            raise UpstreamFailed(f"the upstream's line in {what} is over MAX_HEAD "
                                 f"({MAX_HEAD} bytes)")
        await _more(wire, what)
    return wire.take(end + 2)[:-2]


def _decoder(encoding: str) -> zlib._Decompress | None:
    encoding = encoding.strip().lower()
    if encoding in ("identity", ""):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(wbits=47)  # gzip's or zlib's header, told apart
    raise UpstreamFailed(f"the upstream's Content-Encoding {encoding[:40]!r} is not one "
                         "corral reads (asked for identity)")


def _head(data: bytes) -> tuple[int, dict[str, str]]:
    lines = data.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise UpstreamFailed(f"the upstream's answer is not HTTP/1.1: "
                             f"{lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise UpstreamFailed(f"the upstream's header line {line[:60]!r} is malformed")
        key = name.decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return int(code), headers


def _request(path: str, host: str, body: bytes, headers: dict[str, str]) -> bytes:
    """The request's head (its body is written after it, not joined to it: a copy of a
    16 MiB body for as long as the call waits)."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}",
             "Accept-Encoding: identity"]
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n\0"):
            raise UpstreamFailed(f"the header {name[:40]!r} for the upstream holds a line "
                                 "break")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class UpstreamClient:
    """Kept-alive connections per origin (scheme, host and port), the newest reused first."""

    def __init__(self) -> None:
        self.idle: dict[str, list[_Wire]] = {}

    def keep(self, origin: str, wire: _Wire) -> None:
        wire.idle_since, wire.received = time.monotonic(), 0
        self.idle.setdefault(origin, []).append(wire)

    def _reused(self, origin: str) -> _Wire | None:
        kept = self.idle.get(origin)
        now = time.monotonic()
        while kept:
            wire = kept.pop()
            if wire.closed is None and now - wire.idle_since < KEEPALIVE:
                return wire
            if wire.transport is not None:
                wire.transport.abort()
        return None

    async def post(self, url: str, body: bytes, headers: dict[str, str],
                   timeout: float) -> UpstreamAnswer:
        """The answer's head read (its body not yet); UpstreamFailed when it cannot be.
        A kept connection that fails before any of the answer came (the upstream closed
        it while idle) is tried once more on a new one."""
        parts = urlsplit(url)
        tls, host, port = parts.scheme == "https", parts.hostname or "", parts.port
        port = port or (443 if tls else 80)
        origin = f"{parts.scheme}://{host}:{port}"
        shown = f"[{host}]" if ":" in host else host
        head = _request((parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                        shown if parts.port is None else f"{shown}:{port}", body, headers)
        message = (head, body)
        wire = self._reused(origin)
        loop = wire.loop if wire is not None else asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if wire is not None:
            try:
                return await self._exchange(origin, wire, message, deadline, timeout)
            except UpstreamFailed:
                if wire.received or wire.expired:
                    raise
        try:
            async with asyncio.timeout_at(deadline):
                _, wire = await loop.create_connection(
                    _Wire, host, port, ssl=_context() if tls else None)
        except TimeoutError:
            raise UpstreamFailed(f"no connection in {timeout:g} s") from None
        except OSError as exc:
            raise UpstreamFailed(f"no connection: {type(exc).__name__}: {exc}") from None
        return await self._exchange(origin, wire, message, deadline, timeout)

    async def _exchange(self, origin: str, wire: _Wire, message: tuple[bytes, bytes],
                        deadline: float, timeout: float) -> UpstreamAnswer:
        assert wire.transport is not None
        timer = wire.loop.call_at(deadline, wire.expire,
                                  f"the upstream did not answer in {timeout:g} s")
        try:
            wire.transport.writelines(message)
            status = 100
            while status < 200:  # an interim answer (100 Continue): the real one follows
                while (end := wire.buffer.find(b"\r\n\r\n")) < 0:
                    if len(wire.buffer) > MAX_HEAD:
                        raise UpstreamFailed(f"the upstream's answer's head is over "
                                             f"MAX_HEAD ({MAX_HEAD} bytes)")
                    await wire.more()
                status, headers = _head(wire.take(end + 4)[:-4])
            answer = UpstreamAnswer(self, origin, wire, status, headers, timer)
        except BaseException as exc:
            timer.cancel()
            wire.transport.abort()
            if wire.expired and isinstance(exc, UpstreamFailed):
                raise UpstreamUnanswered(str(exc)) from None
            raise
        return answer

    def close(self) -> None:
        for kept in self.idle.values():
            for wire in kept:
                if wire.transport is not None:
                    wire.transport.abort()
        self.idle.clear()


def _context() -> ssl.SSLContext:
    global _tls
    if _tls is None:
        _tls = ssl.create_default_context()
    return _tls
