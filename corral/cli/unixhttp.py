"""`corral mcp serve`'s HTTP/1.1 exchanges with its daemon's local gateway socket: a
connection a request (`Connection: close`), the answer read by httptools' parser (llhttp,
as the gateways read theirs). Not aiohttp's client: importing aiohttp was most of the
bridge's start, which every MCP host pays at each launch (decision 1701).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from types import TracebackType

import httptools

READ = 64 * 1024  # bytes asked of the socket at once
MAX_HEAD = 64 * 1024  # bytes of an answer's status line and headers


class NoConnection(OSError):
    """No connection could be made: nothing was sent."""


class ExchangeError(Exception):
    """The connection failed or ended before the whole answer, or the answer is not
    HTTP/1.1."""


class Headers(dict[str, str]):
    """An answer's headers, their names in lower case, found whatever the case asked."""

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(name.lower(), default)


class HttpAnswer:
    """One answer: its status and headers once made; its body read whole (`read`) or as
    it comes (`chunks`). Its connection is closed at the end of its `async with`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.status = 0
        self.headers = Headers()
        self._reader, self._writer = reader, writer
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._head = self._done = False
        self._read = 0  # bytes read before the head ended

    # -- the parser's callbacks --------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self._head = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._done = True

    # -- reading ---------------------------------------------------------------------------
    @property
    def content_type(self) -> str:
        return (self.headers.get("content-type") or "").partition(";")[0].strip().lower()

    async def _more(self) -> bool:
        """One read fed to the parser; False once the answer has ended."""
        if self._done:
            return False
        try:
            data = await self._reader.read(READ)
        except OSError as exc:
            raise ExchangeError(f"the connection failed: {exc}") from None
        if not data:
            # a body of no stated length runs to the connection's end
            if self._head and "content-length" not in self.headers and "chunked" not in \
                    (self.headers.get("transfer-encoding") or "").lower():
                self._done = True
                return False
            raise ExchangeError("the connection ended before the "
                         + ("whole answer" if self._head else "answer's head"))
        if not self._head:
            self._read += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise ExchangeError(f"not an HTTP/1.1 answer: {exc}") from None
        if not self._head and self._read > MAX_HEAD:
            raise ExchangeError(f"an answer's head over {MAX_HEAD} bytes")
        return True

    async def _begin(self) -> None:
        while not self._head:
            await self._more()

    def _taken(self) -> bytes:
        body, self._body = b"".join(self._body), []
        return body

    async def read(self) -> bytes:
        while await self._more():
            pass
        return self._taken()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it comes."""
        while True:
            if self._body:
                yield self._taken()
            if not await self._more():
                break
        if self._body:
            yield self._taken()

    def close(self) -> None:
        self._writer.close()

    async def __aenter__(self) -> HttpAnswer:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()


async def exchange(path: str, method: str, target: str, headers: Mapping[str, str],
                   body: bytes | None = None) -> HttpAnswer:
    """`method target` sent on the unix socket at `path`, once its answer's head is read.
    NoConnection when no connection is made; ExchangeError when it fails after that."""
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost", "Connection: close"]
    for name, value in headers.items():
        if any(c in value for c in "\r\n\0") or any(c in name for c in "\r\n\0:"):
            raise ValueError(f"a header no HTTP/1.1 request may carry: {name}")
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
    try:
        reader, writer = await asyncio.open_unix_connection(path)
    except OSError as exc:
        raise NoConnection(exc.errno, exc.strerror) from None
    answer = HttpAnswer(reader, writer)
    try:
        writer.write(request)
        await answer._begin()
    except BaseException:
        writer.close()
        raise
    return answer
