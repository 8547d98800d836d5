"""The event bus: topics published by workers or operators, delivered to live subscribers
of the same tenant (an operator's without one is every tenant's). Delivery is at most once
and never blocks the publisher: a worker whose stdin pipe has no room misses the event
(counted), a CLI follower has a bounded queue.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..workerproto import EventsPublishParams, EventsSubscribeParams
from .followers import Follower
from .process_replica import ReplicaExit
from .stream import Stream
from .workercalls import on_notification, on_request

if TYPE_CHECKING:
    from .replica import Replica

FOLLOWER_QUEUE = 10_000
FOLLOWER_BYTES = 64 * 1024 * 1024


class Delivery(msgspec.Struct, omit_defaults=True):
    topic: str
    data: Any
    source: str
    time: float
    tenant: str | None = None  # the tenant it was published in; None: every tenant's
    glob: str | None = None  # a limited caller's agents glob (a token's `--agents`)


class _Origin(msgspec.Struct):
    source: str = ""
    data: msgspec.Raw = msgspec.Raw(b"null")
    glob: str | None = None


class Within(msgspec.Struct, frozen=True):
    """A caller's event published by a caller limited to an agents glob: it is that
    glob's, as an agent's event is its agent's."""

    glob: str


class Viewer(Protocol):
    """Who follows the bus (the daemon's Caller)."""

    @property
    def agents(self) -> str | None: ...

    def sees(self, name: str) -> bool: ...


class _About(msgspec.Struct):
    agent: str | None = None
    agents: tuple[str, ...] | None = None  # a workflow run's: every agent of it


# the agent an event is of, or the agents (all of them) a workflow run's event is of, or
# the glob of the limited caller that published it
Of = str | tuple[str, ...] | Within | None


def agent_of(encoded: bytes) -> Of:
    """The agent an encoded Delivery is of: its publishing worker's (`NAME#N`, or
    `NODE:NAME#N` relayed), the one(s) corral's own event is about, a limited caller's glob
    (`Within`); else None (a caller's event)."""
    origin = msgspec.json.decode(encoded, type=_Origin)
    if origin.glob is not None:
        return Within(origin.glob)
    node, relayed, local = origin.source.partition(":")
    # a node's name has no space, a caller's source (`token NAME`) has one before a colon
    source = local if relayed and " " not in node else origin.source
    if "#" in source:
        return source.partition("#")[0]
    if source == "corral":
        try:
            about = msgspec.json.decode(origin.data, type=_About)
        except msgspec.ValidationError:
            return None
        return about.agents if about.agents is not None else about.agent
    return None


def seen_by(of: Of, viewer: Viewer) -> bool:
    """Whether a caller limited to an agents glob is sent an event of `of`: an event of
    agents it sees, or published by a caller of the same glob."""
    if of is None:
        return True
    if isinstance(of, Within):
        return of.glob == viewer.agents
    if isinstance(of, str):
        return viewer.sees(of)
    # a run of no agent (its steps wait for signals) is the operator's alone, as its
    # listing has it (Caller.owns): all() of none let every glob see it (issue 88)
    return bool(of) and all(viewer.sees(a) for a in of)


@runtime_checkable
class Audience(Protocol):
    """A follower's channel with readers of its own (the HTTP stream's ring): those `d` reaches."""

    def reach(self, d: Delivery, encoded: bytes) -> int: ...


class EventFollower(Follower[msgspec.Raw]):
    """Deliveries encoded once for every follower; bounded in count and in bytes."""

    def __init__(self, pattern: str, tenant: str | None = None, viewer: Viewer | None = None,
                 audience: Audience | None = None) -> None:
        super().__init__(FOLLOWER_QUEUE, size=len, max_bytes=FOLLOWER_BYTES)
        self.pattern = pattern
        self.tenant = tenant  # None: every tenant's events
        self.viewer = viewer  # a caller limited to an agents glob: its agents' events alone
        self.audience = audience  # None: the follower is one subscriber


def reaches(published_in: str | None, tenant: str | None) -> bool:
    """Whether an event published in one tenant (None: all) reaches a subscriber of
    another (None: an operator's, who sees all)."""
    return published_in is None or tenant is None or published_in == tenant


