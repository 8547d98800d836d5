"""`corral mcp serve`'s HTTP/1.1 exchanges with its daemon's local gateway socket: a
connection a request (`Connection: close`), the answer read by corral's one answer reader
(http1answer.py: llhttp, as the gateways read theirs). Not aiohttp's client: importing
aiohttp was most of the bridge's start, which every MCP host pays at each launch
(decision 1701).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from types import TracebackType

from ..http1answer import Http1Answer, read_from


class NoConnection(OSError):
    """No connection could be made: nothing was sent."""


class ExchangeError(Exception):
    """The connection failed or ended before the whole answer, or the answer is not
    HTTP/1.1 or passed a bound."""


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
        self._answer = Http1Answer("the daemon", ExchangeError)

    @property
    def content_type(self) -> str:
        return (self.headers.get("content-type") or "").partition(";")[0].strip().lower()

    async def _more(self) -> bool:
        """One read fed to the reader; False once the answer has ended."""
        try:
            return await read_from(self._reader, self._answer)
        except OSError as exc:
            raise ExchangeError(f"the connection failed: {exc}") from None

    async def _begin(self) -> None:
        while not self._answer.head_done:
            await self._more()
        self.status, self.headers = self._answer.status, Headers(self._answer.headers)

    async def read(self) -> bytes:
        while await self._more():
            pass
        return self._answer.take()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it comes."""
        while True:
            if body := self._answer.take():
                yield body
            if not await self._more():
                break
        if body := self._answer.take():
            yield body

    def close(self) -> None:
        self._answer.close()
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
