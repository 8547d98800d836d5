"""The labels of cluster tasks and sessions (supervisor/labels.py) in Redis, where the
node that runs a task's next attempt or a session's next turn finds them: a sorted set
per key, each label scored by when it was first marked."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from .. import jsonrpc
from ..jsonrpc import RpcError
from .connection import read
from .keys import Keys


class ClusterLabels:
    """The LabelStore of a node's cluster home."""

    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def mark(self, key: str, labels: Sequence[str]) -> None:
        now = time.time()
        try:  # (ZADD NX: one a key has keeps its first score; a repeat changes nothing)
            await self.redis.zadd(self.keys.labels(key),
                                  {label: now + i * 1e-6 for i, label in enumerate(labels)},
                                  nx=True)
        except RedisError as exc:
            raise RpcError(jsonrpc.UNAVAILABLE, f"the labels of {key} were not kept in the "
                                                f"cluster's Redis ({exc}): the call is "
                                                "not made") from None

    def hand(self, key: str, labels: Sequence[str]) -> None:
        # a cluster's task is handed its labels before Redis holds it (ClusterTasks._put
        # marks them): what a node's engine accepts of it has nothing more to keep
        return None

    async def read(self, key: str) -> tuple[str, ...]:
        try:
            got = await read(lambda: self.redis.zrange(self.keys.labels(key), 0, -1))
        except RedisError as exc:
            raise RpcError(jsonrpc.UNAVAILABLE, f"the labels of {key} were not read from "
                                                f"the cluster's Redis ({exc})") from None
        return tuple(x.decode() if isinstance(x, bytes) else str(x) for x in got)