class EventBus:
    def __init__(self, stream: Stream,
                 worker_methods: dict[str, Callable[[Replica, Any], Any]],
                 worker_notifications: dict[str, Callable[[Replica, Any], None]]) -> None:
        self.subscriptions: dict[Replica, set[str]] = {}
        self.followers: set[EventFollower] = set()
        self.published = 0
        self.delivered = 0
        self.dropped = 0
        self.stream = stream  # where a cluster node hears what to relay (cluster/events.py)
        on_notification(worker_notifications, EventsPublishParams, self._on_publish)
        on_request(worker_methods, EventsSubscribeParams, self._on_subscribe)
        stream.subscribe(self._on_exit, ReplicaExit)

    def publish(self, topic: str, data: Any, source: str, tenant: str | None = None,
                glob: str | None = None) -> int:
        """Deliver to every live subscriber of the tenant (None: of every tenant) whose
        pattern matches; returns how many got it here, over any transport."""
        if not topic:
            raise RpcError(jsonrpc.INVALID_PARAMS, "topic must not be empty")
        self.published += 1
        d = Delivery(topic, data, source, time.time(), tenant, glob)
        if self.stream.wants(Delivery):
            self.stream.emit(d)
        return self.deliver(d)

    def publish_local(self, topic: str, data: Any, source: str, tenant: str | None = None
                     ) -> int:
        """As `publish`, to this node's subscribers only (never relayed to a cluster's
        other nodes: what is of this node alone, a workflow run's steps)."""
        self.published += 1
        return self.deliver(Delivery(topic, data, source, time.time(), tenant))

    def deliver(self, d: Delivery) -> int:
        topic, tenant = d.topic, d.tenant
        n = 0
        for r, patterns in list(self.subscriptions.items()):
            if not reaches(tenant, r.spec.tenant) or not any(
                    fnmatch.fnmatchcase(topic, p) for p in patterns):
                continue
            proc, peer = r.process, r.peer
            stdin = proc.stdin if proc is not None else None
            # a worker whose stdin is over its budget unread misses events meanwhile
            if peer is None or proc is None or stdin is None or stdin.is_closing() or \
                    proc.stdin_full:
                self.dropped += 1
                continue
            peer.notify("event", d)
            n += 1
        encoded: msgspec.Raw | None = None
        for f in self.followers:
            if reaches(tenant, f.tenant) and fnmatch.fnmatchcase(topic, f.pattern):
                if encoded is None:
                    encoded = msgspec.Raw(msgspec.json.encode(d))
                if f.viewer is not None and not seen_by(agent_of(encoded), f.viewer):
                    continue
                if f.push(encoded):
                    n += 1 if f.audience is None else f.audience.reach(d, encoded)
                else:
                    self.dropped += 1
        self.delivered += n
        return n

    def follow(self, pattern: str, tenant: str | None = None, viewer: Viewer | None = None,
               audience: Audience | None = None) -> EventFollower:
        f = EventFollower(pattern, tenant, viewer, audience)
        self.followers.add(f)
        return f

    def unfollow(self, f: EventFollower) -> None:
        self.followers.discard(f)

    def _on_exit(self, e: ReplicaExit) -> None:
        self.subscriptions.pop(e.replica, None)  # type: ignore[call-overload]

    def _on_publish(self, r: Replica, p: EventsPublishParams) -> None:
        self.publish(p.topic, p.data, r.label, r.spec.tenant)

    def _on_subscribe(self, r: Replica, p: EventsSubscribeParams) -> Any:
        self.subscriptions.setdefault(r, set()).add(p.topic)
        return {"subscribed": p.topic}

    def stats(self) -> dict[str, Any]:
        return {"published": self.published, "delivered": self.delivered,
                "dropped": self.dropped,
                "subscribers": sum(len(p) for p in self.subscriptions.values()),
                "followers": [{"pattern": f.pattern, "delivered": f.delivered,
                               "dropped": f.dropped,
                               **({"tenant": f.tenant} if f.tenant is not None else {})}
                              for f in self.followers]}
