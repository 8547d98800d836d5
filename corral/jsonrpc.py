"""The one JSON-RPC 2.0 wire layer: message types, error codes, line framing, and `Peer`.

Every channel corral speaks (supervisor<->worker, supervisor<->MCP server, CLI<->daemon)
is one compact JSON object per line, UTF-8, no embedded newlines. Envelopes are decoded
with msgspec and `params`/`result` are kept as `msgspec.Raw` so that each consumer decodes
them straight into its own typed Struct, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from typing import Any, Protocol, cast

import msgspec
from msgspec import UNSET, Raw, UnsetType

from .text import one_line

log = logging.getLogger("corral.jsonrpc")

# -- error codes: the standard ones, then corral's own (-32000..-32099), named once --------
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

SERVER_ERROR = -32000  # generic failure of the operation asked for
PEER_CLOSED = -32001  # the other side went away with the request in flight
REQUEST_TIMEOUT = -32002  # no answer within the request's timeout
REQUEST_CANCELLED = -32003  # the caller cancelled the request
UNAUTHORIZED = -32004  # control socket: peer uid not allowed
FORBIDDEN = -32005  # the caller lacks the scope the method needs
NOT_FOUND = -32010  # no such agent / task / tool
CONFLICT = -32011  # duplicate name, wrong state for the operation
REFUSED = -32012  # admission refused for now: queue full, rate limited, agent down
UNAVAILABLE = -32013  # a service the operation needs is away (the cluster's Redis)
QUOTA_EXCEEDED = -32014  # past a fixed quota (a tenant's max_agents): waiting changes nothing
TOOL_NOT_ALLOWED = -32020  # outside the agent's allowlist
TOOL_BUDGET_EXCEEDED = -32021  # past max_tool_calls_per_task
STEP_BUDGET_EXCEEDED = -32022  # past max_step_bytes (docs/durable.md)
TASK_FAILED = -32030  # the agent's handler raised
UNSUPPORTED_VERSION = -32040  # protocol version negotiation failed
MESSAGE_TOO_LARGE = -32041  # the answer was longer than the channel's line limit

# the head of the error that answers a line which is not a message (no other code is named)
ERROR_NAMES = {PARSE_ERROR: "parse error", INVALID_REQUEST: "invalid request"}
MAX_KEPT_ID = 256  # a string id longer is not kept as a peer's `last_id`

DEFAULT_MAX_LINE = 16 * 1024 * 1024
OVERSIZE_ENDS = 256  # bytes kept of each end of a discarded line: where its id is
# seconds between log lines about one reader's failing line handlers: a flood of lines
# whose handling raises is one line per reader this often, counting the rest
HANDLER_LOG_EVERY = 10.0
# ids of requests given up on without a cancel, kept so their late answers are not garbage
KEEP_FORGOTTEN = 64
# a response's id, at the start of its line (Python SDK order) or at its end (TypeScript's)
_ID_AT_START = re.compile(rb'^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*'
                          rb'(-?\d+|"(?:[^"\\]|\\.)*")')
_ID_AT_END = re.compile(rb'"id"\s*:\s*(-?\d+|"(?:[^"\\]|\\.)*")\s*'
                        rb'(?:,\s*"jsonrpc"\s*:\s*"2\.0"\s*)?\}\s*$')
# A success response as corral's SDK (and most encoders of a dict) writes it: where the
# line starts so, the request it answers may have asked for a one-pass typed decode.
_RESULT_HEAD = re.compile(rb'\{"jsonrpc":"2\.0","id":(\d{1,15}),"result":')
# what stands in an encoded message for a Raw sent as a piece of its own (`encode_parts`):
# a NUL byte is never in msgspec's JSON (control characters are escaped), only in a Raw
SPLICE = Raw(b"\x00")
TOO_DEEP = "JSON nested too deeply"


def visible(name: str, limit: int = 80) -> str:
    """A name from a peer as an error message shows it: as is when it reads plainly,
    else quoted (an empty name, control characters), and cut short when long."""
    shown = name if name and name.isprintable() and name.strip() == name else repr(name)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(name)} characters)"


def method_not_found(method: str) -> RpcError:
    return RpcError(METHOD_NOT_FOUND, f"method not found: {visible(method)}")


def not_found(what: str, name: str) -> RpcError:
    """`no such agent: NAME` and the like, the name shown `visible`."""
    return RpcError(NOT_FOUND, f"no such {what}: {visible(name)}")


@contextlib.contextmanager
def invalid_params(*errors: type[Exception]) -> Iterator[None]:
    """What `errors` say of a call's params, as its INVALID_PARAMS (their text as it is)."""
    try:
        yield
    except errors as exc:
        raise RpcError(INVALID_PARAMS, str(exc)) from None


def describe(exc: BaseException) -> str:
    """An exception in words, never empty (str(MemoryError()) is "")."""
    return str(exc) or type(exc).__name__


Id = int | str


# -- messages -------------------------------------------------------------------------------
class ErrorObject(msgspec.Struct, omit_defaults=True):
    code: int
    message: str
    data: Any = None


# `params` is UNSET (left out) rather than null when there are none: JSON-RPC 2.0 allows
# only a structured value there, and strict servers reject null.
class Request(msgspec.Struct):
    method: str
    id: Id
    params: Any = UNSET
    jsonrpc: str = "2.0"


class Notification(msgspec.Struct):
    method: str
    params: Any = UNSET
    jsonrpc: str = "2.0"


class Response(msgspec.Struct):
    id: Id | None
    result: Any
    jsonrpc: str = "2.0"


