"""What a cluster keeps in Redis, bounded once its queues drain
(docs/cluster.md#what-redis-keeps): a node trims finished records beyond `keep_tasks` at
each beat (scripts.TRIM) and deletes the consumers of dead incarnations once the reaper
has taken over what they held.
"""

from __future__ import annotations

import time
from typing import Any

from ..supervisor.config import ClusterSettings
from .keys import GROUP, Keys
from .listing import id_floor
from .membership import Membership
from .scripts import Scripts


class ClusterRetention:
    def __init__(self, scripts: Scripts, keys: Keys, membership: Membership,
                 settings: ClusterSettings) -> None:
        self.redis = scripts.redis
        self.scripts = scripts
        self.keys = keys
        self.membership = membership
        self.settings = settings
        self.dropped = 0  # finished records deleted beyond keep_tasks, by this node
        self.consumers_removed = 0  # dead incarnations' consumers deleted, by this node

    async def step(self, streams: list[str]) -> None:
        """One beat's trimming, `streams` every task stream of the cluster."""
        m = self.membership
        if not m.member or not m.settled():
            return  # after a Redis restart, a missing key is not yet a dead node
        # an id is made when its task is: one made before the cutoff ended before it too
        cutoff = id_floor(time.time() - self.settings.keep_tasks_for)
        gone = await self.scripts.trim(keys=[self.keys.done],
                                       args=[self.settings.keep_tasks, cutoff,
                                             self.keys.prefix])
        self.dropped += len(gone)
        await self._dead_consumers(streams)

    async def _dead_consumers(self, streams: list[str]) -> None:
        if not streams:
            return
        pipe = self.redis.pipeline(transaction=False)
        for s in streams:
            pipe.xinfo_consumers(s, GROUP)
        infos = await pipe.execute(raise_on_error=False)
        idle: list[tuple[str, str]] = []  # (stream, consumer) holding nothing
        for s, info in zip(streams, infos, strict=True):
            if isinstance(info, Exception):
                continue  # the stream is gone
            for c in info:
                try:
                    name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                except UnicodeDecodeError:  # (a Redis writer's: no node's consumer)
                    continue
                if not c["pending"] and name != self.membership.consumer:
                    idle.append((s, name))
        if not idle:
            return
        alive = await self.membership.alive(sorted({c for _, c in idle}))
        dead = [(s, c) for s, c in idle if c not in alive]
        if not dead:
            return
        # a consumer that holds nothing loses nothing; one dead cannot read again (each
        # checked again where it is removed)
        removed = await self.scripts.run([
            (self.scripts.drop_consumer, [s, self.keys.alive(c)], [c]) for s, c in dead])
        self.consumers_removed += sum(1 for r in removed if r == 1)

    def status(self) -> dict[str, Any]:
        return {"keep_tasks": self.settings.keep_tasks,
                "keep_tasks_for": self.settings.keep_tasks_for,
                "dropped": self.dropped, "consumers_removed": self.consumers_removed}
