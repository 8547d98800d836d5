"""The floor of a proxy in Python (issue 90's "a proxy makes two"): each request read by
httptools and passed on to the one upstream over a kept-alive connection of its own, the
upstream's answer read by httptools and written back, on uvloop, in callbacks alone (no
coroutine, no task, no header read but the answer's content type, no check of anything).
What two Python HTTP exchanges cost at their least, measured as the daemon is (cpu.sh
`--work proxy`): the daemon's CPU a call over this one's is what corral's own work costs,
this one's over the mock's the ratio no Python proxy goes under. Whole answers and a
stream's events sent whole with a Content-Length (the floor's mock's) alone.

    proxy_floor.py PORT UPSTREAM    (prints its address once it listens)
"""

from __future__ import annotations

import asyncio
import sys
from urllib.parse import urlsplit

import httptools


class Upstream(asyncio.Protocol):
    """One client connection's kept-alive connection to the upstream."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.body: list[bytes] = []
        self.ctype = b"application/json"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's: no subclass

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.ctype = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        raw = b"".join(self.body)
        self.body.clear()
        self.client.answer(self.parser.get_status_code(), self.ctype, raw)


class Client(asyncio.Protocol):
    """A client's connection: its requests passed on in turn (one at a time)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.upstream: Upstream | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.waiting: list[bytes] = []  # requests made before the upstream connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        _, self.upstream = await asyncio.get_running_loop().create_connection(
            lambda: Upstream(self), self.host, self.port)
        assert self.upstream.transport is not None
        for request in self.waiting:
            self.upstream.transport.write(request)
        self.waiting.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        raw = b"".join(self.body)
        self.body.clear()
        request = b"POST %b HTTP/1.1\r\nHost: %b:%d\r\nContent-Type: application/json\r\n" \
            b"Content-Length: %d\r\n\r\n%b" % (self.url, self.host.encode(), self.port,
                                                len(raw), raw)
        self.url = b""
        if self.upstream is None or self.upstream.transport is None:
            self.waiting.append(request)
        else:
            self.upstream.transport.write(request)

    def answer(self, status: int, ctype: bytes, raw: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 %d OK\r\nContent-Type: %b\r\nContent-Length: %d\r\n"
                             b"\r\n%b" % (status, ctype, len(raw), raw))


async def serve(port: int, upstream: str) -> None:
    parts = urlsplit(upstream)
    host, up = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(host, up), "127.0.0.1", port)
    print(f"http://127.0.0.1:{port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve(int(sys.argv[1]), sys.argv[2]))
