"""One stream of typed events to subscribers: every notification in corral is one of these,
never a list of callbacks of its own. Delivery is synchronous, in subscription order; one
subscriber that raises is logged and counted, and the others go on. A subscriber idle for
most events subscribes `listening=False` and `listen`s only while it holds something (an
event nobody listens to is not even made: `wanted`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeVar

log = logging.getLogger("corral.supervisor")

E = TypeVar("E")

LOG_EVERY = 10.0  # seconds between log lines about one failing subscriber


class Subscription:
    __slots__ = ("callback", "failures", "listening", "logged_at", "types", "unlogged")

    def __init__(self, callback: Callable[[Any], None], types: tuple[type, ...],
                 listening: bool = True) -> None:
        self.callback = callback
        self.types = types
        self.listening = listening  # delivered to now (Stream.listen)
        self.failures = 0
        self.unlogged = 0  # failures not in the log yet
        self.logged_at = float("-inf")

    def __repr__(self) -> str:
        return f"<Subscription {self.callback!r} to {[t.__name__ for t in self.types]}>"


class Stream:
    def __init__(self) -> None:
        # by event type, the callbacks in subscription order (a tuple, replaced on change:
        # a subscriber that unsubscribes during delivery does not disturb it)
        self._callbacks: dict[type, tuple[Callable[[Any], None], ...]] = {}
        # the event types with subscribers listening, read-only: `E in stream.wanted` is `wants`
        # without a call (asked per task on the task path)
        self.wanted: Mapping[type, object] = self._callbacks
        self._subs: dict[type, tuple[Subscription, ...]] = {}
        self.delivered = 0
        self.failures = 0  # deliveries that raised, in all

    def subscribe(self, callback: Callable[[E], None], *types: type[E],
                  listening: bool = True) -> Subscription:
        """Call `callback(event)` for every event of these types (at least one); with
        `listening=False`, only once `listen` says so (its place in the order kept)."""
        if not types:
            raise ValueError("subscribe to at least one event type")
        sub = Subscription(callback, types, listening)
        for t in types:
            self._subs[t] = (*self._subs.get(t, ()), sub)
            self._reindex(t)
        return sub

    def listen(self, sub: Subscription, listening: bool = True) -> None:
        """Deliver to `sub` from now on, or (False) not until told again: a subscriber
        listens while it holds something an event of its types may concern."""
        if sub.listening is listening:
            return
        sub.listening = listening
        for t in sub.types:
            self._reindex(t)

    def unsubscribe(self, sub: Subscription) -> None:
        for t in sub.types:
            kept = tuple(s for s in self._subs.get(t, ()) if s is not sub)
            if kept:
                self._subs[t] = kept
            else:
                self._subs.pop(t, None)
            self._reindex(t)

    def _reindex(self, t: type) -> None:
        callbacks = tuple(s.callback for s in self._subs.get(t, ()) if s.listening)
        if callbacks:
            self._callbacks[t] = callbacks
        else:
            self._callbacks.pop(t, None)

    def wants(self, t: type) -> bool:
        return t in self._callbacks

    def emit(self, event: object) -> None:
        callbacks = self._callbacks.get(type(event))
        if not callbacks:
            return
        for cb in callbacks:
            try:
                cb(event)
            except Exception as exc:
                self._failed(type(event), cb, exc)
        self.delivered += 1

    def tell(self, subs: tuple[Subscription, ...], event: object) -> None:
        """Deliver `event` to subscriptions an object keeps for its own events."""
        for sub in subs:
            try:
                sub.callback(event)
            except Exception as exc:
                self.failures += 1
                self._count(sub, type(event), exc)
        self.delivered += 1

    def _failed(self, t: type, cb: Callable[[Any], None], exc: Exception) -> None:
        self.failures += 1
        sub = next((s for s in self._subs.get(t, ()) if s.callback is cb), None)
        if sub is None:  # unsubscribed by an earlier subscriber of this same event
            log.error("a subscriber to %s raised", t.__name__, exc_info=exc)
            return
        self._count(sub, t, exc)

    def _count(self, sub: Subscription, t: type, exc: Exception) -> None:
        cb = sub.callback
        sub.failures += 1
        sub.unlogged += 1
        now = time.monotonic()
        if now - sub.logged_at >= LOG_EVERY:
            log.error("subscriber %r to %s raised (%d time(s) since the last report); "
                      "the others were told", cb, t.__name__, sub.unlogged, exc_info=exc)
            sub.logged_at = now
            sub.unlogged = 0

    def stats(self) -> dict[str, Any]:
        subs = {s for group in self._subs.values() for s in group}
        return {"delivered": self.delivered, "subscriber_failures": self.failures,
                "subscribers": len(subs),
                "failing": sorted(repr(s.callback) for s in subs if s.failures)}


# the supervisor's own events; the others are beside what emits them
class Tick:
    """A round of the heartbeat loop is over (about every heartbeat_interval)."""

    __slots__ = ()


TICK = Tick()  # one for every round: nothing made per tick
# a log record's `extra` where what it says is said on the stream too (an event the
# daemon's log writes): the daemon's handler of its parts' warnings does not write it again
STREAMED = "also_streamed"
ALSO_STREAMED: dict[str, bool] = {STREAMED: True}


class Stall(NamedTuple):
    """The event loop was this late: corral, not a worker, was silent."""

    seconds: float


class Checkpoint(NamedTuple):
    """An agent replica saved its state (`state/checkpoint`)."""

    agent: str
    replica: int
    time: float
    state: Any


class ListChanged(NamedTuple):
    """A tool server's `kind` list ("tools", "resources", "prompts") changed, or the
    server came or went."""

    server: str
    kind: str


class Roster(NamedTuple):
    """An agent's list of replicas changed: added or removed, scaled, or a rollout put a
    new process in a replica's place."""

    agent: str
