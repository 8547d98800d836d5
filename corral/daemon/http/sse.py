"""Streams as Server-Sent Events: every event has an id, and a client that reconnects
with `Last-Event-ID` is sent what it missed while it is still kept.

- Events (`/events/stream`): one follower of the bus for every client, through the
  Dispatcher as the daemon's own caller, fills a ring of the newest events, numbered; a
  client is a cursor into the ring, so it costs nothing but that cursor and what its
  connection buffers. A client slower than the ring turns over is told how many it missed
  (`event: missed`) and goes on from the oldest kept.
- Logs (`/logs/stream`): the client's own `logs.follow`; an event's id is the time of its
  last line, and a reconnect resumes from the log tail the hub keeps (`since`), at least
  once. A client that does not read stops the follow at a bounded buffer, and the
  follower's bounded queue counts what it drops (`event: logs.missed`).
- The fleet (`/replicas/stream`, agents.watch) and the like: the client's own call; a
  notification that carries an `id` is sent with it, and a reconnect's Last-Event-ID is
  the method's `last_event_id` (daemon/watch.py says what it resumes).

Hostile clients: streams are counted, overall and per token (`Streams`: past either cap a
503 with Retry-After, before anything is followed), and a write that waits on a client
for WRITE_DEADLINE seconds ends its stream (the connection is aborted, not drained).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
from collections import deque
from collections.abc import Iterator
from typing import Any

import msgspec
from aiohttp import web

from ... import jsonrpc
from ..api import Caller, Dispatcher
from . import route

RING = 10_000  # events kept for clients that reconnect
RING_BYTES = 16 << 20  # and at most this much of them
KEEPALIVE = 15.0  # seconds of quiet before a comment line, which keeps proxies open
HIGH_WATER = 1 << 20  # bytes waiting for a client before its follow is held
RING_CALLER = Caller(via="http", token="corral-sse")
WRITE_DEADLINE = 60.0  # seconds a write may wait on a client that does not read
STREAM_RETRY = 5  # Retry-After of a stream refused at a cap
BATCH = 256  # events written to a stream at once, at most
BATCH_BYTES = 64 << 10  # and at most about this much of them
RESUME_LINES = 1 << 30  # a log stream resumed: all its tail holds (which is bounded)
# Last-Event-ID as a query parameter, for a client that cannot set the header (a new
# EventSource in a browser)
LAST_ID = "last_event_id"


class Streams:
    """The open streams, overall and per caller, under the [http] caps."""

    def __init__(self, total: int, per_caller: int) -> None:
        self.total = total
        self.per_caller = per_caller
        self.open: dict[str, int] = {}
        self.count = 0

    def refusal(self, who: str) -> web.Response | None:
        if self.count >= self.total:
            detail = f"{self.count} streams are open, the server's limit (max_streams)"
        elif self.open.get(who, 0) >= self.per_caller:
            detail = (f"{who} holds {self.open[who]} streams, its limit "
                      "(max_streams_per_token)")
        else:
            return None
        return route.problem(503, "service unavailable", detail + ": close one, or "
                             "try again later", jsonrpc.REFUSED,
                             {"Retry-After": str(STREAM_RETRY)})

    @contextlib.contextmanager
    def held(self, who: str) -> Iterator[None]:
        self.count += 1
        self.open[who] = self.open.get(who, 0) + 1
        try:
            yield
        finally:
            self.count -= 1
            left = self.open[who] - 1
            if left:
                self.open[who] = left
            else:
                del self.open[who]


async def send(request: web.Request, response: web.StreamResponse, data: bytes) -> None:
    """Write, or end the stream (ConnectionResetError) when the client has not taken
    what it was sent for WRITE_DEADLINE seconds: its connection is aborted, since a
    close would wait for it to drain."""
    try:
        async with asyncio.timeout(WRITE_DEADLINE):  # no task per write, as wait_for's
            await response.write(data)
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("the client does not read") from None


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
    await response.prepare(request)
    task = asyncio.current_task()
    if task is not None:
        streams = request.app[STREAMS]
        streams.add(task)
        task.add_done_callback(streams.discard)
    return response


class EventRing:
    """The newest events of the bus, numbered from 1 in this daemon's life."""

    def __init__(self, dispatcher: Dispatcher[Any]) -> None:
        self.dispatcher = dispatcher
        self.items: deque[tuple[int, str, bytes]] = deque(maxlen=RING)
        self.last = 0  # the number of the newest event
        self.bytes = 0
        self.changed = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self.task: asyncio.Task[Any] | None = None

    # the ring is the follow's Channel: always writable, the ring bounds itself
    @property
    def writable(self) -> asyncio.Event:
        return self._writable

    def notify(self, method: str, params: Any) -> None:
        if method == "events.missed":
            self.last += int(params["count"])  # numbers that will never be sent
            return
        raw = bytes(params) if isinstance(params, msgspec.Raw) else msgspec.json.encode(
            params)
        topic = msgspec.json.decode(raw, type=_Topic).topic
        self.last += 1
        if len(self.items) == RING:
            self.bytes -= len(self.items[0][2])
        self.items.append((self.last, topic, raw))
        self.bytes += len(raw)
        while self.bytes > RING_BYTES and len(self.items) > 1:
            self.bytes -= len(self.items.popleft()[2])
        self.changed.set()
        self.changed = asyncio.Event()

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.ensure_future(self.dispatcher.call(
                RING_CALLER, "events.follow", {"pattern": "*"}, self))

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    @property
    def first(self) -> int:
        return self.items[0][0] if self.items else self.last + 1

    def since(self, cursor: int, limit: int = RING) -> list[tuple[int, str, bytes]]:
        if not self.items or cursor > self.last:
            return []
        start = max(0, cursor - self.items[0][0])
        return [self.items[i] for i in range(start, min(len(self.items), start + limit))]


