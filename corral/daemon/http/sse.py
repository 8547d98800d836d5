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
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
from collections import deque
from typing import Any

import msgspec
from aiohttp import web

from ..api import Caller, Dispatcher

RING = 10_000  # events kept for clients that reconnect
RING_BYTES = 16 << 20  # and at most this much of them
KEEPALIVE = 15.0  # seconds of quiet before a comment line, which finds a gone client
HIGH_WATER = 1 << 20  # bytes waiting for a client before its follow is held
RING_CALLER = Caller(via="http", token="corral-sse")


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

    def since(self, cursor: int) -> list[tuple[int, str, bytes]]:
        if not self.items or cursor > self.last:
            return []
        start = max(0, cursor - self.items[0][0])
        return [self.items[i] for i in range(start, len(self.items))]


class _Topic(msgspec.Struct):
    topic: str


def _last_id(request: web.Request) -> str | None:
    return request.headers.get("Last-Event-ID") or request.query.get("last_event_id")


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
                await response.write(frame(None, "missed", msgspec.json.encode(
                    {"count": ring.first - cursor})))
                cursor = ring.first
            changed = ring.changed
            for seq, topic, raw in ring.since(cursor):
                cursor = seq + 1
                if fnmatch.fnmatchcase(topic, pattern):
                    # a write waits while the client does not read: its cursor stays
                    await response.write(frame(str(seq), "events.event", raw))
            try:
                await asyncio.wait_for(changed.wait(), KEEPALIVE)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return response


class SseChannel:
    """A follow's Channel onto one SSE response, bounded: past HIGH_WATER bytes not yet
    written it stops being writable, and the follow holds (its own queue is bounded)."""

    def __init__(self, response: web.StreamResponse) -> None:
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
        event_id = None
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
                await asyncio.wait_for(self.wake.wait(), KEEPALIVE)
            except TimeoutError:
                await self.response.write(b": keepalive\n\n")
                continue
            self.wake.clear()
            while self.frames:
                data = self.frames.popleft()
                await self.response.write(data)
                self.pending -= len(data)
                if self.pending <= HIGH_WATER // 2:
                    self._writable.set()


async def follow(request: web.Request, dispatcher: Dispatcher[Any], caller: Caller,
                 method: str, params: Any) -> web.StreamResponse:
    last = _last_id(request)
    if last is not None and method == "logs.follow":
        with contextlib.suppress(ValueError):
            params = msgspec.structs.replace(params, since=float(last))
    dispatcher.check(caller, method, params)  # refused as problem+json, not a stream
    response = await open_stream(request)
    channel = SseChannel(response)
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
