"""The event bus across the cluster: one capped stream every node tails, not Pub/Sub, so a
node whose connection dropped reads on from where it was. Delivery stays at most once, as
on one node; a node's own subscribers hear its events at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from typing import Any

import msgspec
from redis.exceptions import RedisError

from ..supervisor.events import Delivery, EventBus
from .connection import why
from .keys import Keys

KEPT = 10_000  # the events stream is capped near this (MAXLEN ~)
OUTGOING = 10_000  # events waiting for Redis here; past it the oldest are dropped


class EventRelay:
    def __init__(self, redis: Any, keys: Keys, node: str, bus: EventBus, beat: float,
                 report: Callable[[str], None]) -> None:
        self.redis = redis
        self.keys = keys
        self.node = node
        self.bus = bus
        self.beat = beat
        self.report = report
        self._out: collections.deque[Delivery] = collections.deque()
        self._ready = asyncio.Event()
        self.sent = 0  # events this node appended to the stream
        self.received = 0  # events of other nodes delivered here
        self.dropped = 0  # events not sent: Redis was away and too many waited
        bus.stream.subscribe(self.send, Delivery)  # what is published here

    def send(self, d: Delivery) -> None:
        if len(self._out) >= OUTGOING:
            self._out.popleft()
            self.dropped += 1
        self._out.append(d)
        self._ready.set()

    async def run_out(self) -> None:
        failed = False
        while True:
            if not self._out:
                self._ready.clear()
                await self._ready.wait()
            batch = list(self._out)
            pipe = self.redis.pipeline(transaction=False)
            for d in batch:
                fields = {"node": self.node, "topic": d.topic, "source": d.source,
                          "time": repr(d.time), "data": msgspec.json.encode(d.data)}
                if d.tenant is not None:  # kept to its tenant on every node
                    fields["tenant"] = d.tenant
                if d.glob is not None:  # and to its publisher's agents glob
                    fields["glob"] = d.glob
                pipe.xadd(self.keys.events, fields,  # type: ignore[arg-type]
                          maxlen=KEPT, approximate=True)
            try:
                await pipe.execute()
            except RedisError as exc:
                if not failed:
                    self.report(f"cluster: events wait for Redis ({why(exc)})")
                failed = True
                await asyncio.sleep(self.beat)
                continue
            failed = False
            for _ in batch:
                self._out.popleft()
            self.sent += len(batch)

    async def run_in(self) -> None:
        """Every other node's events, from the newest when this node started, and from
        the last one read after a lost connection."""
        last: bytes | None = None
        block = max(1, int(self.beat * 1000))
        while True:
            try:
                if last is None:
                    newest = await self.redis.xrevrange(self.keys.events, count=1)
                    last = newest[0][0] if newest else b"0-0"
                got = await self.redis.xread({self.keys.events: last}, count=1000,
                                             block=block)
            except RedisError as exc:
                self.report(f"cluster: the events stream: {why(exc)}")
                await asyncio.sleep(self.beat)
                continue
            for _stream, entries in got or ():
                for entry_id, f in entries:
                    last = entry_id
                    if f.get(b"node", b"").decode() == self.node:
                        continue  # delivered here when it was published
                    with contextlib.suppress(KeyError, ValueError, msgspec.DecodeError):
                        d = Delivery(f[b"topic"].decode(), msgspec.json.decode(f[b"data"]),
                                     f"{f[b'node'].decode()}:{f[b'source'].decode()}",
                                     float(f[b"time"]),
                                     f[b"tenant"].decode() if b"tenant" in f else None,
                                     f[b"glob"].decode() if b"glob" in f else None)
                        self.received += 1
                        self.bus.deliver(d)

    def status(self) -> dict[str, int]:
        return {"sent": self.sent, "received": self.received, "dropped": self.dropped,
                "waiting": len(self._out)}
