"""The fleet as it changes (`agents.watch`): each agent replica's transition and roster
change, numbered once into a ring shared by every watcher. A watcher is a cursor into it;
one that falls behind is sent a new snapshot marked `resync` (drop and resync rather than
coalesce: a slow client costs the same whatever the fleet's size). Ids carry this daemon
life's epoch: an id of another life is never taken for one of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

import msgspec

from .. import methods as m
from ..supervisor.health import HealthChange
from ..supervisor.process_replica import Transition, WorkTransition
from ..supervisor.stream import Roster
from .api import wire

if TYPE_CHECKING:
    from ..supervisor.agents import Agents
    from ..supervisor.stream import Stream, Subscription
    from .caller import Channel

RING = 16_384  # replica rows kept for watchers behind and clients that reconnect
BATCH = 256  # changes sent to one watcher before it looks at its transport again


class Notice(NamedTuple):
    seq: int
    agent: str
    method: str  # the notification: agents.transition, agents.roster or agents.health
    params: Any  # its Struct, made once for every watcher
    weight: int  # replica rows it holds (at least 1)


class Watcher(msgspec.Struct, eq=False):
    """One client: its channel, the agents it watches (empty: all) and its cursor."""

    c: Channel
    names: Collection[str]
    cursor: int
    wake: asyncio.Event = msgspec.field(default_factory=asyncio.Event)


class FleetWatch:
    """The numbered changes of the fleet's agents, the newest RING replica rows of them."""

    def __init__(self, agents: Agents, stream: Stream) -> None:
        self.agents = agents
        self.stream = stream
        self.ring = RING
        self.epoch = secrets.token_hex(4)
        self.items: deque[Notice] = deque()
        self.weight = 0
        self.last = 0  # the number of the newest change
        self.watchers: set[Watcher] = set()
        self._subs: list[Subscription] = []

    def open(self) -> None:
        """Number the changes from now on (before the first watcher, nothing is kept)."""
        if not self._subs:
            stream = self.stream
            self._subs = [stream.subscribe(self._on_transition, Transition, WorkTransition),
                          stream.subscribe(self._on_roster, Roster),
                          stream.subscribe(self._on_health, HealthChange)]

    def close(self) -> None:
        for sub in self._subs:
            self.stream.unsubscribe(sub)
        self._subs = []

    def id_of(self, seq: int) -> str:
        return f"{self.epoch}-{seq}"

    @property
    def first(self) -> int:
        return self.items[0].seq if self.items else self.last + 1

    # -- what the stream tells ------------------------------------------------------------
    def _on_transition(self, e: Transition) -> None:
        if e.kind != "agent":
            return
        agent = self.agents.get(e.name)
        r = agent.replicas[e.replica] if agent and e.replica < len(agent.replicas) else None
        # the replica's place is held by the process that changed (delivery is synchronous:
        # its state and pid are the event's); not so for a rollout's other process
        row = r.status() if r is not None and r.state == e.state and r.pid == e.pid else None
        seq = self.last + 1
        self._keep(Notice(seq, e.name, "agents.transition", m.ReplicaChange(
            id=self.id_of(seq), time=e.time, agent=e.name, replica=e.replica,
            state=e.state, previous=e.previous, pid=e.pid, cause=e.cause, reason=e.reason,
            row=wire(row)), 1))

    def _on_roster(self, e: Roster) -> None:
        agent = self.agents.get(e.agent)
        rows = [r.status() for r in agent.replicas] if agent is not None else []
        seq = self.last + 1
        self._keep(Notice(seq, e.agent, "agents.roster", m.AgentRoster(
            id=self.id_of(seq), time=time.time(), agent=e.agent, replicas=wire(rows),
            removed=agent is None),
            max(1, len(rows))))

    def _on_health(self, e: HealthChange) -> None:
        agent = self.agents.get(e.agent)
        r = agent.replicas[e.replica] if agent and e.replica < len(agent.replicas) else None
        row = r.status() if r is not None and r.pid == e.pid else None
        seq = self.last + 1
        self._keep(Notice(seq, e.agent, "agents.health", m.HealthNote(
            id=self.id_of(seq), time=e.time, agent=e.agent, replica=e.replica,
            check=e.check, ok=e.ok, action=e.action, text=e.text, row=wire(row)), 1))

    def _keep(self, kept: Notice) -> None:
        self.last = kept.seq
        self.items.append(kept)
        self.weight += kept.weight
        while self.weight > self.ring and len(self.items) > 1:
            self.weight -= self.items.popleft().weight
        for w in self.watchers:
            if w.cursor == kept.seq and w.c.writable.is_set():
                w.cursor += 1
                if not w.names or kept.agent in w.names:
                    w.c.notify(kept.method, kept.params)
            else:
                w.wake.set()

    # -- what a watcher is sent -----------------------------------------------------------
    def since(self, cursor: int) -> list[Notice]:
        if not self.items or cursor > self.last:
            return []
        start = max(0, cursor - self.items[0].seq)
        return [self.items[i] for i in range(start, min(len(self.items), start + BATCH))]

    def resume(self, last_event_id: str | None) -> tuple[int | None, int | None]:
        """Where a watcher that saw `last_event_id` goes on: (the next change's number,
        None), or (None, how many it missed; None: unknown) for a resync snapshot."""
        epoch, _, number = (last_event_id or "").partition("-")
        if epoch != self.epoch or not number.isdecimal() or int(number) > self.last:
            return None, None
        cursor = int(number) + 1
        if cursor < self.first:
            return None, self.first - cursor
        return cursor, None

    def snapshot(self, names: Collection[str], resync: bool, missed: int | None
                 ) -> m.FleetSnapshot:
        return m.FleetSnapshot(id=self.id_of(self.last), time=time.time(),
                               replicas=wire([r.status() for a in self._agents(names)
                                               for r in a.replicas]),
                               resync=resync, missed=missed)

    def sample(self, names: Collection[str]) -> m.ReplicaSamples:
        rows = []
        for a in self._agents(names):
            for r in a.replicas:
                up, s = r.uptime, r.sample
                rows.append(m.ReplicaSample(a.name, r.index, round(up, 3) if up else up,
                                            s.cpu_percent, s.rss_bytes, s.open_fds,
                                            r.tasks_running, r.waiting_for_person))
        return m.ReplicaSamples(time=time.time(), replicas=rows)

    def _agents(self, names: Collection[str]) -> list[Any]:
        agents = self.agents
        return [agents[n] for n in names if n in agents] if names else list(agents.values())

    async def serve(self, c: Channel, names: Collection[str], interval: float | None,
                    last_event_id: str | None) -> NoReturn:
        """Send the fleet to a watcher until it goes away (its task is then cancelled)."""
        self.open()
        loop = asyncio.get_running_loop()
        cursor, missed = self.resume(last_event_id)
        if cursor is None:
            c.notify("agents.snapshot", self.snapshot(names, last_event_id is not None,
                                                      missed))
            cursor = self.last + 1
        w = Watcher(c, names, cursor)
        self.watchers.add(w)
        due = loop.time() + interval if interval else None
        try:
            while True:
                await c.writable.wait()
                if self._catch_up(w):
                    await asyncio.sleep(0)  # a batch a turn: the loop serves the others
                    continue
                if due is not None and loop.time() >= due:
                    c.notify("agents.sample", self.sample(names))
                    assert interval is not None
                    due += interval
                    if due <= loop.time():  # the loop was late: the next a whole interval on
                        due = loop.time() + interval
                    continue
                w.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(due):
                        await w.wake.wait()
        finally:
            self.watchers.discard(w)

    def _catch_up(self, w: Watcher) -> bool:
        """Send `w` a batch of what it has not been sent (or a resync, when the ring has
        turned over past it); False when it has been sent everything."""
        if w.cursor < self.first:
            w.c.notify("agents.snapshot", self.snapshot(w.names, True,
                                                        self.first - w.cursor))
            w.cursor = self.last + 1
            return True
        items = self.since(w.cursor)
        for kept in items:
            w.cursor = kept.seq + 1
            if not w.names or kept.agent in w.names:
                w.c.notify(kept.method, kept.params)
                if not w.c.writable.is_set():
                    break
        return bool(items)