class _Topic(msgspec.Struct):
    topic: str


def _last_id(request: web.Request) -> str | None:
    return request.headers.get("Last-Event-ID") or request.query.get(LAST_ID)


async def events(request: web.Request, ring: EventRing, caller: Caller, params: Any
                 ) -> web.StreamResponse:
    pattern = params.pattern
    ring.start()
    last = _last_id(request)
    cursor = ring.last + 1
    if last is not None and last.isdigit():
        cursor = int(last) + 1
    response = await open_stream(request)
    try:
        while True:
            if cursor < ring.first and cursor <= ring.last:
                await send(request, response, frame(None, "missed", msgspec.json.encode(
                    {"count": ring.first - cursor})))
                cursor = ring.first
            changed = ring.changed
            # what came since the last turn, as one write: a burst of events to many
            # streams costs a write per stream, not one per event and stream
            items = ring.since(cursor, BATCH)
            if items:
                batch, size = [], 0
                for seq, topic, raw in items:
                    cursor = seq + 1
                    if fnmatch.fnmatchcase(topic, pattern):
                        batch.append(frame(str(seq), "events.event", raw))
                        size += len(batch[-1])
                        if size >= BATCH_BYTES:
                            break
                if batch:
                    # a write waits while the client does not read: its cursor stays
                    await send(request, response, b"".join(batch))
                continue
            try:
                async with asyncio.timeout(KEEPALIVE):
                    await changed.wait()
            except TimeoutError:
                await send(request, response, b": keepalive\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return response


class SseChannel:
    """A follow's Channel onto one SSE response, bounded: past HIGH_WATER bytes not yet
    written it stops being writable, and the follow holds (its own queue is bounded)."""

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self.request = request
        self.response = response
        self.frames: deque[bytes] = deque()
        self.pending = 0
        self._writable = asyncio.Event()
        self._writable.set()
        self.wake = asyncio.Event()

    @property
    def writable(self) -> asyncio.Event:
        return self._writable

    def notify(self, method: str, params: Any) -> None:
        # a notification that carries its `id` (agents.watch's) is an event with that id
        event_id = getattr(params, "id", None)
        if method == "logs.lines" and params["lines"]:
            event_id = repr(params["lines"][-1].time)
        data = frame(event_id, method, msgspec.json.encode(params))
        self.frames.append(data)
        self.pending += len(data)
        if self.pending > HIGH_WATER:
            self._writable.clear()
        self.wake.set()

    async def pump(self) -> None:
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE):  # no task per wait, as wait_for's
                    await self.wake.wait()
            except TimeoutError:
                await send(self.request, self.response, b": keepalive\n\n")
                continue
            self.wake.clear()
            while self.frames:
                data = self.frames.popleft()
                await send(self.request, self.response, data)
                self.pending -= len(data)
                if self.pending <= HIGH_WATER // 2:
                    self._writable.set()


async def follow(request: web.Request, dispatcher: Dispatcher[Any], caller: Caller,
                 method: str, params: Any) -> web.StreamResponse:
    last = _last_id(request)
    if last is not None and method == "logs.follow":
        with contextlib.suppress(ValueError):
            # every line kept since then, however few the first request asked for
            params = msgspec.structs.replace(params, since=float(last), lines=RESUME_LINES)
    elif last is not None and "last_event_id" in params.__struct_fields__:
        params = msgspec.structs.replace(params, last_event_id=last)
    dispatcher.check(caller, method, params)  # refused as problem+json, not a stream
    response = await open_stream(request)
    channel = SseChannel(request, response)
    run = asyncio.ensure_future(dispatcher.call(caller, method, params, channel))
    pump = asyncio.ensure_future(channel.pump())
    try:
        await asyncio.wait({run, pump}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (run, pump):
            task.cancel()
        for task in (run, pump):
            with contextlib.suppress(asyncio.CancelledError, ConnectionResetError,
                                     Exception):
                await task
    return response
