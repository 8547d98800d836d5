"""Cluster agents: `placement = "cluster"` specs in Redis, their replicas placed on live
node incarnations by free room (docs/cluster.md#cluster-agents), every beat, by
compare-and-set on the placement epoch. A dead incarnation's slots are re-placed only once
Redis has answered for TTL + a beat, so a Redis restart moves nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from redis.exceptions import RedisError

from ..supervisor.config import AgentSpec, ConfigError
from ..supervisor.configload import parse_agents
from ..supervisor.errors import SupervisorError
from ..supervisor.parts import Parts
from ..supervisor.stream import Checkpoint
from ..timeouts import kept
from .connection import read, read_all, why
from .declared import Declarations
from .keys import Keys
from .membership import Membership, NodeView
from .scripts import RedisPart, Scripts
from .trust import AGENT, Trust


class SlotMap(msgspec.Struct):
    epoch: int = 0
    slots: list[str | None] = []


_placed = msgspec.json.Decoder(SlotMap)


def wanted(table: dict[str, Any]) -> int:
    replicas = table.get("replicas", 1)
    return replicas if isinstance(replicas, int) and replicas >= 0 else 1


def plan(name: str, slots: list[str | None], want: int, nodes: list[NodeView],
         settled: bool, room: dict[str, int]) -> list[str | None]:
    """The slots `name` should have: those on live, undrained incarnations kept where
    they are, the rest given to the incarnation with the most room (fewest of this
    agent's replicas first, then most room, then least load). `room` is spent as slots
    are given. A slot left None waits for a node with room."""
    live = {n.consumer: n for n in nodes if n.alive}
    out: list[str | None] = []
    for s in slots[:want]:
        n = live.get(s) if s is not None else None
        if n is not None and not n.draining:
            out.append(s)
        elif s is not None and n is None and not settled:
            out.append(s)  # maybe alive and not yet beaten since Redis came back
        else:
            out.append(None)
    out += [None] * (want - len(out))
    # where a node runs an agent of this name of its own, the cluster's is not placed
    eligible = [n for n in live.values() if not n.draining
                and (name not in n.agents or name in n.placed)]
    for i, s in enumerate(out):
        if s is not None:
            continue
        free = [n for n in eligible if room.get(n.consumer, 0) > 0]
        if not free:
            break
        best = min(free, key=lambda n: (out.count(n.consumer), -room[n.consumer], n.load,
                                        n.node))
        out[i] = best.consumer
        room[best.consumer] -= 1
    return out


class Placement(RedisPart):
    def __init__(self, scripts: Scripts, keys: Keys, trust: Trust, membership: Membership,
                 parts: Parts, prepare: Callable[[AgentSpec], None],
                 apply: Callable[[str, AgentSpec], Awaitable[None]],
                 declared: Declarations, report: Callable[[str], None]) -> None:
        super().__init__(scripts, keys, trust)
        self.membership = membership
        self.agents = parts.agents
        self.tuning = parts.tuning  # the fleet's max_replicas
        self.saved = parts.checkpoints  # agents' state, given back after a move
        self.prepare = prepare  # a spec's node-local defaults (its cwd)
        self.apply = apply  # a running agent brought to a new spec (rolling)
        self.declared = declared  # the config file's cluster agents, to register
        self.report = report
        self.placed: dict[str, list[int]] = {}  # agent -> its slots run here, in order
        # every cluster agent's slots as last read (None: waiting for a node with room)
        self.slots: dict[str, list[str | None]] = {}
        self.tables: dict[str, bytes] = {}  # agent -> the table (JSON) run here
        self.draining = False
        self.placements = 0  # placements this node wrote
        self.lost_races = 0  # compare-and-sets another node won
        self.checkpoints = 0  # checkpoints written to Redis
        self.checkpoints_refused = 0  # refused by the fence (the slot moved on)
        self._problems: dict[str, str] = {}  # agent -> what stops it here (said once)
        self._writes: set[asyncio.Task[None]] = set()
        # set: the loop's first step waits for it (ClusterNode.place_after)
        self.after: asyncio.Event | None = None
        parts.stream.subscribe(self._on_checkpoint, Checkpoint)

    def places(self) -> tuple[int, list[str], bool]:
        """What this node's beat says of placement (room, placed, draining)."""
        have = sum(len(a.replicas) for a in self.agents.values())
        return max(0, self.tuning.max_replicas - have), sorted(self.placed), self.draining

    # -- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        if self.after is not None:
            await self.after.wait()
        while True:
            try:
                await self.step()
            except RedisError as exc:
                self.report(f"cluster: placing agents: {why(exc)}")
            await asyncio.sleep(self.membership.beat)

    async def step(self) -> None:
        """One beat: register the config's cluster agents, place, then run what is placed here."""
        if self.declared.pending is not None:
            await self.declared.sync()
        m = self.membership
        if not m.member:
            # fenced or joining: what was placed on the old incarnation is re-placed by
            # the cluster; it stops here
            await self._reconcile({}, {})
            return

        def fill(pipe: Any) -> None:
            pipe.hgetall(self.keys.cluster_agents)
            pipe.hgetall(self.keys.placement)
            pipe.hgetall(self.keys.agent_macs)

        raw_tables, raw_places, macs = await read_all(self.redis, fill, transaction=True)
        tables = self._verified({k.decode(): v for k, v in raw_tables.items()},
                                {k.decode(): v for k, v in macs.items()})
        places = {k.decode(): _placed.decode(v) for k, v in raw_places.items()}
        if tables:
            nodes = await m.nodes()
            settled = m.settled()
            room = {n.consumer: n.room for n in nodes if n.alive}
            for name in sorted(tables):
                cur = places.get(name, SlotMap())
                slots = plan(name, cur.slots, wanted(msgspec.json.decode(tables[name])),
                             nodes, settled, room)
                if slots == cur.slots:
                    continue
                epoch = await self.scripts.place(
                    keys=[self.keys.placement, self.keys.cluster_agents],
                    args=[name, cur.epoch, msgspec.json.encode(slots)])
                if epoch > 0:
                    self.placements += 1
                    places[name] = SlotMap(int(epoch), slots)
                    self.report(f"cluster: placed {name} (epoch {epoch}): "
                                f"{', '.join(s or '-' for s in slots)}")
                elif epoch == 0:
                    self.lost_races += 1  # read again at the next beat
        self.slots = {n: places.get(n, SlotMap()).slots for n in sorted(tables)}
        await self._reconcile(tables, places)

    def _verified(self, tables: dict[str, bytes], macs: dict[str, bytes]
                  ) -> dict[str, bytes]:
        """The tables whose MAC verifies; for one that does not, the table that last did
        and runs here (its replicas go on unchanged), else none."""
        out: dict[str, bytes] = {}
        for name, raw in tables.items():
            mac = macs.get(name)
            if self.trust.valid(mac, AGENT, name, raw):
                out[name] = raw
                continue
            last = self.tables.get(name)
            self.trust.refuse(AGENT, name, mac,
                              "never placed or run (its replicas here go on with the table "
                              "that last verified)" if last is not None else
                              "never placed or run")
            if last is not None:
                out[name] = last
        return out

    async def _reconcile(self, tables: dict[str, bytes], places: dict[str, SlotMap]
                         ) -> None:
        """Run here exactly the slots placed on this incarnation."""
        me = self.membership.consumer if self.membership.member else None
        for name in sorted(set(tables) | set(self.placed)):
            p = places.get(name, SlotMap())
            mine = [i for i, s in enumerate(p.slots) if me is not None and s == me] \
                if name in tables else []
            have = self.placed.get(name)
            table = tables.get(name)
            if (have == mine or (have is None and not mine)) and (
                    not mine or self.tables.get(name) == table):
                continue
            try:
                if not mine:
                    agent = self.agents.get(name)
                    if self.draining and me is not None and agent is not None and any(
                            r.tasks_running for r in agent.replicas):
                        continue  # a drain lets what runs finish first
                    del self.placed[name]
                    self.tables.pop(name, None)
                    # (a reload may have put an agent of this node's own in its place)
                    if agent is not None and agent.spec.placement == "cluster":
                        await self.agents.remove(name)
                        self.report(f"cluster: {name} stopped here (placed elsewhere)")
                    continue
                if have is None and name in self.agents:
                    self._problem(name, f"this node has an agent {name} of its own")
                    continue
                assert table is not None  # mine is [] for an agent the cluster lacks
                if have is None:
                    await self._load_states(name, mine)
                    self.agents.add(self._spec(name, table, len(mine)))
                elif self.tables.get(name) != table:
                    # changed in place: tried once per table, as a reload tries a local
                    # agent's change once; its new slots here start with their states
                    self.tables[name] = table
                    self.placed[name] = mine
                    await self._load_states(name, mine[len(have):], len(have))
                    await self.apply(name, self._spec(name, table, len(mine)))
                    self.report(f"cluster: {name} brought to its changed spec here")
                else:
                    await self._load_states(name, mine[len(have):], len(have))
                    await self.agents.scale(name, len(mine))
                self.placed[name] = mine
                self.tables[name] = table
                self._problems.pop(name, None)
                self.report(f"cluster: {name} runs here: slots "
                            f"{', '.join(map(str, mine))} (epoch {p.epoch})")
            except (ConfigError, SupervisorError) as exc:
                self._problem(name, str(exc))

    def _spec(self, name: str, table: bytes, replicas: int) -> AgentSpec:
        spec = parse_agents({"agents": {name: msgspec.json.decode(table)}},
                            "the cluster's spec")[name]
        spec.replicas = replicas
        spec.placement = "cluster"  # (a table added before the key was written in it)
        self.prepare(spec)
        return spec

    def _problem(self, name: str, text: str) -> None:
        if self._problems.get(name) != text:
            self._problems[name] = text
            self.report(f"cluster: cluster agent {name} cannot run here: {text}")

    async def _load_states(self, name: str, slots: list[int], first: int = 0) -> None:
        """The states the slots last checkpointed, given to the replicas that start
        here (the first of them local index `first`)."""
        if not slots:
            return
        got = await read(lambda: self.redis.hmget(self.keys.state(name),
                                                  [str(s) for s in slots]))
        for index, raw in enumerate(got, first):
            if raw is not None:
                when, state = msgspec.json.decode(raw)
                self.saved[(name, index)] = (float(when), state)

    # -- checkpoints ---------------------------------------------------------------------
    def _on_checkpoint(self, event: Checkpoint) -> None:
        slots = self.placed.get(event.agent)
        if slots is None or event.replica >= len(slots) or not self.membership.member:
            return
        kept(self._writes, asyncio.ensure_future(
            self._write(event, slots[event.replica], self.membership.consumer)))

    async def _write(self, event: Checkpoint, slot: int, consumer: str) -> None:
        value = msgspec.json.encode([event.time, event.state])
        try:
            ok = await self.scripts.checkpoint(
                keys=[self.keys.placement, self.keys.state(event.agent)],
                args=[event.agent, slot, consumer, value])
        except RedisError as exc:
            self.report(f"cluster: checkpoint of {event.agent} slot {slot} not kept in "
                        f"Redis: {why(exc)}")
            return
        if ok:
            self.checkpoints += 1
        else:
            self.checkpoints_refused += 1

    async def close(self) -> None:
        for t in list(self._writes):
            t.cancel()

    def status(self) -> dict[str, Any]:
        return {"placed": {n: s for n, s in sorted(self.placed.items())},
                "placements": self.placements, "lost_races": self.lost_races,
                "differs": dict(sorted(self.declared.differs.items())),
                "checkpoints": self.checkpoints,
                "checkpoints_refused": self.checkpoints_refused}
