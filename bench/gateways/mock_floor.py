"""The floor's mock OpenAI provider: mock_provider.py's answers served by one
asyncio.Protocol on uvloop with httptools (llhttp) reading the requests, no web
framework: one Python HTTP exchange at its least, what issue 90 calls the floor (a proxy
makes two). Keep-alive HTTP/1.1; a stream's events sent whole with a Content-Length.

    mock_floor.py PORT    (prints its address once it listens; serves until killed)
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httptools

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.gateways.mock_provider import answer_bytes

_heads: dict[tuple[int, bool], bytes] = {}


def head(length: int, stream: bool) -> bytes:
    key = (length, stream)
    if key not in _heads:
        kind = "text/event-stream" if stream else "application/json"
        _heads[key] = (f"HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\n"
                       f"Content-Length: {length}\r\n\r\n").encode()
    return _heads[key]


class Exchange(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's: no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        raw, stream = answer_bytes(json.loads(b"".join(self.body)))
        self.body.clear()
        assert self.transport is not None
        self.transport.write(head(len(raw), stream) + raw)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Exchange, "127.0.0.1", port)
    print(f"http://127.0.0.1:{port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve(int(sys.argv[1])))
