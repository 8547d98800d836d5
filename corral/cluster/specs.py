"""The cluster agents' tables in Redis and their history: added (all or none), changed in
place under the placement epoch, removed. Each change is a numbered revision kept in
Redis, so that `corral history` and `corral rollback` answer the same on every node."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from .. import jsonrpc
from ..rollbacks import restored, rolled_back
from ..supervisor.config import AgentSpec, ConfigError
from ..supervisor.configload import cluster_problem, parse_agents
from ..supervisor.core import SupervisorError
from .connection import read, read_all
from .keys import Keys
from .scripts import RedisPart, Scripts
from .trust import AGENT, REVISION, Trust

KEEP_HISTORY = 50  # revisions of a cluster agent kept in Redis
RACES = 5  # compare-and-sets lost in a row before a change gives up

Table = dict[str, Any]
Describe = Callable[[Table | None, Table], str]  # what changed ("replicas 1 -> 3")


class Entry(msgspec.Struct):
    """One revision of a cluster agent's table."""

    revision: int
    time: float
    who: str
    change: str
    spec: Table
    mac: str = ""  # over the agent's name and its spec (trust.REVISION)


_entry = msgspec.json.Decoder(Entry)


def encoded(table: Table) -> bytes:
    """A table as Redis keeps it: keys sorted, so that two nodes' equal tables are equal
    bytes whatever order their files wrote them in."""
    return msgspec.json.encode(table, order="sorted")


def checked(name: str, table: Table, where: str) -> AgentSpec:
    """The table's spec, as a cluster agent (else ConfigError)."""
    spec = parse_agents({"agents": {name: table}}, where)[name]
    problem = cluster_problem(msgspec.structs.replace(spec, placement="cluster"), True)
    if problem:
        raise ConfigError(f"{where}: agents.{name}.{problem}")
    return spec


def unsigned(name: str) -> SupervisorError:
    return SupervisorError(jsonrpc.CONFLICT, f"cluster agent {name}'s table in Redis is "
                           "not signed with this node's cluster key (a Redis writer "
                           "without the key made or changed it, or the nodes' key files "
                           "differ): nothing changed; `corral rollback` it to a signed "
                           "revision, or remove it and add it again")


