"""The cluster agents a node's config file declares (`placement = "cluster"`), registered
in Redis at start and at each reload (docs/cluster.md#several-config-files-one-table).

The rule: a change a node's file makes is applied; a file that did not change undoes
nothing. Each node keeps in Redis the table its file last declared (signed with the
cluster key: one that does not verify is as none), what "changed" is measured against.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec

from .. import jsonrpc
from ..supervisor.core import SupervisorError
from .connection import read_all
from .specs import ClusterSpecs, Table, encoded
from .trust import DECLARED


def merged(cluster: Table, before: Table, now: Table) -> Table:
    """The cluster's table with the change from `before` to `now` made to it: each key
    `now` sets otherwise than `before` set, each key it no longer has taken out."""
    out = dict(cluster)
    for key in set(before) | set(now):
        if key not in now:
            out.pop(key, None)
        elif before.get(key) != now[key]:
            out[key] = now[key]
    return out


class Declarations:
    def __init__(self, specs: ClusterSpecs, node: str, report: Callable[[str], None]) -> None:
        self.specs = specs  # (whose client, keys and cluster key it writes with)
        self.node = node
        self.report = report
        self.pending: dict[str, Table] | None = None  # to register (a start, a reload)
        self.differs: dict[str, str] = {}  # agent -> how the file differs from the cluster
        self._lock = asyncio.Lock()

    def declare(self, tables: dict[str, Table]) -> None:
        self.pending = tables

    async def sync(self) -> dict[str, str]:
        """Register what is pending (RedisError: it stays pending, for the next beat);
        the agents whose change was refused (name -> why)."""
        async with self._lock:
            tables = self.pending
            if tables is None:
                return {}
            failed = await self._sync(tables)
            if self.pending is tables:
                self.pending = None
            return failed

    async def _sync(self, tables: dict[str, Table]) -> dict[str, str]:
        who = f"config file of node {self.node}"
        redis, keys, trust = self.specs.redis, self.specs.keys, self.specs.trust
        key, macs = keys.declared(self.node), keys.declared_macs(self.node)

        def fill(pipe: Any) -> None:
            pipe.hgetall(key)
            pipe.hgetall(macs)

        raw, raw_macs = await read_all(redis, fill, transaction=True)
        last: dict[str, Table] = {}
        for k, v in raw.items():
            name, mac = k.decode(), raw_macs.get(k)
            if trust.valid(mac, DECLARED, self.node, name, v):
                last[name] = msgspec.json.decode(v)
            else:
                trust.refuse(DECLARED, f"{name} (declared by node {self.node})", mac,
                             "it changes and removes nothing")
        failed: dict[str, str] = {}
        differs: dict[str, str] = {}
        for name in sorted(set(tables) | set(last)):
            table, before = tables.get(name), last.get(name)
            try:
                if table is None:  # the file declared it, and no more
                    if await self.specs.remove([name]):
                        self.report(f"cluster: cluster agent {name} removed ({who} no "
                                    "longer declares it)")
                    await redis.hdel(key, name)
                    await redis.hdel(macs, name)
                    continue
                why = await self._one(name, table, before, who)
                if why:
                    differs[name] = why
                raw_table = encoded(table)
                pipe = redis.pipeline(transaction=True)
                pipe.hset(key, name, raw_table)
                pipe.hset(macs, name, trust.sign(DECLARED, self.node, name, raw_table))
                await pipe.execute()
            except SupervisorError as exc:
                failed[name] = exc.message
                self.report(f"cluster: cluster agent {name} from {who}: {exc.message}")
        self.differs = differs
        return failed

    async def _one(self, name: str, table: Table, before: Table | None, who: str
                   ) -> str | None:
        """Register one agent; how the file differs from the cluster's table."""
        cluster, _, signed = await self.specs.read_any(name)
        if cluster is None:
            try:
                await self.specs.add({name: table}, who)
                self.report(f"cluster: cluster agent {name} added ({who})")
                return None
            except SupervisorError as exc:
                if exc.code != jsonrpc.CONFLICT:
                    raise
                # another node's file added it meanwhile: as if it had been there
                cluster, _, signed = await self.specs.read_any(name)
                if cluster is None:
                    raise
        if not signed:
            # not the cluster's table but a Redis writer's: the file's stands in its place
            revision, change = await self.specs.change(name, lambda _: table, who,
                                                       "config file", replace=True)
            self.report(f"cluster: cluster agent {name}: revision {revision} ({who}): "
                        f"{change}")
            return None
        if before is not None and encoded(before) != encoded(table):
            revision, change = await self.specs.change(
                name, lambda cur: merged(cur, before, table), who, "config file changed")
            self.report(f"cluster: cluster agent {name}: revision {revision} ({who}): "
                        f"{change}")
            return None
        if encoded(cluster) == encoded(table):
            return None
        what = self.specs.describe(cluster, table)
        current = await self.specs.revision(name)
        self.report(f"cluster: cluster agent {name}: {who} declares it otherwise than the "
                    f"cluster's spec (revision {current}): {what}; the cluster's stands "
                    "(edit the file and reload to change it)")
        return what
