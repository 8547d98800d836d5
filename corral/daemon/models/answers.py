"""What the model gateway writes back to the agent: an answer as the upstream gave it, a
streamed one passed on as it comes (its last event held back until the answer is
journaled), a journaled one given again, and a refusal in the endpoint's format. A stream
that ends without its format's last event is no answer: nothing is journaled, and the
agent's connection is cut, so that its client raises as it would talking to the provider.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.web_request import BaseRequest

from ..http.route import body_of
from .http1 import UpstreamAnswer, UpstreamFailed
from .keys import hidden, hidden_headers
from .textdeltas import text_in
from .usage import CallUsage
from .wire import LAST, PASSED_BACK_PREFIXES, Format, event_read, refusal

SSE = "text/event-stream"
_REASONS = {s.value: s.phrase for s in HTTPStatus}
# a whole answer's head up to its length, by its status and content type (the upstream's)
_STARTS: dict[tuple[int, str], bytes] = {}
MAX_STARTS = 256
_decode = msgspec.json.Decoder()


class AnswerRecord(msgspec.Struct, array_like=True):
    """An answer as the step journal keeps it: its status, its content type, its body
    (a stream's events, every one)."""

    status: int
    type: str
    body: str

    @property
    def streamed(self) -> bool:
        return self.type.startswith(SSE)


class Whole(msgspec.Struct):
    """An answer read whole, its body as the upstream sent it (the key hidden): written
    to the agent as it is, and made a record (decoded) only for a task's journal."""

    status: int
    type: str
    body: bytes

    def record(self) -> AnswerRecord:
        return AnswerRecord(self.status, self.type, self.body.decode(errors="replace"))


class StreamCut(Exception):
    """The upstream's stream ended before its last event; the message says how."""


def passed_back(headers: Any) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower().startswith(PASSED_BACK_PREFIXES)}