class ClusterSpecs(RedisPart):
    def __init__(self, scripts: Scripts, keys: Keys, trust: Trust, describe: Describe
                 ) -> None:
        super().__init__(scripts, keys, trust)
        self.describe = describe

    async def add(self, tables: dict[str, Table], who: str) -> list[str]:
        """Cluster agents from their tables (checked by the caller), all or none."""
        now = time.time()
        keys = [self.keys.cluster_agents, self.keys.agent_macs]
        args: list[Any] = []
        for name, table in sorted(tables.items()):
            keys.append(self.keys.history(name))
            raw = encoded(table)
            entry = Entry(1, now, who, self.describe(None, table), table,
                          self.trust.sign(REVISION, name, raw))
            args += [name, raw, msgspec.json.encode(entry), self.trust.sign(AGENT, name, raw)]
        taken = await self.scripts.add_agents(keys=keys, args=args)
        if taken:
            name = taken.decode() if isinstance(taken, bytes) else str(taken)
            raise SupervisorError(jsonrpc.CONFLICT, f"cluster agent {name} already exists")
        return sorted(tables)

    async def read(self, name: str) -> tuple[Table | None, int]:
        """The agent's table (None: no such cluster agent) and its placement epoch;
        SupervisorError when the table does not verify."""
        table, epoch, signed = await self.read_any(name)
        if not signed:
            raise unsigned(name)
        return table, epoch

    async def read_any(self, name: str) -> tuple[Table | None, int, bool]:
        """As `read`, and whether the table verifies, rather than refusing one."""

        def fill(pipe: Any) -> None:
            pipe.hget(self.keys.cluster_agents, name)
            pipe.hget(self.keys.placement, name)
            pipe.hget(self.keys.agent_macs, name)

        raw, placed, mac = await read_all(self.redis, fill, transaction=True)
        epoch = int(msgspec.json.decode(placed)["epoch"]) if placed else 0
        if raw is None:
            return None, epoch, True
        signed = self.trust.valid(mac, AGENT, name, raw)
        if not signed:
            self.trust.refuse(AGENT, name, mac, "no change is made from it")
        return msgspec.json.decode(raw), epoch, signed

    async def change(self, name: str, make: Callable[[Table], Table], who: str,
                     why: str | None = None, *, replace: bool = False) -> tuple[int, str]:
        """The agent's table made anew from the current one by `make`, as its next
        revision, compare-and-set on the placement epoch (a lost race makes it again);
        the revision now current and what changed. A current table that does not verify
        is refused, unless `replace` (`make` does not build on it), which then writes
        even an equal table, signed."""
        for _ in range(RACES):
            table, epoch, signed = await self.read_any(name)
            if table is None:
                raise SupervisorError(jsonrpc.NOT_FOUND, f"no cluster agent {name}")
            if not signed and not replace:
                raise unsigned(name)
            new = make(table)
            if encoded(new) == encoded(table) and signed:
                return await self.revision(name) or 0, "no change"
            try:
                checked(name, new, f"cluster agent {name}")
            except ConfigError as exc:
                raise SupervisorError(jsonrpc.INVALID_PARAMS, str(exc)) from None
            change = (self.describe(table, new) if encoded(new) != encoded(table) else
                      "signed anew (the table in Redis was not signed)")
            said = f"{why}: {change}" if why else change
            raw = encoded(new)
            tail = msgspec.json.encode(Entry(0, time.time(), who, said, new,
                                             self.trust.sign(REVISION, name, raw)))
            tail = tail[tail.index(b",") + 1:]  # after {"revision":0,
            got = int(await self.scripts.set_agent(
                keys=[self.keys.cluster_agents, self.keys.placement,
                      self.keys.history(name), self.keys.agent_macs],
                args=[name, epoch, raw, tail, KEEP_HISTORY, self.trust.sign(AGENT, name, raw)]))
            if got > 0:
                return got, change
            if got < 0:
                raise SupervisorError(jsonrpc.NOT_FOUND, f"no cluster agent {name}")
        raise SupervisorError(jsonrpc.CONFLICT, f"cluster agent {name} was changed "
                                                f"{RACES} times while this change was "
                                                "made: nothing changed; try again")

    async def history(self, name: str) -> list[Entry]:
        got = await read(lambda: self.redis.lrange(self.keys.history(name), 0, -1))
        return [_entry.decode(raw) for raw in got]

    async def revision(self, name: str) -> int | None:
        last = await read(lambda: self.redis.lindex(self.keys.history(name), -1))
        return _entry.decode(last).revision if last is not None else None

    async def rollback(self, name: str, revision: int | None, who: str
                       ) -> tuple[int, int, str]:
        """Back to a kept revision (default: the one before the current), as a new one."""
        kept = {e.revision: e for e in await self.history(name)}
        if not kept:
            raise SupervisorError(jsonrpc.NOT_FOUND, f"no cluster agent {name}")
        target = restored(kept, revision, name, f"corral history {name}")
        entry = kept[target]
        if not self.trust.valid(entry.mac, REVISION, name, encoded(entry.spec)):
            self.trust.refuse(REVISION, f"{name} revision {target}", entry.mac,
                              "not restored")
            raise SupervisorError(jsonrpc.CONFLICT, f"revision {target} of cluster agent "
                                  f"{name} is not signed with this node's cluster key (a "
                                  "Redis writer without the key made or changed it): "
                                  "nothing changed")
        now, change = await self.change(name, lambda _: entry.spec, who,
                                        rolled_back(target), replace=True)
        return target, now, change

    async def remove(self, names: list[str]) -> list[str]:
        """The cluster agents of these names, gone from Redis with their placement,
        checkpoints and history; the names that were cluster agents."""
        pipe = self.redis.pipeline(transaction=True)
        for n in names:
            pipe.hdel(self.keys.cluster_agents, n)
        for n in names:
            pipe.hdel(self.keys.placement, n)
            pipe.hdel(self.keys.agent_macs, n)
            pipe.delete(self.keys.state(n), self.keys.history(n))
        got = await pipe.execute()
        return [n for n, g in zip(names, got[:len(names)], strict=True) if g]

    async def names(self) -> set[str]:
        return {k.decode() for k in await read(
            lambda: self.redis.hkeys(self.keys.cluster_agents))}
