"""Elastic agents and cluster tasks: what waits in an agent's streams is load.

A node pulls a task only into a serving replica with a free slot, so without this a task
in the streams would never wake an agent asleep at `min_replicas = 0`
(docs/cluster.md#elastic-agents-and-cluster-tasks).
"""

from __future__ import annotations

import math
from typing import Any

from ..supervisor.agents import Agents
from ..supervisor.elastic import Elastic
from .keys import GROUP, Keys, priority_numbers
from .membership import NodeView


class Backlog:
    def __init__(self, redis: Any, keys: Keys, elastic: Elastic, agents: Agents) -> None:
        self.redis = redis
        self.keys = keys
        self.elastic = elastic
        self.agents = agents
        self.woken = 0  # agents woken here by tasks waiting in the cluster's streams

    async def step(self, view: list[NodeView]) -> None:
        elastic = self.elastic
        names = [n for n in elastic.entries if n in self.agents]
        for gone in [n for n in elastic.backlog if n not in names]:
            del elastic.backlog[gone]
        if not names:
            return
        tenants = {n: self.agents[n].spec.tenant for n in names}
        pipe = self.redis.pipeline(transaction=False)
        for n in names:
            pipe.zrange(self.keys.priorities(tenants[n], n), 0, -1)
        prios = await pipe.execute()
        streams = [(n, self.keys.stream(tenants[n], n, p))
                   for n, ps in zip(names, prios, strict=True) for p in priority_numbers(ps)]
        waiting = dict.fromkeys(names, 0)
        if streams:
            pipe = self.redis.pipeline(transaction=False)
            for _, s in streams:
                pipe.xlen(s)
                pipe.xpending(s, GROUP)
            got = await pipe.execute(raise_on_error=False)
            for (n, _), length, pending in zip(streams, got[::2], got[1::2], strict=True):
                if isinstance(length, int) and isinstance(pending, dict):
                    waiting[n] += max(0, length - int(pending.get("pending", 0)))
        for n in names:
            # shared between the live nodes that run it: each scales for its part
            runners = max(1, sum(1 for v in view if v.runs(tenants[n], n)))
            elastic.backlog[n] = math.ceil(waiting[n] / runners)
            agent = self.agents[n]
            if waiting[n] and not agent.replicas:
                self.woken += 1
                elastic.wake(n)
