"""Membership: a node incarnation is alive exactly while its liveness key exists
(docs/cluster.md#membership).

A key found expired, or not renewed for 2 x TTL, means the cluster may have taken this
incarnation's tasks: the node fences itself and joins again as a new one. Redis being away
kills no node. One daemon per node name: it neither joins nor renews while another
daemon's incarnation of its name is alive.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import msgspec
from redis.exceptions import RedisError

from ..supervisor.config import DEFAULT_TENANT, ClusterSettings
from ..supervisor.stream import Stream
from ..timeouts import within
from ..views import NodeInfo
from .connection import read, why
from .keys import Keys, consumer
from .scripts import RedisPart, Scripts
from .trust import Trust

# duplicate: another daemon is this node (its name): this one waits until it is not
State = Literal["joining", "member", "fenced", "left", "duplicate"]


class Beat(msgspec.Struct):
    """What a node says of itself every beat (`corral nodes` shows it)."""

    node: str
    incarnation: int
    capacity: int  # task slots of its serving replicas
    load: int  # tasks running and waiting on it
    agents: list[str]  # the agents it runs
    last_beat: float  # wall time
    room: int = 0  # replicas it may still start (max_replicas less those it has)
    placed: list[str] = []  # which of its agents are the cluster's (placement.py)
    draining: bool = False  # `corral drain`: it takes nothing new
    daemon: str = ""  # the daemon's id (one per process): one daemon per node name
    pid: int = 0
    host: str = ""
    key: str = ""  # its cluster key's fingerprint ("": it has none, trust.py)
    # agent -> the tenant it is of: whose streams the node reads (one not named: the
    # default tenant's)
    tenants: dict[str, str] = {}
    # it takes a session's next turn when it ran the last ([cluster] sticky_sessions)
    sticky: bool = True
    # agent -> its max_queue, of the agents it runs that have one, and tenant -> its own
    # ([tenants.X]), of their tenants that have one: the bounds a node that runs none of
    # the name submits its tasks under (ClusterTasks.max_queue)
    queues: dict[str, int] = {}
    tenant_queues: dict[str, int] = {}


_DAEMONS: dict[int, str] = {}


def this_daemon() -> str:
    """This process's id in its beats, made at its first use in the process: a forked
    process is another daemon, and must not beat as the one it was forked from."""
    return _DAEMONS.setdefault(os.getpid(), uuid.uuid4().hex)


def holder_text(b: Beat, cluster: str) -> str:
    return (f"node {b.node} is already a member of cluster {cluster}: incarnation "
            f"{b.incarnation}, pid {b.pid or '?'} on host {b.host or '?'}, last beat "
            f"{max(0.0, time.time() - b.last_beat):.1f} s ago; two daemons must not share "
            "[cluster] node (give this one another name, or stop that one)")


class NodeView(NodeInfo):
    """One line of `corral nodes`, with the tenant of each agent it runs (not shown)."""

    tenants: dict[str, str] = {}
    queues: dict[str, int] = {}  # (Beat's)
    tenant_queues: dict[str, int] = {}

    @property
    def consumer(self) -> str:
        return consumer(self.node, self.incarnation)

    def runs(self, tenant: str, agent: str) -> bool:
        return (self.alive and agent in self.agents
                and self.tenants.get(agent, DEFAULT_TENANT) == tenant)

    def info(self) -> NodeInfo:
        """Without its agents' tenants: not a caller's to read (a tenant's token lists
        the nodes too)."""
        return NodeInfo(**{f: getattr(self, f) for f in NodeInfo.__struct_fields__})


Offer = Callable[[], tuple[int, int, dict[str, str]]]  # -> capacity, load, agent -> tenant
Places = Callable[[], tuple[int, list[str], bool]]  # -> room, placed, draining
# -> agent -> its max_queue, and tenant -> its own, of those that have one
Queues = Callable[[], tuple[dict[str, int], dict[str, int]]]

_beat = msgspec.json.Decoder(Beat)
GARBLED_SAID = 64  # the names of beats that do not parse said in the log, at most


class NodeFence(NamedTuple):
    """This node's incarnation `consumer` fenced itself: what it held is the cluster's."""

    consumer: str


class Membership(RedisPart):
    def __init__(self, scripts: Scripts, keys: Keys, trust: Trust, settings: ClusterSettings,
                 node: str, offer: Offer, report: Callable[[str], None],
                 stream: Stream | None = None, places: Places | None = None,
                 queues: Queues | None = None) -> None:
        super().__init__(scripts, keys, trust)  # (its key's fingerprint is in the beat)
        self.stream = stream if stream is not None else Stream()
        self.daemon = this_daemon()
        self.cluster = settings.name
        self.duplicate: str | None = None  # why it does not join: another daemon is it
        self._holder: tuple[str, int] | None = None  # that daemon's id and incarnation
        self.node = node
        self.ttl = settings.node_ttl
        self.sticky = settings.sticky_sessions
        self.beat = settings.beat
        self.offer = offer
        self.report = report
        self.state: State = "joining"
        self.incarnation = 0
        self.consumer = ""
        self.error: str | None = None  # why the last call to Redis failed, until one works
        self.renewed = 0.0  # monotonic time of the last renewal
        # monotonic time since which Redis has answered every beat (None: it does not
        # now): a reaper waits out TTL + a beat of it before declaring anyone dead
        self.connected_since: float | None = None
        self.fences = 0  # times this node fenced itself
        self._joining: asyncio.Future[None] | None = None  # a join not yet seen to end
        self.changed = asyncio.Event()  # set at each join and fence
        self.places = places
        self.queues = queues
        # the agents (-> tenant) of the beat Redis last took: a session's next turn may be
        # given to this node for any of them (sessionscripts' sticky turn) until a beat
        # without it is taken
        self.published: dict[str, str] = {}
        self._garbled: set[bytes] = set()  # the names whose beat was said not to parse

    @property
    def member(self) -> bool:
        return self.state == "member"

    def settled(self) -> bool:
        """Connected for long enough that a missing liveness key means a dead node, not
        one that has not beaten since Redis came back."""
        since = self.connected_since
        return since is not None and time.monotonic() - since >= self.ttl + self.beat

    def _beat_json(self) -> tuple[bytes, dict[str, str]]:
        """The beat to write, and the agents it offers (published once Redis takes it)."""
        capacity, load, agents = self.offer()
        room, placed, draining = self.places() if self.places is not None else (0, [], False)
        queues, tenant_queues = self.queues() if self.queues else ({}, {})
        return msgspec.json.encode(Beat(self.node, self.incarnation, capacity, load,
                                        sorted(agents), time.time(), room, placed,
                                        draining, self.daemon, os.getpid(),
                                        socket.gethostname(), self.trust.fingerprint, agents,
                                        self.sticky, queues, tenant_queues)), agents

    def _args(self, beat: bytes) -> list[Any]:
        """JOIN's and BEAT's: the beat, its key's TTL, and whose (one daemon per node)."""
        return [self.node, beat, int(self.ttl * 1000), self.daemon, self.keys.alive("")]

    async def holder(self) -> Beat | None:
        """Another daemon's beat as this node, while its incarnation is alive."""
        raw = await self.redis.hget(self.keys.nodes, self.node)
        b = None if raw is None else self._parsed(self.node.encode(), raw)
        if b is None:
            return None
        if b.daemon == self.daemon or not await self.redis.exists(
                self.keys.alive(consumer(b.node, b.incarnation))):
            return None
        return b

    async def check_unique(self) -> None:
        """At start: RuntimeError naming the holder while another daemon is this node.
        A holder that beats no more within TTL + a beat (killed, its key yet to expire) is
        waited out."""
        first = await self.holder()
        if first is None:
            return
        self.report(f"cluster: node {self.node} was incarnation {first.incarnation} (pid "
                    f"{first.pid} on host {first.host}) {time.time() - first.last_beat:.1f}"
                    " s ago: waiting for it to beat again (another daemon) or to expire")
        deadline = time.monotonic() + self.ttl + self.beat
        while time.monotonic() < deadline:
            await asyncio.sleep(self.beat / 4)
            now = await self.holder()
            if now is None:
                return
            if now.incarnation != first.incarnation or now.last_beat != first.last_beat:
                raise RuntimeError(holder_text(now, self.cluster))
        now = await self.holder()
        if now is not None:
            raise RuntimeError(holder_text(now, self.cluster))

    def _another(self, got: Any) -> bool:
        """JOIN's or BEAT's answer is another daemon's beat: said once per holder."""
        if not isinstance(got, bytes | str):
            if self.duplicate is not None:
                self.report(f"cluster: node {self.node}: no other daemon is it any more")
            self.duplicate, self._holder = None, None
            return False
        b = self._parsed(self.node.encode(), got.encode() if isinstance(got, str) else got)
        # (one that does not parse is a Redis writer's, but the script found the
        # incarnation it names alive: waited out as another daemon's)
        text = holder_text(b, self.cluster) if b is not None else (
            f"node {self.node}'s beat in Redis does not parse and names a live "
            "incarnation: waiting for its key to lapse")
        holder = (b.daemon, b.incarnation) if b is not None else ("", 0)
        if self._holder != holder:
            self._holder = holder
            self.report(f"cluster: this daemon does not join: {text}")
        self.duplicate = text
        return True

    async def join(self) -> None:
        other = await self.holder()
        if other is not None:  # (checked again by JOIN itself, atomically)
            self._another(msgspec.json.encode(other))
            self.state = "duplicate"
            return
        inc = int(await self.redis.incr(self.keys.incarnations(self.node)))
        name = consumer(self.node, inc)
        self.incarnation, self.consumer = inc, name
        beat, offered = self._beat_json()
        ok = await self.scripts.join(keys=[self.keys.alive(name), self.keys.nodes],
                                     args=self._args(beat))
        if self._another(ok):
            self.state = "duplicate"
            return
        if not ok:  # pragma: no cover - an incarnation number is never given twice
            raise RuntimeError(f"incarnation {name} is already alive")
        self.renewed, self.published = time.monotonic(), offered
        self.state = "member"
        self.report(f"cluster: joined as {name}")
        self.changed.set()
        self.changed.clear()

    async def renew(self) -> bool:
        beat, offered = self._beat_json()
        ok = await self.scripts.beat(keys=[self.keys.alive(self.consumer), self.keys.nodes],
                                     args=self._args(beat))
        if self._another(ok):
            # two daemons joined as one node (Redis was away when this one started): the
            # one that finds the other yields; its key goes now, so its tasks are the
            # cluster's at once
            self.fence(self.duplicate or "another daemon is this node")
            self.state = "duplicate"
            await self.redis.delete(self.keys.alive(self.consumer))
            return True
        if ok:
            self.renewed, self.published = time.monotonic(), offered
        return bool(ok)

    def fence(self, why_: str) -> None:
        if self.state != "member":
            return
        old = self.consumer
        self.state = "fenced"
        self.fences += 1
        self.report(f"cluster: {old} fenced itself: {why_}; its tasks are the cluster's "
                    "again")
        self.stream.emit(NodeFence(old))
        self.changed.set()
        self.changed.clear()

    async def step(self) -> None:
        if self.state == "left":
            return  # drained: out of the cluster until the daemon starts again
        try:
            # awaited while its key lives: cut at a beat, its connection went, the next's too (#72)
            wait = max(self.renewed + self.ttl - time.monotonic(), self.beat)
            if self.state == "member" and not await within(self.renew(), wait):
                self.fence(f"its liveness key expired (no renewal within "
                           f"{self.ttl:g} s)")
            if self.state != "member":
                await self._join_or_wait()
        except (RedisError, OSError, TimeoutError) as exc:
            if self.error is None:
                self.report(f"cluster: Redis does not answer ({why(exc)}); trying again "
                            "every beat")
            self.error = why(exc)
            self.connected_since = None
        else:
            if self.error is not None:
                self.report("cluster: Redis answers again")
            self.error = None
            if self.connected_since is None:
                self.connected_since = time.monotonic()
        if self.state == "member" and time.monotonic() - self.renewed > 2 * self.ttl:
            self.fence(f"no renewal for {2 * self.ttl:g} s (2 x node_ttl)")

    async def _join_or_wait(self) -> None:
        """Join, waiting a beat for it; a join that takes longer goes on, not cut off and
        begun anew: a join cut after its INCR took a number the node never knew it had,
        and one cut after its JOIN left the key of an incarnation no daemon was."""
        if self._joining is None:
            self._joining = asyncio.ensure_future(self.join())
        joining = self._joining
        try:
            await within(asyncio.shield(joining), self.beat)
        finally:
            if joining.done():
                self._joining = None

    async def run(self) -> None:
        while True:  # a beat from one renewal's start to the next's, however slow each
            began = time.monotonic()
            await self.step()
            await asyncio.sleep(began + self.beat - time.monotonic())

    async def leave(self, *, for_good: bool = False) -> None:
        """A clean stop: the key goes now, not a TTL later. `for_good` (a drain): no
        joining again until the daemon starts again."""
        joining, self._joining = self._joining, None
        if joining is not None:  # (its outcome, were it done, is dropped with it)
            if joining.done() and not joining.cancelled():
                joining.exception()
            joining.cancel()
        if self.state == "member":
            self.state = "left" if for_good else "fenced"
            await self.redis.delete(self.keys.alive(self.consumer))
            self.changed.set()
            self.changed.clear()

    async def nodes(self) -> list[NodeView]:
        """Every node that ever beat in this cluster, by name."""
        got = await read(lambda: self.redis.hgetall(self.keys.nodes))
        beats = [b for b in (self._parsed(k, v) for k, v in got.items()) if b is not None]
        beats.sort(key=lambda b: b.node)
        if not beats:
            return []
        alive = await self.alive([consumer(b.node, b.incarnation) for b in beats])
        return [NodeView(b.node, consumer(b.node, b.incarnation) in alive, b.incarnation,
                         b.load, b.agents, b.last_beat, b.capacity, b.room, b.placed,
                         b.draining, b.pid, b.host, b.key, b.tenants, b.queues,
                         b.tenant_queues)
                for b in beats]

    def _parsed(self, name: bytes, raw: bytes) -> Beat | None:
        """A beat of the nodes' hash; None for one that does not parse (a Redis writer's:
        no node's, passed over, said once for a name, never a failed read)."""
        try:
            return _beat.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            if name not in self._garbled and len(self._garbled) < GARBLED_SAID:
                self._garbled.add(name)
                self.report(f"cluster: the beat of node {name.decode(errors='replace')!r} "
                            f"in Redis does not parse ({exc}): no node's")
            return None

    async def alive(self, consumers: list[str]) -> set[str]:
        if not consumers:
            return set()

        async def exist() -> list[int]:
            return list(await self.scripts.alive(keys=[self.keys.alive(c)
                                                       for c in consumers]))

        found = await read(exist)
        return {c for c, n in zip(consumers, found, strict=True) if n}
