"""The labels of cluster tasks and sessions (supervisor/labels.py) in Redis, where the
node that runs a task's next attempt or a session's next turn finds them: a sorted set
per key, each label scored by when it was first marked."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .connection import read, unanswered
from .keys import Keys


class ClusterLabels:
    """The LabelStore of a node's cluster home."""

    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def mark(self, key: str, labels: Sequence[str]) -> None:
        now = time.time()
        with unanswered(f"the labels of {key} were not kept in the cluster's Redis",
                        ": the call is not made"):
            # (ZADD NX: one a key has keeps its first score; a repeat changes nothing)
            await self.redis.zadd(self.keys.labels(key),
                                  {label: now + i * 1e-6 for i, label in enumerate(labels)},
                                  nx=True)

    def hand(self, records: Sequence[tuple[str, Sequence[str]]]) -> None:
        # a cluster's task is handed its labels before Redis holds it (ClusterTasks._put
        # marks them): what a node's engine accepts of it has nothing more to keep
        return None

    async def read(self, key: str) -> tuple[str, ...]:
        with unanswered(f"the labels of {key} were not read from the cluster's Redis"):
            got = await read(lambda: self.redis.zrange(self.keys.labels(key), 0, -1))
        return tuple(x.decode() if isinstance(x, bytes) else str(x) for x in got)
