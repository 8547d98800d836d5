"""Server-Sent Events framing (the WHATWG event-stream format), both directions.

MCP's Streamable HTTP transport and the legacy HTTP+SSE transport carry JSON-RPC
messages as SSE events; the client side (mcp/http.py) parses them, a server side (the
gateway) writes them. No I/O here: bytes in, events out, and back.
"""

from __future__ import annotations

import msgspec


class Event(msgspec.Struct):
    data: bytes
    event: str = "message"
    id: str | None = None
    retry: int | None = None  # milliseconds: how long to wait before reconnecting


class TooLarge(Exception):
    """An event grew past the parser's limit."""


class Parser:
    """Incremental: `feed` any chunking of the stream, get the complete events. `max_event`
    bounds the bytes buffered for one event (a stream that never ends one must not grow
    memory without bound)."""

    def __init__(self, max_event: int) -> None:
        self.max_event = max_event
        self._buf = bytearray()
        self._data: list[bytes] = []
        self._size = 0
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self.last_id: str | None = None  # the stream's last event id (for Last-Event-ID)
        # seconds to wait before reconnecting: the server's last `retry`, else 1 s
        self.retry = 1.0

    def feed(self, chunk: bytes) -> list[Event]:
        buf = self._buf
        buf += chunk
        out: list[Event] = []
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            end = nl - 1 if nl > start and buf[nl - 1] == 0x0D else nl  # CRLF
            self._line(bytes(buf[start:end]), out)
            start = nl + 1
        del buf[:start]
        if len(buf) + self._size > self.max_event:
            raise TooLarge(f"an event of more than {self.max_event} bytes")
        return out

    def _line(self, line: bytes, out: list[Event]) -> None:
        if not line:
            self._dispatch(out)
            return
        if line[:1] == b":":
            return  # a comment (keep-alive)
        field, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._data.append(value)
            self._size += len(value) + 1
            if self._size > self.max_event:
                raise TooLarge(f"an event of more than {self.max_event} bytes")
        elif field == b"event":
            self._event = value.decode("utf-8", "replace")
        elif field == b"id":
            if b"\0" not in value:
                self._id = value.decode("utf-8", "replace")
        elif field == b"retry" and value.isdigit():
            self._retry = int(value)

    def _dispatch(self, out: list[Event]) -> None:
        if self._id is not None:
            self.last_id = self._id
        if self._retry is not None:
            self.retry = self._retry / 1000
        if self._data or self._retry is not None or self._id is not None:
            out.append(Event(b"\n".join(self._data), self._event or "message", self._id,
                             self._retry))
        self._data = []
        self._size = 0
        self._event = ""
        self._id = None
        self._retry = None


def format_event(data: bytes, id: str) -> bytes:
    """One `message` event on the wire; multi-line data becomes several `data:` lines."""
    lines = b"".join(b"data: " + line + b"\n" for line in data.split(b"\n"))
    return b"event: message\nid: " + id.encode() + b"\n" + lines + b"\n"