class Exchange(msgspec.Struct):
    """One request to the model gateway and its answer, written to its connection as
    HTTP/1.1 bytes: whole with its Content-Length, a stream in chunks (an HTTP/1.0
    client's to the connection's end). lean.py's connection makes it with the body it
    read, the gateway's aiohttp handler with aiohttp's request (its body read as it
    comes, once the caller is known, by body_of). A Struct: made a call with no Python
    of its own."""

    conn: BaseProtocol  # aiohttp's protocol of the connection: its flow control
    transport: asyncio.Transport
    headers: Mapping[str, str]  # (looked up by lowercase names)
    query: Mapping[str, str]
    raw: bytes | None
    request: web.Request | None = None
    chunked: bool = True  # a stream's encoding (False: an HTTP/1.0 client's, to its end)
    _head: bytes = b""  # a stream's, until its first write
    status: int = 0  # the answer's, once it is begun
    path: str = ""  # its request's (lean.py's: what serves it)
    # its client's end cancels its call: a POST lean.py serves, and a model call of no
    # task until its dispatch (`ModelGateway._made`): nothing of it is made yet, and a
    # person's ask it waits on is withdrawn (decision 2280)
    cancels: bool = False

    async def body(self) -> bytes | None:
        """The body (None: over MAX_BODY), held once: by the call from here."""
        if self.request is not None:
            read = await body_of(self.request)
            return None if isinstance(read, web.Response) else read
        return self.take()

    def take(self) -> bytes | None:
        """lean.py's body, read with its head, held once: by the call from here."""
        raw, self.raw = self.raw, None
        return raw

    def gone(self) -> bool:
        return self.transport.is_closing()

    def answer(self, status: int, ctype: str, body: bytes,
               headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        if self.transport.is_closing():
            return
        if headers:
            head = _status_line(status, headers, (
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"))
        else:  # (most answers: their head to its length made once)
            start = _STARTS.get((status, ctype))
            if start is None:
                if len(_STARTS) >= MAX_STARTS:
                    _STARTS.clear()
                start = _STARTS[(status, ctype)] = _status_line(
                    status, None, f"Content-Type: {ctype}\r\n")[:-2] + b"Content-Length: "
            head = b"%b%d\r\n\r\n" % (start, len(body))
        self.transport.write(head + body)

    def begin(self, status: int, headers: Mapping[str, str]) -> None:
        """A stream's head (SSE), written with its first write."""
        self.status = status
        self._head = _status_line(status, headers, "Content-Type: text/event-stream\r\n"
                                  "Cache-Control: no-cache\r\n" + (
                                      "Transfer-Encoding: chunked\r\n" if self.chunked
                                      else ""))

    async def write(self, data: bytes) -> None:
        """`data` of the stream (b"": its head now); ConnectionResetError when gone."""
        self._chunk(data)
        if self.conn.writing_paused:  # (the agent reads slower than it comes)
            await self.conn._drain_helper()

    def end(self, data: bytes) -> None:
        self._chunk(data, b"0\r\n\r\n" if self.chunked else b"")
        if not self.chunked:
            self.transport.close()

    def _chunk(self, data: bytes, last: bytes = b"") -> None:
        """`data` as a chunk, after the head when it is not yet written, before `last`."""
        if self.transport.is_closing():
            raise ConnectionResetError("the agent hung up")
        head, self._head = self._head, b""
        if self.chunked and data:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self.transport.write(head + data + last)

    def cut(self) -> None:
        """The connection closed mid-stream, without the chunked encoding's end: the
        agent's client sees the stream fail."""
        self.transport.abort()


class WrittenResponse(web.StreamResponse):
    """What aiohttp's handler returns for an answer an Exchange wrote: nothing more
    (its status for the middlewares, metrics.py's count)."""

    def __init__(self, request: web.Request, status: int) -> None:
        super().__init__(status=status)
        self._keep_alive = request.keep_alive  # (what aiohttp's prepare would set)

    async def prepare(self, request: BaseRequest) -> None:
        if request.protocol.writing_paused:  # its answer unread: the next request waits
            await asyncio.gather(request.protocol._drain_helper(), return_exceptions=True)

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def _status_line(status: int, headers: Mapping[str, str] | None, fixed: str) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()) if headers else ""
    return f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n{fixed}{extra}\r\n" \
        .encode("latin-1")


def refused(ex: Exchange, fmt: Format, status: int, message: str,
            param: str | None = None, code: str | None = None) -> None:
    ex.answer(status, "application/json", refusal(fmt, status, message, param, code))


def whole(ex: Exchange, record: AnswerRecord | Whole,
          headers: Mapping[str, str] | None = None) -> None:
    """An answer given whole (a journaled stream too: its events at once)."""
    body = record.body if isinstance(record, Whole) else record.body.encode()
    ex.answer(record.status, record.type or "application/json", body, headers)


class Relay(msgspec.Struct):
    """One streamed answer passed on as it comes (each read of the upstream's one write of
    its complete events) and recorded (`recorded`, None: a call of no task keeps none);
    its last event held back until `finish`. A Struct: made with no Python of its own."""

    ex: Exchange
    fmt: Format
    answer: UpstreamAnswer
    usage: CallUsage
    # the text each event adds, told as it passes (the task's live output)
    on_text: Callable[[str], None] | None
    key: str | None
    recorded: list[bytes] | None  # the stream as it came, for a task's journal
    held: bytes = b""  # the last event, and anything after it
    # the data of the deltas of the read with the last event: read when needed alone
    unread: list[bytes | None] = msgspec.field(default_factory=list)
    gone: bool = False  # nothing more is written to the agent: it hung up, or it ended

    async def run(self) -> AnswerRecord | None:
        """Every event but the last passed on (when not recorded, the last too, with the
        end); the whole stream recorded (when it is); StreamCut when it has no last event."""
        answer, out, rest = self.answer, b"", b""
        if not self.gone:  # (the head, written with the first write)
            self.ex.begin(answer.status, hidden_headers(passed_back(answer.headers), self.key))
        try:
            chunk = answer.ready()
            if not chunk:  # none of it yet: the head now, as the upstream's came
                await self._write(b"")
            while True:
                if self.recorded is not None:
                    self.recorded.append(chunk)
                rest += chunk
                end = rest.rfind(b"\n\n") + 2
                if end > 1 and not self.held:
                    out += self._pass(rest[:end])
                    rest = rest[end:]
                if answer.ended:
                    break
                if out:  # (all that came at once in one write, before a wait)
                    await self._write(out)
                    out = b""
                await answer.more()
                chunk = answer.ready()
        except UpstreamFailed as exc:
            raise StreamCut(f"the upstream's stream failed: {exc}") from None
        finally:  # (what passed is counted only when the upstream did not say it)
            if not (answer.ended and self.usage.said):
                self._passed()
        if not self.held:
            raise StreamCut("the upstream's stream ended before its last event")
        self.usage.complete = True
        self.held = hidden(self.held + rest, self.key)
        if self.recorded is None:  # (no journal to wait for)
            self._end(out + self.held)
            return None
        await self._write(out)
        return AnswerRecord(self.answer.status, SSE, hidden(b"".join(self.recorded),
                                                            self.key).decode(errors="replace"))

    def _pass(self, events: bytes) -> bytes:
        """Complete events read for usage and text; what is passed on, up to the last
        event (held from there: a key quoted is within one event, hidden here whole)."""
        events = hidden(events, self.key)
        usage, last, unread = self.usage, LAST[self.fmt], self.unread
        split = events.split(b"\n\n")
        for i, event in enumerate(split[:-1]):
            data, ends = event_read(event, last)
            if b'"usage"' in event or (usage.model is None and b'"model"' in event):
                usage.read_body(data or b"")
            if b"delta" in event:  # (an event adding to the answer, in each format)
                unread.append(data)
            if ends:  # (where it begins: the events before it and their blank lines)
                start = len(b"\n\n".join(split[:i])) + 2 * (i > 0)
                self.held, events = events[start:], events[:start]
                break
        if not self.held or self.on_text is not None:
            self._passed()
        return events

    def _passed(self) -> None:
        """The text of `unread` told and counted (what a cut stream is counted by)."""
        for data in self.unread:
            text = text_in(_data_of(data))
            self.usage.passed_text(text)
            if self.on_text is not None and text is not None:
                self.on_text(text)
        self.unread.clear()

    async def _write(self, data: bytes) -> None:
        """`data` written to the agent (b"": the head alone)."""
        if self.gone:
            return
        try:
            await self.ex.write(data)
        except ConnectionResetError:  # (aiohttp's ClientConnectionResetError is one)
            self.gone = True

    def _end(self, data: bytes) -> None:
        """`data` written to the agent, ending the stream (no wait: nothing follows)."""
        if self.gone:
            return
        self.gone = True
        with contextlib.suppress(ConnectionResetError):
            self.ex.end(data)

    def finish(self) -> None:
        """The held last event written and the stream ended, in one write."""
        self._end(self.held)


def _data_of(data: bytes | None) -> Any:
    """An event's data decoded (None when it is not JSON)."""
    try:
        return _decode.decode(data or b"")
    except msgspec.DecodeError:
        return None


async def replayed(ex: Exchange, record: AnswerRecord) -> None:
    """A journaled answer given again: a stream as the same events, in one write."""
    if not record.streamed:
        return whole(ex, record)
    ex.begin(record.status, {})
    ex.end(record.body.encode())
