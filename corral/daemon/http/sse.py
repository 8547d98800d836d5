"""Streams as Server-Sent Events (docs/http.md, "Streams" and "Limits"): every event has an
id, and a client that reconnects with `Last-Event-ID` is sent what it missed while it is
still kept. `/events/stream` is a cursor (`Reader`) into one ring the bus fills, written by
one fan-out task that never waits on a client; every other stream is the client's own call
(`follow`). A stream whose client takes nothing for `deadline` seconds is cut (`_cut`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import socket
import time
from collections import Counter, deque
from collections.abc import Iterator
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.http_writer import StreamWriter

from ... import jsonrpc
from ... import methods as m
from ...methods import REGISTRY
from ...supervisor.events import Delivery, Of, Viewer, agent_of, reaches, seen_by
from ...timeouts import cancel_all, kept
from ..api import Dispatcher
from ..caller import RING_CALLER, Caller
from . import route

RING_BYTES = 16 << 20  # at most this much of the events kept ([http] event_ring)
KEEPALIVE = 15.0  # seconds of quiet before a comment line, which keeps proxies open
HIGH_WATER = 1 << 20  # bytes waiting for a client before its follow is held
STREAM_RETRY = 5  # Retry-After of a stream refused at a cap
BATCH = 256  # events written to a stream at once, at most
BATCH_BYTES = 16 << 10  # and at most about this much of them
STREAM_BUFFER = 16 << 10  # bytes waiting in the daemon for a stream's client, at most
STREAM_SNDBUF = 32 << 10  # a stream socket's kernel send buffer (Linux doubles it)
SLICE = 0.004  # seconds the fan-out writes to streams before the loop turns
RESUME_LINES = 1 << 30  # a log stream resumed: all its tail holds (which is bounded)
# Last-Event-ID as a query parameter, for a client that cannot set the header (a new
# EventSource in a browser)
LAST_ID = "last_event_id"


# (number, topic, SSE frame, tenant published in, agent it is of)
Item = tuple[int, str | None, bytes, str | None, Of]


class Streams:
    def __init__(self, total: int, per_caller: int) -> None:
        self.total = total
        self.per_caller = per_caller
        self.open: Counter[str] = Counter()

    def full(self, who: str) -> str | None:
        """Why `who` may open no stream now (None: it may)."""
        if self.open.total() >= self.total:
            detail = f"{self.open.total()} streams are open, the server's limit (max_streams)"
        elif self.open.get(who, 0) >= self.per_caller:
            detail = (f"{who} holds {self.open[who]} streams, its limit "
                      "(max_streams_per_token)")
        else:
            return None
        return detail + ": close one, or try again later"

    def refusal(self, who: str) -> web.Response | None:
        detail = self.full(who)
        if detail is None:
            return None
        return route.problem(503, detail, jsonrpc.REFUSED,
                             {"Retry-After": str(STREAM_RETRY)})

    @contextlib.contextmanager
    def held(self, who: str) -> Iterator[None]:
        self.open[who] += 1
        try:
            yield
        finally:
            self.open[who] -= 1
            if not self.open[who]:
                del self.open[who]


class Unread(ConnectionResetError):
    """A stream's client has not taken what it was sent within the write bound: the
    stream is cut (`_cut`), its last words sent as the connection closes."""


async def send(request: web.Request, response: web.StreamResponse, data: bytes,
               deadline: float) -> None:
    """Write, and wait for the client to take it while the transport is past its
    high-water mark: Unread when it has not for `deadline` seconds."""
    # (aiohttp's own wait in a write has no bound: `drained`'s has)
    await _writer(request).write(data, drain=False)
    if request.protocol.writing_paused:
        await drained(request, deadline)


def _writer(request: web.Request) -> StreamWriter:
    writer = request.writer
    assert isinstance(writer, StreamWriter)
    return writer


def _retrieved(wait: asyncio.Future[None]) -> None:
    if not wait.cancelled():
        wait.exception()  # a connection lost meanwhile: nothing to tell


async def drained(request: web.Request, deadline: float) -> None:
    """Until the client took what the transport holds, `deadline` seconds at most (else
    Unread). aiohttp's drain waits on one future per connection, which a cancelled wait
    cancels and which is not made anew: a wait given up on in place would make every
    later write of the connection (the stream's last words, its end) raise
    CancelledError. So the drain is a task of its own, given up on by its waiter only."""
    wait = asyncio.ensure_future(_writer(request).drain())
    try:
        async with asyncio.timeout(deadline):  # no task per wait, as wait_for's
            await asyncio.shield(wait)
    except TimeoutError:
        raise Unread(f"the client took nothing for {deadline:g} s") from None
    finally:
        if not wait.done():
            wait.add_done_callback(_retrieved)


def frame(event_id: str | None, event: str, data: bytes) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\n".encode() + b"data: " + data + b"\n\n"


STREAMS: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("corral.sse.streams")


async def close_streams(app: web.Application) -> None:
    """At shutdown: a stream ends only when its client goes, and one that never reads
    would hold the server's stop until its timeout."""
    streams = app[STREAMS]
    for task in list(streams):
        task.cancel()


async def open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    transport = request.transport
    if transport is not None:
        # what a client that does not read can pin: STREAM_BUFFER bytes here, and a
        # kernel send buffer that autotuning would grow to megabytes (copying that much
        # for a thousand such clients stalled the loop)
        transport.set_write_buffer_limits(high=STREAM_BUFFER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
    await response.prepare(request)
    task = asyncio.current_task()
    if task is not None:
        kept(request.app[STREAMS], task)
    return response


class EventRing:
    """The newest events of the bus, numbered from 1 in this daemon's life and framed
    once, and the task that writes them out to the readers behind."""

    def __init__(self, dispatcher: Dispatcher[Any], ring: int) -> None:
        self.dispatcher = dispatcher
        self.ring = ring
        # a number the bus dropped before the ring saw it is kept as a gap (topic None),
        # so that numbers and places stay in step
        self.items: deque[Item] = deque(maxlen=ring)
        self.last = 0  # the number of the newest event
        self.bytes = 0
        self.changed = asyncio.Event()  # set, and replaced, at each new event
        # the follow's Channel: always writable, the ring bounds itself
        self.writable = asyncio.Event()
        self.writable.set()
        self.task: asyncio.Task[Any] | None = None
        self.readers: dict[Reader, None] = {}
        self.due = asyncio.Event()  # set when a reader may have events to be written
        self._fan_out: asyncio.Task[None] | None = None

    def notify(self, method: str, params: Any) -> None:
        if method == "events.missed":
            # numbers that will never be sent: gaps, told to a reader as missed
            count = int(params["count"])
            if count >= self.ring:
                self.items.clear()
                self.bytes = 0
                self.last += count
            else:
                for _ in range(count):
                    self._keep(None, b"", None, None)
        else:
            raw = bytes(params) if isinstance(params, msgspec.Raw) else msgspec.json.encode(
                params)
            head = msgspec.json.decode(raw, type=_Topic)
            self._keep(head.topic, frame(str(self.last + 1), "events.event", raw),
                       head.tenant, agent_of(raw))
        self.changed.set()
        self.changed = asyncio.Event()
        self.due.set()

    def reach(self, d: Delivery, encoded: bytes) -> int:
        """The live readers `d` will be sent, each a subscriber of the bus (its Audience)."""
        of = agent_of(encoded)
        return sum(not r.gone and r.takes(d.topic, d.tenant, of) for r in self.readers)

    def _keep(self, topic: str | None, data: bytes, tenant: str | None,
              agent: Of) -> None:
        self.last += 1
        if len(self.items) == self.ring:
            self.bytes -= len(self.items[0][2])
        self.items.append((self.last, topic, data, tenant, agent))
        self.bytes += len(data)
        while self.bytes > RING_BYTES and len(self.items) > 1:
            self.bytes -= len(self.items.popleft()[2])

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.ensure_future(self.dispatcher.call(
                RING_CALLER, m.EventsFollow(pattern="*"), channel=self))
        if self._fan_out is None:
            self._fan_out = asyncio.ensure_future(self._write_out())

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await cancel_all(t for t in (self.task, self._fan_out) if t is not None)

    @property
    def first(self) -> int:
        return self.items[0][0] if self.items else self.last + 1

    def at(self, number: int) -> Item:
        """`number` is kept: first <= number <= last."""
        return self.items[number - self.items[0][0]]

    def attach(self, reader: Reader) -> None:
        self.readers[reader] = None
        self.due.set()

    async def _write_out(self) -> None:
        """A batch per reader behind the ring per pass, yielding to the loop every SLICE
        seconds; a held reader is passed by until its own task has seen it drain."""
        due = self.due
        clock = time.perf_counter
        while True:
            await due.wait()
            due.clear()
            until = clock() + SLICE
            for reader in list(self.readers):
                if (reader.cursor <= self.last and not reader.held and not reader.gone
                        and reader in self.readers):  # (it may have gone since the list)
                    await reader.pump(self)
                    if reader.cursor <= self.last and not reader.held:
                        due.set()  # more than a batch behind: another pass
                if clock() > until:
                    await asyncio.sleep(0)
                    until = clock() + SLICE


class Reader:
    __slots__ = ("cursor", "gone", "held", "pattern", "quiet", "request", "tenant",
                 "viewer", "wake", "writer")

    def __init__(self, request: web.Request, pattern: str, cursor: int,
                 tenant: str | None, viewer: Viewer | None = None) -> None:
        self.request = request
        self.writer = _writer(request)
        self.pattern = None if pattern == "*" else pattern
        self.tenant = tenant  # whose events it is sent (None: every tenant's)
        self.viewer = viewer  # limited to an agents glob (None: every agent's)
        self.cursor = cursor
        self.wake = asyncio.Event()  # for its own task: held, or gone
        self.held = False  # its client has not taken what it was sent
        self.gone = False
        self.quiet = True  # nothing written since the last keepalive

    def takes(self, topic: str, published_in: str | None, agent: Of) -> bool:
        """Whether it is sent an event: of its pattern, its tenant, its agents glob."""
        return ((self.pattern is None or fnmatch.fnmatchcase(topic, self.pattern))
                and reaches(published_in, self.tenant)
                and (self.viewer is None or seen_by(agent, self.viewer)))

    async def write(self, data: bytes) -> None:
        """Write without waiting on the client (aiohttp's writer does not suspend when
        not asked to drain); past STREAM_BUFFER the reader is held."""
        try:
            await self.writer.write(data, drain=False)
        except Exception:  # the transport is closing (the client went), or worse: the
            self.gone = True  # stream ends, and the fan-out goes on with the others
            self.wake.set()
            return
        self.quiet = False
        if self.request.protocol.writing_paused:
            self.held = True
            self.wake.set()

    async def pump(self, ring: EventRing) -> None:
        cursor = self.cursor
        parts: list[bytes] = []
        size = missed = 0
        first = ring.first
        if cursor < first:
            missed = first - cursor
            cursor = first
        end = min(ring.last, cursor + BATCH - 1)
        while cursor <= end and size < BATCH_BYTES:
            _, topic, data, published_in, agent = ring.at(cursor)
            cursor += 1
            if topic is None:
                missed += 1
            elif self.takes(topic, published_in, agent):
                if missed:
                    parts.append(_missed(missed))
                    missed = 0
                parts.append(data)
                size += len(data)
        if missed:
            parts.append(_missed(missed))
        self.cursor = cursor
        if parts:
            await self.write(b"".join(parts))


def _missed(count: int) -> bytes:
    return frame(None, "missed", msgspec.json.encode({"count": count}))


class _Topic(msgspec.Struct):
    topic: str
    tenant: str | None = None


def _last_id(request: web.Request) -> str | None:
    return request.headers.get("Last-Event-ID") or request.query.get(LAST_ID)


async def events(request: web.Request, ring: EventRing, caller: Caller, params: Any,
                 tenant: str | None, stop: asyncio.Future[None] | None,
                 deadline: float) -> web.StreamResponse:
    """The stream's own task writes only keepalives: it waits for the fan-out to say its
    client is slow or gone, or for `stop` (its token revoked or expired)."""
    ring.start()
    last = _last_id(request)
    cursor = int(last) + 1 if last is not None and last.isdecimal() else ring.last + 1
    response = await open_stream(request)
    # a caller limited to an agent glob is sent no other agent's events (events.seen_by)
    reader = Reader(request, params.pattern, cursor, tenant,
                    caller if caller.agents is not None else None)
    ring.attach(reader)

    def ended(_: Any) -> None:
        reader.gone = True  # the fan-out passes it by from now on
        reader.wake.set()

    if stop is not None:
        stop.add_done_callback(ended)
    try:
        while not reader.gone:
            try:
                async with asyncio.timeout(KEEPALIVE):
                    await reader.wake.wait()
            except TimeoutError:
                if reader.quiet and not reader.held:
                    await reader.write(b": keepalive\n\n")
                reader.quiet = True
                continue
            reader.wake.clear()
            if reader.held:
                try:
                    await drained(request, deadline)
                except Unread as exc:
                    # every event before the cursor was written (a held reader is
                    # written no more)
                    await _cut(request, str(exc), str(reader.cursor - 1))
                    break
                reader.held = False
                ring.due.set()
    except (ConnectionResetError, asyncio.CancelledError):
        # a client gone (aiohttp cancels the handler) or the server's shutdown: the
        # handler returns as any does. Not re-raised: the exception's traceback would tie
        # the stream's objects (long promoted to the oldest generation) into cycles that
        # only a full pass of the cyclic collector frees, a thousand streams' at once
        pass
    finally:
        ring.readers.pop(reader, None)
        if stop is not None:
            stop.remove_done_callback(ended)
    return response


class SseChannel:
    """A follow's Channel onto one SSE response, bounded: past HIGH_WATER bytes not yet
    written it stops being writable, and the follow holds (its own queue is bounded)."""

    def __init__(self, request: web.Request, deadline: float) -> None:
        self.request = request
        self.deadline = deadline  # seconds a write may wait on the client
        self.response: web.StreamResponse | None = None  # opened after the call's checks
        # (the event's id, None for one without; its frame)
        self.frames: deque[tuple[str | None, bytes]] = deque()
        self.pending = 0
        self.writable = asyncio.Event()
        self.writable.set()
        self.wake = asyncio.Event()
        self.sent: str | None = None  # the id of the last event written that had one
        self.ending = False

    def notify(self, method: str, params: Any) -> None:
        # a notification that carries its `id` (agents.watch's) is an event with that id
        event_id = getattr(params, "id", None)
        if method == "logs.lines" and params["lines"]:
            event_id = repr(params["lines"][-1].time)
        data = frame(event_id, method, msgspec.json.encode(params))
        self.frames.append((event_id, data))
        self.pending += len(data)
        if self.pending > HIGH_WATER:
            self.writable.clear()
        self.wake.set()

    async def pump(self) -> None:
        response = self.response
        assert response is not None  # (started once it is open)
        while True:
            if self.ending and not self.frames:
                return
            try:
                async with asyncio.timeout(KEEPALIVE):  # no task per wait, as wait_for's
                    await self.wake.wait()
            except TimeoutError:
                await send(self.request, response, b": keepalive\n\n", self.deadline)
                continue
            self.wake.clear()
            while self.frames:
                event_id, data = self.frames.popleft()
                if event_id is not None:  # (written before send waits: Unread comes after)
                    self.sent = event_id
                await send(self.request, response, data, self.deadline)
                self.pending -= len(data)
                if self.pending <= HIGH_WATER // 2:
                    self.writable.set()

    def end(self) -> None:
        """The call ended: the pump writes every frame left (each within the bound),
        then returns."""
        self.ending = True
        self.wake.set()


async def _ended(request: web.Request, response: web.StreamResponse, channel: SseChannel,
                 run: asyncio.Future[Any], pump: asyncio.Future[Any]) -> None:
    """What the call sent written out, then its answer as the last event, `result` or
    `problem` (not `error`, which a browser's EventSource takes for its own). The pump
    returns by itself: cancelled in a write, it would lose that frame (`drained`)."""
    channel.end()
    await pump  # Unread, ConnectionResetError: the stream ends there
    exc = run.exception()
    if exc is None:
        await send(request, response, frame(None, "result", msgspec.json.encode(
            run.result())), channel.deadline)
    elif isinstance(exc, jsonrpc.RpcError):
        await send(request, response, frame(None, "problem", msgspec.json.encode(
            {"code": exc.code, "detail": exc.message})), channel.deadline)


CUT_GRACE = 5.0  # seconds a cut stream's client has to take its last words


async def _cut(request: web.Request, why: str, last_id: str | None) -> None:
    """The last event, `cut`, says why and the id to resume from (every event before it
    was written); the connection is aborted if that is not taken within CUT_GRACE."""
    data = frame(None, "cut", msgspec.json.encode({"reason": why,
                                                   "last_event_id": last_id}))
    with contextlib.suppress(Exception):  # (the transport may be closing)
        await _writer(request).write(data, drain=False)
    end_connection(request, CUT_GRACE)


def end_connection(request: web.Request, grace: float) -> None:
    """No other request on the request's connection, and the connection aborted if its
    client has not taken what was sent within `grace` seconds."""
    request.protocol.close()

    def abort() -> None:
        transport = request.transport
        if transport is not None and not transport.is_closing():
            transport.abort()

    asyncio.get_running_loop().call_later(grace, abort)


async def follow(request: web.Request, dispatcher: Dispatcher[Any], caller: Caller,
                 method: str, params: Any, stop: asyncio.Future[None] | None,
                 deadline: float) -> web.StreamResponse:
    """The client's own call, until it ends, the client goes, or `stop`. A call that
    ends (tasks.stream) opens the stream at its first notification: refused before it,
    it answers problem+json."""
    last = _last_id(request)
    if last is not None and method == m.LogsFollow.declared.name:
        with contextlib.suppress(ValueError):
            # every line kept since then, however few the first request asked for
            params = msgspec.structs.replace(params, since=float(last), lines=RESUME_LINES)
    elif last is not None and "last_event_id" in params.__struct_fields__:
        params = msgspec.structs.replace(params, last_event_id=last)
    dispatcher.check(caller, method, params)  # refused as problem+json, not a stream
    channel = SseChannel(request, deadline)
    run = asyncio.ensure_future(dispatcher.call(caller, method, params, channel))
    pump: asyncio.Future[None] | None = None
    try:
        if not REGISTRY[method].endless:
            first = asyncio.ensure_future(channel.wake.wait())
            await asyncio.wait({run, first}, return_when=asyncio.FIRST_COMPLETED)
            first.cancel()
            if run.done() and not channel.frames and isinstance(
                    refused := run.exception(), jsonrpc.RpcError):
                return route.rpc_problem(refused)
        response = channel.response = await open_stream(request)
        pump = asyncio.ensure_future(channel.pump())
        waits: set[asyncio.Future[Any]] = {run, pump}
        if stop is not None:
            waits.add(stop)
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        try:
            if pump.done():
                pump.result()  # Unread; the client gone (ConnectionResetError): it ends
            elif run.done():
                await _ended(request, response, channel, run, pump)
        except Unread as exc:
            await _cut(request, str(exc), channel.sent)
        except ConnectionResetError:
            pass
    finally:
        with contextlib.suppress(Exception):
            await cancel_all([run] if pump is None else [run, pump])
    return response