class ErrorResponse(msgspec.Struct):
    id: Id | None
    error: ErrorObject
    jsonrpc: str = "2.0"


class Envelope(msgspec.Struct):
    """Any incoming message; which fields are set says what it is."""

    jsonrpc: str | UnsetType = UNSET
    id: Id | UnsetType | None = UNSET
    method: str | UnsetType = UNSET
    params: Raw | UnsetType = UNSET
    result: Raw | UnsetType = UNSET
    error: ErrorObject | UnsetType = UNSET


class _DecodedValue:
    """A result decoded with its answer's line (`Peer.request`)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


_answer_decoders: dict[Any, Callable[[bytes], tuple[int, _DecodedValue]]] = {}


def _answer_decoder(type: Any) -> Callable[[bytes], tuple[int, _DecodedValue]]:
    """A decoder of a whole success answer whose result is `type`, in one pass (made once
    per type: a Struct of the answer's three members, nothing else allowed)."""
    decode = _answer_decoders.get(type)
    if decode is None:
        answer = msgspec.defstruct("Answer", [("jsonrpc", str), ("id", int), ("result", type)],
                                   forbid_unknown_fields=True)
        decoder = msgspec.json.Decoder(answer)

        def decode(line: bytes) -> tuple[int, _DecodedValue]:
            answer: Any = decoder.decode(line)
            return answer.id, _DecodedValue(answer.result)

        _answer_decoders[type] = decode
    return decode


class RpcError(Exception):
    """A JSON-RPC error, raised by handlers and by `Peer.request`."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_object(self) -> ErrorObject:
        return ErrorObject(self.code, self.message, self.data)

    def __repr__(self) -> str:
        return f"RpcError({self.code}, {self.message!r})"


_encoder = msgspec.json.Encoder()
_envelope_decoder = msgspec.json.Decoder(Envelope)
_batch_decoder = msgspec.json.Decoder(list[Envelope])


def encode(msg: Any) -> bytes:
    """One message as one line, newline included; encoded in place, so a large message
    is copied once (not once more to append its newline)."""
    buf = bytearray()
    _encoder.encode_into(msg, buf)
    buf += b"\n"
    return buf  # type: ignore[return-value]  # bytes-like; every writer takes it


def encode_parts(msg: Any, piece: Raw) -> list[bytes | memoryview]:
    """`msg`, whose one `SPLICE` stands for `piece`, as the pieces of one line: the message
    around a large Raw is encoded alone and the Raw is never copied into it (written with
    one writev)."""
    head, tail = _encoder.encode(msg).split(b"\x00")
    return [head, memoryview(piece), tail + b"\n"]


def not_utf8(data: bytes) -> str | None:
    """Why `data` is not UTF-8, or None: msgspec checks only what it decodes, so a message's
    reader checks its params and result (kept Raw) here, once, for every later decode."""
    try:
        if not data.isascii():
            data.decode()
    except UnicodeDecodeError as exc:
        return f"not UTF-8: {exc.reason} at byte {exc.start}"
    return None


def decode_params(raw: Raw | UnsetType | None, type: type[Any]) -> Any:
    """Decode `params` into `type`, raising INVALID_PARAMS with msgspec's path-precise text."""
    data = b"{}" if raw is UNSET or raw is None or bytes(raw) == b"null" else raw  # type: ignore[arg-type]
    try:
        return msgspec.json.decode(data, type=type)
    except msgspec.DecodeError as exc:  # a ValidationError (a Raw is valid JSON)
        raise RpcError(INVALID_PARAMS, f"invalid params: {exc}") from None
    except UnicodeDecodeError as exc:  # a string that is not UTF-8 (found by the fuzz test)
        raise RpcError(INVALID_PARAMS, f"invalid params: not UTF-8: {exc.reason} at byte "
                                       f"{exc.start}") from None
    except RecursionError:  # (an HTTP body is not checked as a socket's line is)
        raise RpcError(INVALID_PARAMS, "invalid params: nested too deeply") from None


# -- framing --------------------------------------------------------------------------------
# An idle channel's read buffer: what a thousand agents' stdout hold between messages (4 MiB
# in all; 256 KiB each made the daemon's RSS 300 MiB at 1000 agents)
IDLE_BUFFER = 4 * 1024
MIN_READ = 1024  # the least room a read is given


class LineProtocol(asyncio.BufferedProtocol):
    """Splits a byte stream into lines with a hard cap on line length.

    Reads go straight into the protocol's own buffer (asyncio's pipe transports call
    `data_received`, which copies into it) and each line is copied out of it once: a 1 MB
    line costs one copy, not a bytes object per read and a growing join. A line that
    outgrows the buffer moves to a larger one, kept while long lines keep coming and given
    back at the next short line, so an idle channel holds IDLE_BUFFER (never resized in
    place: the transport may hold a view of it while it reports a read).

    A line longer than `max_line` is never buffered: it is skipped up to its newline, and
    `on_oversize` told its size and first and last `OVERSIZE_ENDS` bytes (where a
    response's id is: `Peer.oversized` fails that request at once).

    `pause()` stops both reading and the delivery of lines already read (at most one
    read's worth is held); `resume()` delivers them and reads again. A line's handler that
    raises is logged with the line and the next line read: an error let out of a read is
    the transport's fatal error, the end of all reading of the channel.
    """

    def __init__(
        self,
        on_line: Callable[[bytes], None],
        on_eof: Callable[[Exception | None], None],
        *,
        max_line: int = DEFAULT_MAX_LINE,
        on_oversize: Callable[[int, bytes, bytes], None] | None = None,
        last_line_unterminated: bool = True,
        on_lines_end: Callable[[], None] | None = None,
        name: str = "a line reader",
    ) -> None:
        self.on_line = on_line
        self.name = name  # for the log of a handler's error
        # told once the lines of one read are delivered: what their handlers began can be
        # finished for all of them at once (a worker's answers free slots; the next tasks
        # start together)
        self.on_lines_end = on_lines_end
        self.on_eof = on_eof
        self.on_oversize = on_oversize
        # whether a last line without its newline still counts as a line when the
        # connection is lost rather than ended by the other side (a worker's last words
        # do; a request cut off by a reset or our hanging up is not a request)
        self.last_line_unterminated = last_line_unterminated
        self.max_line = max_line
        self._rbuf = bytearray(IDLE_BUFFER)
        # unconsumed bytes are _rbuf[_start:_end]; _start:_scanned holds no newline
        self._start = self._end = self._scanned = 0
        self._long = 0  # the last long line's size (`_make_room`)
        self._skipping = 0  # bytes skipped of the current oversized line, 0 when not skipping
        self._head = b""  # the first bytes of the line being skipped
        self._tail = b""  # its last bytes so far
        self.transport: asyncio.BaseTransport | None = None
        self.paused = False
        self.at_eof = False
        self.handler_failures = 0
        self._unlogged = 0  # of those, the ones not in the log yet
        self._logged_at = float("-inf")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def pause(self) -> None:
        if not self.paused:
            self.paused = True
            if self.transport is not None:  # uvloop's are not registered as ReadTransport
                cast(asyncio.ReadTransport, self.transport).pause_reading()

    def resume(self) -> None:
        if not self.paused:
            return
        self.paused = False
        self._process()
        if self.paused:
            return
        if self.at_eof:
            self._flush_tail()
        elif self.transport is not None and not self.transport.is_closing():
            cast(asyncio.ReadTransport, self.transport).resume_reading()

    @property
    def holding(self) -> bool:
        """Lines read but not yet delivered (paused), or a partial line."""
        return self._end > self._start

    # reading ------------------------------------------------------------------------------
    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self._rbuf) - self._end < MIN_READ:
            self._make_room()
        return memoryview(self._rbuf)[self._end:]

    def _make_room(self) -> None:
        """The unconsumed bytes to the buffer's start; in a new buffer (twice the size, or
        the last long line's) if they need more room."""
        part, start = self._end - self._start, self._start
        if part + MIN_READ <= len(self._rbuf):  # (start > 0: else there would be room)
            view = memoryview(self._rbuf)
            view[:part] = view[start:self._end]
            view.release()
        else:
            new = bytearray(max(2 * len(self._rbuf), self._long + MIN_READ))
            new[:part] = memoryview(self._rbuf)[start:self._end]
            self._rbuf = new
        self._scanned -= start
        self._start, self._end = 0, part

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        if not self.paused:
            self._process()

    def _process(self) -> None:
        if self._skipping and not self._skip():
            return
        self._split()
        if not self.paused and self._end - self._start > self.max_line:
            self._start_skipping()

    def data_received(self, data: bytes) -> None:
        """The same for a transport that reads into its own bytes (asyncio's pipes)."""
        done = 0
        while done < len(data):
            view = self.get_buffer(len(data) - done)
            n = min(len(view), len(data) - done)
            view[:n] = memoryview(data)[done:done + n]
            view.release()
            done += n
            self.buffer_updated(n)

    def _split(self) -> None:
        buf = self._rbuf
        view = memoryview(buf)
        last_long: bool | None = None  # whether the last line delivered here was long
        try:
            while not self.paused:
                nl = buf.find(b"\n", self._scanned, self._end)
                if nl < 0:
                    self._scanned = self._end
                    break
                start = self._start
                size = nl - start
                self._start = self._scanned = nl + 1
                if size > self.max_line:
                    self._oversized(size, bytes(view[start:min(nl, start + OVERSIZE_ENDS)]),
                                    bytes(view[max(start, nl - OVERSIZE_ENDS):nl]))
                    continue
                last_long = size + MIN_READ > IDLE_BUFFER
                if last_long:
                    self._long = size
                if size:
                    line = view[start:nl].tobytes()
                    try:
                        self.on_line(line)
                    except Exception as exc:
                        self._handler_failed(line, exc)
        finally:
            # (also when a line's handler raised something other than an Exception: what
            # the lines before it began is finished all the same, their freed slots filled)
            view.release()
            if self._start == self._end:  # all consumed: the buffer is reused from its start
                self._start = self._end = self._scanned = 0
                if last_long is False and len(self._rbuf) > IDLE_BUFFER:  # kept for long lines
                    self._rbuf = bytearray(IDLE_BUFFER)
            if last_long is not None and self.on_lines_end is not None:
                self.on_lines_end()

    # an oversized line --------------------------------------------------------------------
    def _start_skipping(self) -> None:
        view = memoryview(self._rbuf)
        self._skipping = self._end - self._start
        self._head = bytes(view[self._start:min(self._end, self._start + OVERSIZE_ENDS)])
        self._tail = bytes(view[max(self._start, self._end - OVERSIZE_ENDS):self._end])
        self._drop()

    def _skip(self) -> bool:
        """Skip what was read of an oversized line; True if its end came (and what follows
        it is left to split)."""
        buf, end = self._rbuf, self._end
        nl = buf.find(b"\n", 0, end)
        stop = end if nl < 0 else nl
        self._skipping += stop
        self._tail = (self._tail + bytes(memoryview(buf)[max(0, stop - OVERSIZE_ENDS):stop])
                      )[-OVERSIZE_ENDS:]
        if nl < 0:
            self._drop()
            return False
        self._skipped()
        self._start = self._scanned = nl + 1
        return True

    def _drop(self) -> None:
        self._start = self._end = self._scanned = 0
        if len(self._rbuf) > IDLE_BUFFER:
            self._rbuf = bytearray(IDLE_BUFFER)

    # the end ------------------------------------------------------------------------------
    def eof_received(self) -> bool:
        self.at_eof = True
        if not self.paused:  # else resume() delivers what is held first
            self._flush_tail()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        # held lines: nobody to answer any more; a partial line: see last_line_unterminated
        if self.paused or (not self.at_eof and not self.last_line_unterminated):
            self._start = self._end
        self._flush_tail()
        if self._unlogged:  # the failures since the last report: counted, not dropped
            log.error("%s: the handlers of %d more lines failed, the lines skipped (not "
                      "logged one by one)", self.name, self._unlogged)
            self._unlogged = 0
        self.on_eof(exc)

    def _flush_tail(self) -> None:
        # A last line without its newline (a crash mid-write) is still a line.
        if self._end > self._start:
            line = bytes(memoryview(self._rbuf)[self._start:self._end])
            self._drop()
            try:
                self.on_line(line)
            except Exception as exc:
                self._handler_failed(line, exc)
            finally:
                if self.on_lines_end is not None:
                    self.on_lines_end()
        if self._skipping:
            self._skipped()

    def _skipped(self) -> None:
        size, head, tail = self._skipping, self._head, self._tail
        self._skipping, self._head, self._tail = 0, b"", b""
        self._oversized(size, head, tail)

    def _oversized(self, size: int, head: bytes, tail: bytes) -> None:
        if self.on_oversize:
            try:
                self.on_oversize(size, head, tail)
            except Exception as exc:
                self._handler_failed(head, exc, size)

    def _handler_failed(self, line: bytes, exc: Exception, size: int | None = None) -> None:
        """`size`: a discarded line's, `line` its first bytes. The failures not logged are
        counted and said when the reading ends."""
        self.handler_failures += 1
        now = time.monotonic()
        if now - self._logged_at < HANDLER_LOG_EVERY:
            self._unlogged += 1
            return
        self._logged_at = now
        shown = line[:OVERSIZE_ENDS].decode("utf-8", "replace")
        what = f"a discarded {size}-byte line" if size is not None else \
            f"a {len(line)}-byte line"
        since = f" ({self._unlogged} more since the last report)" if self._unlogged else ""
        self._unlogged = 0
        log.error("%s: the handler of %s failed, the line skipped: %s (the line: %r)%s",
                  self.name, what, describe(exc), shown, since, exc_info=exc)


