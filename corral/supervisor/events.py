"""The event bus: topics published by workers or operators, delivered to live subscribers.

Delivery is at most once and never blocks the publisher: a worker is sent an `event`
notification only while its stdin pipe has room (else the event is dropped for it and
counted), and a CLI follower has a bounded queue. Subscriptions are patterns
(`orders.*`, fnmatch rules) and end with the worker's process.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from .. import jsonrpc
from ..jsonrpc import RpcError
from .follow import Follower
from .process_replica import Exited
from .stream import Stream

if TYPE_CHECKING:
    from .replica import Replica

FOLLOWER_QUEUE = 10_000
FOLLOWER_BYTES = 64 * 1024 * 1024


class Delivery(msgspec.Struct):
    topic: str
    data: Any
    source: str
    time: float


class EventFollower(Follower[msgspec.Raw]):
    """Deliveries encoded once for every follower; bounded in count and in bytes."""

    def __init__(self, pattern: str) -> None:
        super().__init__(FOLLOWER_QUEUE, size=len, max_bytes=FOLLOWER_BYTES)
        self.pattern = pattern


class EventBus:
    def __init__(self, stream: Stream,
                 worker_methods: dict[str, Callable[[Replica, Any], Any]],
                 worker_notifications: dict[str, Callable[[Replica, Any], None]]) -> None:
        """Serves the workers' events/* methods (registered in these tables)."""
        self.subscriptions: dict[Replica, set[str]] = {}
        self.followers: set[EventFollower] = set()
        self.published = 0
        self.delivered = 0
        self.dropped = 0
        # with [cluster]: each event published here, to the other nodes (cluster/events.py)
        self.relay: Callable[[Delivery], None] | None = None
        worker_notifications["events/publish"] = self._on_publish
        worker_methods["events/subscribe"] = self._on_subscribe
        stream.subscribe(self._on_exit, Exited)

    def publish(self, topic: str, data: Any, source: str) -> int:
        """Deliver to every live subscriber whose pattern matches; returns how many got it
        here (with [cluster], the other nodes' subscribers get it too, through `relay`)."""
        if not topic:
            raise RpcError(jsonrpc.INVALID_PARAMS, "topic must not be empty")
        self.published += 1
        d = Delivery(topic, data, source, time.time())
        if self.relay is not None:
            self.relay(d)
        return self.deliver(d)

    def deliver(self, d: Delivery) -> int:
        """An event to this node's subscribers (published here, or on another node of
        the cluster): patterns are matched here."""
        topic = d.topic
        n = 0
        for r, patterns in list(self.subscriptions.items()):
            if not any(fnmatch.fnmatchcase(topic, p) for p in patterns):
                continue
            proc, peer = r.process, r.peer
            stdin = proc.stdin if proc is not None else None
            # a worker whose stdin is over its budget unread (process.STDIN_HIGH) misses
            # events meanwhile
            if peer is None or proc is None or stdin is None or stdin.is_closing() or \
                    proc.stdin_full:
                self.dropped += 1
                continue
            peer.notify("event", d)
            n += 1
        encoded: msgspec.Raw | None = None
        for f in self.followers:
            if fnmatch.fnmatchcase(topic, f.pattern):
                if encoded is None:
                    encoded = msgspec.Raw(msgspec.json.encode(d))
                if f.push(encoded):
                    n += 1
                else:
                    self.dropped += 1
        self.delivered += n
        return n

    def subscribe(self, r: Replica, pattern: str) -> None:
        self.subscriptions.setdefault(r, set()).add(pattern)

    def follow(self, pattern: str) -> EventFollower:
        f = EventFollower(pattern)
        self.followers.add(f)
        return f

    def unfollow(self, f: EventFollower) -> None:
        self.followers.discard(f)

    def _on_exit(self, e: Exited) -> None:
        self.subscriptions.pop(e.replica, None)  # type: ignore[call-overload]

    def _on_publish(self, r: Replica, params: dict[str, Any]) -> None:
        topic = params.get("topic")
        if isinstance(topic, str) and topic:
            self.publish(topic, params.get("data"), r.label)
        else:
            r.note("ignored events/publish: topic must be a non-empty string")

    def _on_subscribe(self, r: Replica, params: dict[str, Any]) -> Any:
        topic = params.get("topic")
        if not isinstance(topic, str) or not topic:
            raise RpcError(jsonrpc.INVALID_PARAMS, "events/subscribe: topic must be a string")
        self.subscribe(r, topic)
        return {"subscribed": topic}

    def stats(self) -> dict[str, Any]:
        return {"published": self.published, "delivered": self.delivered,
                "dropped": self.dropped,
                "subscribers": sum(len(p) for p in self.subscriptions.values()),
                "followers": [{"pattern": f.pattern, "delivered": f.delivered,
                               "dropped": f.dropped} for f in self.followers]}