class LineBlock(msgspec.Struct, gc=False):
    """Complete lines that arrived together, kept as one block (joined by newlines, none at
    the end) and split only when someone iterates them: a million log lines then cost a
    count and a write, not a million objects (and, untracked by the cyclic collector, no
    work in its passes)."""

    block: bytes
    count: int

    @classmethod
    def of(cls, lines: list[bytes]) -> LineBlock:
        return cls(b"\n".join(lines), len(lines))

    @classmethod
    def one(cls, text: str) -> LineBlock:
        """corral's own record: one line, whatever `text` holds (escaped: text.one_line)."""
        return cls(one_line(text).encode("utf-8", "replace"), 1)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.block.split(b"\n"))

    def last(self, n: int) -> list[bytes]:
        return self.block.rsplit(b"\n", n)[-n:] if n > 0 else []


class ChunkLines(asyncio.Protocol):
    """Splits a log stream into blocks of complete lines, one block per read, in C.
    Empty lines are kept (they are part of a log); a line over `max_line` is cut into
    pieces of at most `max_line` bytes rather than buffered without bound."""

    def __init__(
        self,
        on_lines: Callable[[LineBlock], None],
        on_eof: Callable[[Exception | None], None],
        *,
        max_line: int = DEFAULT_MAX_LINE,
    ) -> None:
        self.on_lines = on_lines
        self.on_eof = on_eof
        self.max_line = max_line
        self._rest = b""

    def data_received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
        nl = data.rfind(b"\n")
        block = data[:nl] if nl >= 0 else None
        self._rest = data[nl + 1 :]
        # a partial line too long to wait for its end is handed over in pieces now
        overflow = self._rest if len(self._rest) > self.max_line else None
        if overflow is not None:
            self._rest = b""
        too_long = block is not None and nl > self.max_line and \
            max(map(len, block.split(b"\n"))) > self.max_line
        if overflow is None and not too_long:
            if block is not None:  # the common case: no line object is made
                self.on_lines(LineBlock(block, block.count(b"\n") + 1))
            return
        lines = block.split(b"\n") if block is not None else []
        if overflow is not None:
            lines.append(overflow)
        m = self.max_line
        self.on_lines(LineBlock.of([
            piece for line in lines
            for piece in ([line] if len(line) <= m else
                          [line[i : i + m] for i in range(0, len(line), m)])]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._rest:  # a last line without its newline (a crash mid-write)
            rest, self._rest = self._rest, b""
            self.on_lines(LineBlock(rest, 1))
        self.on_eof(exc)


# -- the peer -------------------------------------------------------------------------------
class PendingAnswer(Protocol):
    """What a pending request's answer settles: a future, a `_Relay`, or an owner's own
    object (`Peer.request_pending`)."""

    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


Answered = Callable[[Any, BaseException | None], None]


class _Relay:
    """A pending request whose answer goes straight to a function `(result, error)`: a
    success at once, as it is read (no future, no turn of the loop in between); a failure
    on the next turn (a closing peer fails every pending request while its owner is still
    half torn down)."""

    __slots__ = ("_fn", "_settled")

    def __init__(self, fn: Answered) -> None:
        self._fn = fn
        self._settled = False

    def done(self) -> bool:
        return self._settled

    def set_result(self, result: Any, /) -> None:
        self._settled = True
        self._fn(result, None)

    def set_exception(self, exception: BaseException, /) -> None:
        self._settled = True
        asyncio.get_running_loop().call_soon(self._fn, None, exception)


# the name of every task that handles a request of the other side: one string for all
# (asyncio's own, "Task-N", is a string formatted and kept for each)
REQUEST_TASK = "jsonrpc request"


class _Answerer:
    """The done callback of a request handler's task: one small object where a closure
    over the peer and the id was three (~300 bytes a request in flight, which a question
    to a person may be for days)."""

    __slots__ = ("peer", "rid")

    def __init__(self, peer: Peer, rid: Id) -> None:
        self.peer = peer
        self.rid = rid

    def __call__(self, task: asyncio.Future[Any]) -> None:
        self.peer._finish(self.rid, task)


Dispatch = Callable[[str, "Raw | UnsetType", "Peer"], Any]
NotificationHandler = Callable[[str, "Raw | UnsetType", "Peer"], None]


class Peer:
    """One side of a JSON-RPC conversation over a line-oriented byte channel.

    `send` writes bytes (non-blocking, e.g. a transport's write), `send_parts` the pieces
    of one message at once (a transport's writelines; else they are joined); incoming
    lines are fed to `feed_line`. Requests from the other side go to
    `dispatch(method, params, peer)`, which returns a result, raises `RpcError`, or returns
    an awaitable (run as a task, so many can be in flight). Notifications go to
    `on_notification`.
    """

    def __init__(
        self,
        name: str,
        send: Callable[[bytes], None],
        *,
        send_parts: Callable[[list[bytes | memoryview]], None] | None = None,
        dispatch: Dispatch | None = None,
        on_notification: NotificationHandler | None = None,
        cancel_method: str | None = None,
        cancel_params: Callable[[Id], Any] | None = None,
        cancel_id_of: Callable[[Raw | UnsetType], Id | None] | None = None,
        reply_to_garbage: bool = False,
        on_garbage: Callable[[bytes, str], None] | None = None,
        on_handled: Callable[[], None] | None = None,
    ) -> None:
        """`on_handled`: told after each request of the other side is answered."""
        self.name = name
        self._send = send
        self._send_parts = send_parts or (lambda parts: send(b"".join(parts)))
        self._dispatch = dispatch
        self._on_notification = on_notification
        self._cancel_method = cancel_method
        self._cancel_params = cancel_params
        self._cancel_id_of = cancel_id_of
        self._reply_to_garbage = reply_to_garbage
        self._on_garbage = on_garbage
        self._next_id = 0
        self._pending: dict[Id, PendingAnswer] = {}
        # pending requests whose answer is decoded whole, in one pass, by their own decoder
        self._decoders: dict[Id, Callable[[bytes], tuple[int, Any]]] = {}
        # made at the first: a deque kept by every peer would be walked by every full
        # pass of the cyclic collector
        self._forgotten: deque[Id] | None = None
        self._incoming: dict[Id, asyncio.Task[Any]] = {}
        self.closed: RpcError | None = None
        self.garbage_lines = 0
        self._on_handled = on_handled
        self._ends: asyncio.Event | None = None
        # Flow control of the other side's requests (`flow`): while `requests_paused` (its
        # answers are not being read), or while `max_handling` of them are worked on, a
        # request waits, with those of its line after it, in `held`, and `reader` stops
        # reading; `release()` takes them when allowed again and lets `reader` go on.
        self.reader: LineProtocol | None = None
        self.requests_paused = False
        self.max_handling = 0  # 0: no limit
        self.held: list[Envelope] | None = None
        self._parked: set[Id] | None = None
        self.dropped: int | None = None  # once it has exited: its requests not run (`exited`)
        # requests in a row that timed out with not a line from the other side since: a
        # peer that has no ping shows a hang this way (only a line read resets it, so a
        # stall of our own loop, which leaves the answers unread, never counts)
        self.silent_timeouts = 0
        # the id of the last request of the other side taken (answered, or being worked
        # on): what a daemon going away says it read (corral upgrade's drain; None for
        # a string id longer than MAX_KEPT_ID)
        self.last_id: Id | None = None

    def flow(self, reader: LineProtocol | None, max_handling: int) -> None:
        """The other side's requests flow-controlled: while `max_handling` of them are
        worked on (or `requests_paused`), the next waits and `reader` stops reading."""
        self.reader, self.max_handling = reader, max_handling

    def exited(self) -> None:
        """The other side has ended, what it wrote read still (a process's drain) for its
        answers and notifications: its requests run no more (those worked on cancelled,
        those held or read from now on counted), nothing sent it, its reader let go."""
        self.dropped = (self.dropped or 0) + len(self.held or ())
        self.held = self.reader = None
        incoming, self._incoming = self._incoming, {}
        for task in incoming.values():
            task.cancel()

    def ends(self) -> asyncio.Event:
        """Set after each request ends either way: what waits for a quiet channel
        (corral upgrade's hand-over) clears it and is woken, not polling."""
        if self._ends is None:
            self._ends = asyncio.Event()
        return self._ends

    # outgoing -----------------------------------------------------------------------------

    def send_message(self, msg: Any) -> None:
        if self.dropped is None:  # (neither exited nor closed)
            self._send(encode(msg))

    def notify(self, method: str, params: Any = None) -> None:
        self.send_message(Notification(method, UNSET if params is None else params))

    def request_future(
        self,
        method: str,
        params: Any = None,
        *,
        decode: Callable[[bytes], tuple[int, Any]] | None = None,
    ) -> tuple[Id, asyncio.Future[Any]]:
        """Send a request; the future resolves to its raw `result` or fails with RpcError.

        `decode`, for a result that may be large: it is given the whole answer line (when
        the line starts as `_RESULT_HEAD`) and returns the answer's id and the result, so
        the line is read once. If it raises (an error response, another layout), the
        future has the raw result: the caller must expect either.
        """
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        return self.request_pending(method, params, fut, decode=decode), fut

    def request_pending(
        self,
        method: str,
        params: Any,
        pending: PendingAnswer,
        *,
        decode: Callable[[bytes], tuple[int, Any]] | None = None,
        piece: Raw | None = None,
    ) -> Id:
        """`request_future` for an owner whose own object is settled by the answer: no
        future made per request. `piece`: the Raw that the `SPLICE` in `params` stands
        for (`encode_parts`)."""
        if self.closed is not None:
            pending.set_exception(self.closed)
            return -1
        self._next_id += 1
        rid = self._next_id
        self._pending[rid] = pending
        if decode is not None:
            self._decoders[rid] = decode
        msg = Request(method, rid, UNSET if params is None else params)
        try:
            if piece is None:  # (`encode`, written out: every task's request)
                data = bytearray()
                _encoder.encode_into(msg, data)
                data += b"\n"
            else:
                parts = encode_parts(msg, piece)
        except (TypeError, ValueError, OverflowError) as exc:
            # a value JSON cannot carry (text that is not Unicode: a lone surrogate): the
            # request fails as a closed peer's does, a turn later, so that its owner
            # ends what it began for it (a task's attempt) instead of waiting for good
            self._take(rid)
            pending.set_exception(RpcError(INVALID_PARAMS, f"{method}: the request cannot "
                                           f"be encoded: {exc}"))
            return rid
        if piece is None:
            self._send(data)  # type: ignore[arg-type]  # bytes-like; every writer takes it
        else:
            self._send_parts(parts)
        return rid

    def _take(self, rid: Id) -> PendingAnswer | None:
        self._decoders.pop(rid, None)
        pending = self._pending.pop(rid, None)
        if pending is not None and self._ends is not None:
            self._ends.set()
        return pending

    async def request(
        self,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = None,
        type: type[Any] = Any,  # type: ignore[assignment]
    ) -> Any:
        """Send a request and wait for its result, decoded as `type`; on timeout or
        cancellation the request is forgotten and a cancel notification sent where the
        protocol has one."""
        rid, fut = self.request_future(method, params, decode=_answer_decoder(type))
        try:
            if timeout is None:
                raw = await fut
            else:
                async with asyncio.timeout(timeout):
                    raw = await fut
        except TimeoutError:
            self._abandon(rid)
            self.timed_out()
            raise RpcError(
                REQUEST_TIMEOUT, f"{method}: no answer from {self.name} within {timeout:g} s"
            ) from None
        except asyncio.CancelledError:
            self._abandon(rid)
            raise
        if isinstance(raw, _DecodedValue):  # the answer's line, read in one pass
            return raw.value
        if type is Any:
            return msgspec.json.decode(raw)
        try:
            return msgspec.json.decode(raw, type=type)
        except msgspec.ValidationError as exc:
            raise RpcError(
                INVALID_REQUEST, f"{method}: malformed result from {self.name}: {exc}"
            ) from None

    def timed_out(self) -> None:
        """A request to the other side got no answer in time (a caller that keeps its own
        deadline around `request` says so here)."""
        self.silent_timeouts += 1

    def _abandon(self, rid: Id) -> None:
        if self._take(rid) is not None and self._cancel_method:
            params = self._cancel_params(rid) if self._cancel_params else {"id": rid}
            self.notify(self._cancel_method, params)

    def forget(self, rid: Id) -> None:
        """Stop waiting for a request without cancelling it (the protocol may forbid
        cancelling it, e.g. MCP's server/discover); a late answer is dropped quietly."""
        if self._take(rid) is not None:
            if self._forgotten is None:
                self._forgotten = deque(maxlen=KEEP_FORGOTTEN)
            self._forgotten.append(rid)

    def oversized(self, size: int, head: bytes, tail: bytes, limit: int) -> bool:
        """A line over the limit was discarded: if it was the answer to a pending request
        (its id is at one end of the line), fail that request now, naming size and limit,
        rather than let it wait for its timeout. True if a request was failed."""
        found = _ID_AT_START.match(head) or _ID_AT_END.search(tail)
        if found is None:
            return False
        try:
            rid = msgspec.json.decode(found.group(1))
        except (msgspec.DecodeError, UnicodeDecodeError):  # a string id not UTF-8 is none
            return False
        fut = self._take(rid)
        if fut is None or fut.done():
            return False
        mib = f" ({limit // 1048576} MiB)" if limit % 1048576 == 0 else ""
        fut.set_exception(RpcError(
            MESSAGE_TOO_LARGE,
            f"the answer from {self.name} is {size} bytes, over the line limit of {limit} "
            f"bytes{mib}; it was discarded"))
        return True

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def sent(self) -> int:
        """Requests sent so far (a change says something was asked of the other side)."""
        return self._next_id

    # incoming -----------------------------------------------------------------------------
    def feed_line(self, line: bytes) -> None:
        self.silent_timeouts = 0
        if self._decoders and self._decoded(line):
            return
        try:
            decoded = _batch_decoder.decode(line) if line[:1] == b"[" else \
                _envelope_decoder.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._garbage(line, str(exc))
            return
        except UnicodeDecodeError:  # in the envelope's own members
            self._garbage(line, f"JSON is malformed: {not_utf8(line)}")
            return
        except RecursionError:  # msgspec's own depth limit, not a crash of ours
            self._garbage(line, TOO_DEEP)
            return
        if (why := not_utf8(line)) is not None:  # in its params or result, then
            for env in decoded if isinstance(decoded, list) else (decoded,):
                self._unsound(env, line, why)
            return
        if not isinstance(decoded, list):
            self._handle(decoded, line)
            return
        if not decoded:
            self._garbage(line, "empty batch")
            return
        for env in decoded:
            self._handle(env, line)

    def _decoded(self, line: bytes) -> bool:
        head = _RESULT_HEAD.match(line)
        if head is None:
            return False
        rid = int(head.group(1))
        decode = self._decoders.get(rid)
        if decode is None:
            return False
        try:
            answered, result = decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError,
                RecursionError):
            return False  # the usual way says what is wrong with it
        if answered != rid:  # an "id" given twice: the usual way judges it
            return False
        # (`_take`, written out: this is every task's answer)
        del self._decoders[rid]
        fut = self._pending.pop(rid, None)
        if fut is not None:
            if self._ends is not None:
                self._ends.set()
            if not fut.done():
                fut.set_result(result)
        return True

    def _garbage(self, line: bytes, why: str) -> None:
        self.garbage_lines += 1
        if self._on_garbage:
            self._on_garbage(line, why)
        else:
            log.warning("%s: discarded a line that is not JSON-RPC (%s)", self.name, why)
        if self._reply_to_garbage:
            code = PARSE_ERROR if "JSON" in why or "truncated" in why or why == TOO_DEEP \
                else INVALID_REQUEST
            self.send_error(None, RpcError(code, f"{ERROR_NAMES[code]}: {why}"))

    def _unsound(self, env: Envelope, line: bytes, why: str) -> None:
        """Its params or result not UTF-8: a request's are invalid, an answer is an error."""
        if env.method is UNSET:  # (`_handle` reads an error before a result)
            env.error = ErrorObject(PARSE_ERROR, f"the answer of {self.name} is {why}")
            self._handle(env, line)
        elif env.id is not UNSET:
            self.send_error(env.id, RpcError(INVALID_PARAMS, f"invalid params: {why}"))
        else:
            self._garbage(line, f"JSON is malformed: {why}")

    def _handle(self, env: Envelope, line: bytes) -> None:
        if env.jsonrpc != "2.0":
            self._garbage(line, 'missing or wrong "jsonrpc" member (must be "2.0")')
            return
        if env.method is not UNSET:
            if env.id is UNSET:
                self._handle_notification(env)
            else:
                self._handle_request(env)
            return
        if env.id is UNSET or env.id is None:
            if env.error is not UNSET:
                log.warning("%s: error reply without id: %s", self.name, env.error.message)
                return
            self._garbage(line, "neither a request nor a response")
            return
        fut = self._take(env.id)
        if fut is None:
            if self._forgotten is not None and env.id in self._forgotten:
                self._forgotten.remove(env.id)
                return
            self._garbage(line, f"response to unknown request id {env.id!r}")
            return
        if fut.done():
            return
        if env.error is not UNSET:
            err = env.error
            fut.set_exception(RpcError(err.code, err.message, err.data))
        elif env.result is not UNSET:
            fut.set_result(env.result)
        else:
            fut.set_exception(
                RpcError(INVALID_REQUEST, f"{self.name}: response with neither result nor error")
            )

    def _handle_notification(self, env: Envelope) -> None:
        method = env.method
        assert isinstance(method, str)
        if self._cancel_method and method == self._cancel_method and self._cancel_id_of:
            rid = self._cancel_id_of(env.params)
            task = self._incoming.get(rid) if rid is not None else None
            if task is not None:
                task.cancel()
            return
        if self._on_notification is not None:
            try:
                self._on_notification(method, env.params, self)
            except Exception:
                log.exception("%s: notification handler for %s failed", self.name, method)

    def _handle_request(self, env: Envelope) -> None:
        if self.dropped is not None:
            self.dropped += 1
        elif self.held is not None or self._holding_requests():
            if self.held is None:
                self.held = []
                if self.reader is not None:
                    self.reader.pause()
            self.held.append(env)
        else:
            self._take_request(env)

    def _holding_requests(self) -> bool:
        working = len(self._incoming) - (len(self._parked) if self._parked else 0)
        return self.requests_paused or 0 < self.max_handling <= working

    def park(self, task: asyncio.Task[Any] | None) -> Id | None:
        """The request that `task` handles waits for a person, maybe for days: until
        `unpark` it is not counted among the requests worked on (`flow`), so the other
        side's next requests, and whatever follows them on its line (answers to ours, its
        other tasks' ends), are read meanwhile. Its id; None if `task` handles no request
        of this peer's."""
        for rid, t in self._incoming.items():
            if t is task:
                if self._parked is None:
                    self._parked = set()
                self._parked.add(rid)
                self.release()
                return rid
        return None

    def unpark(self, rid: Id) -> None:
        if self._parked is not None:
            self._parked.discard(rid)

    def release(self) -> None:
        """Take the held requests, in order, as far as allowed; once none is left, the
        reader reads on."""
        if self.held is None or self._holding_requests():
            return  # (each answer while the owner keeps them held comes here)
        held, self.held = self.held, None
        for i, env in enumerate(held):
            if self.closed is not None:
                return
            if self._holding_requests():
                self.held = held[i:]
                return
            self._take_request(env)
        if self.held is None and self.reader is not None:
            self.reader.resume()

    def _take_request(self, env: Envelope) -> None:
        rid = env.id
        method = env.method
        assert isinstance(method, str) and not isinstance(rid, UnsetType)
        if rid is None:
            self.send_error(None, RpcError(INVALID_REQUEST, "invalid request: id is null"))
            return
        # (a long string id is not kept past its request: a client's connection would
        # pin up to a line's size; the order of answers and notice is the rule anyway)
        self.last_id = rid if not isinstance(rid, str) or len(rid) <= MAX_KEPT_ID else None
        if rid in self._incoming:
            # an id names one request (its answer, its cancel); a second under an id still
            # in progress would also slip past `handling`, the count a reader's budget of
            # requests in flight rests on (a flood reusing one id ran thousands at once)
            shown = msgspec.json.encode(rid).decode()
            self.send_error(rid, RpcError(
                INVALID_REQUEST, f"invalid request: id {shown} is already in use by a request "
                                 "in progress"))
            return
        if self._dispatch is None:
            self.send_error(rid, method_not_found(method))
            return
        try:
            result = self._dispatch(method, env.params, self)
        except RpcError as exc:
            self.send_error(rid, exc)
            return
        except Exception as exc:
            log.exception("%s: handler for %s failed", self.name, method)
            self.send_error(rid, RpcError(INTERNAL_ERROR, f"internal error: {describe(exc)}"))
            return
        if isinstance(result, Awaitable):
            task = asyncio.get_running_loop().create_task(result, name=REQUEST_TASK) \
                if isinstance(result, Coroutine) else asyncio.ensure_future(result)
            self._incoming[rid] = task
            task.add_done_callback(_Answerer(self, rid))
        else:
            self.send_message(Response(rid, result))

    @property
    def handling(self) -> int:
        return len(self._incoming)

    def _finish(self, rid: Id, task: asyncio.Future[Any]) -> None:
        self._incoming.pop(rid, None)
        if self._parked:
            self._parked.discard(rid)
        try:
            self._answer(rid, task)
        finally:
            if self.held is not None:
                self.release()
            if self._on_handled is not None:
                self._on_handled()
            if self._ends is not None:
                self._ends.set()

    def _answer(self, rid: Id, task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            self.send_error(rid, RpcError(REQUEST_CANCELLED, "request cancelled"))
            return
        exc = task.exception()
        if exc is None:
            self.send_message(Response(rid, task.result()))
        elif isinstance(exc, RpcError):
            self.send_error(rid, exc)
        else:
            log.error("%s: handler failed", self.name, exc_info=exc)
            self.send_error(rid, RpcError(INTERNAL_ERROR, f"internal error: {describe(exc)}"))

    def send_error(self, rid: Id | None, exc: RpcError) -> None:
        self.send_message(ErrorResponse(rid, exc.to_object()))

    def answer_unfinished(self, exc: RpcError) -> int:
        """Answer `exc` now to every request of the other side still being worked on;
        how many. Their handlers run on: an owner that calls this closes the peer before
        they end (corral upgrade's drain hangs up at once), so none is answered twice."""
        for rid in self._incoming:
            self.send_error(rid, exc)
        return len(self._incoming)

    # a conversation handed over (corral upgrade) ----------------------------------------
    def outstanding(self) -> tuple[int, list[Id]]:
        """The last request id sent, and the requests not answered yet."""
        return self._next_id, list(self._pending)

    def take_over(self, last_id: int, unanswered: Iterable[Id]) -> None:
        """Go on with a conversation another Peer began over the same channel: ids after
        `last_id`; answers to `unanswered` are dropped quietly (an `expect` makes one
        ours again)."""
        self._next_id = max(self._next_id, last_id)
        unanswered = list(unanswered)
        if unanswered:
            if self._forgotten is None:
                self._forgotten = deque(maxlen=KEEP_FORGOTTEN)
            self._forgotten.extend(unanswered)

    def expect(self, rid: Id, answered: Answered, *,
               decode: Callable[[bytes], tuple[int, Any]] | None = None) -> None:
        """The answer to request `rid`, sent by the Peer before this one, goes to
        `answered` (a success as it is read, a failure a turn later)."""
        self._pending[rid] = _Relay(answered)
        if decode is not None:
            self._decoders[rid] = decode

    # teardown -----------------------------------------------------------------------------
    def close(self, reason: str, data: Any = None) -> None:
        """Fail every pending request, then as `exited` (every running handler cancelled);
        idempotent. `data` rides on each request's error (a worker's: what kind of loss
        its exit was, tasks/losses.py)."""
        if self.closed is not None:
            return
        self.closed = RpcError(PEER_CLOSED, reason, data)
        pending, self._pending = self._pending, {}
        self._decoders.clear()
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(RpcError(PEER_CLOSED, reason, data))
        self.exited()
