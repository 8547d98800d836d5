"""The tool calls of the cluster attempts running at this node, for their views at every
node (decision 2095). A running attempt's calls are in no write of its own until it ends
(decision 2035) and, when no next attempt would read them, in no step either: once a beat
the counts that changed since the last are written to a hash of this node incarnation's,
one write a beat and none a call. A view reads the count of the incarnation its record
names as its owner; at the node running it, the engine's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .connection import read
from .keys import Keys
from .membership import Membership
from .queue import ClusterTask

# the most digits a written count is read with: a count the records' integers hold, and
# int() refuses a writer's text of thousands of digits (ValueError: a failed view)
COUNT_DIGITS = 18


class RunningCalls:
    def __init__(self, redis: Any, keys: Keys, membership: Membership,
                 local: Callable[[str], object]) -> None:
        """`local`: this node's engine's task of an id, if it has it."""
        self.redis, self.keys, self.membership, self.local = redis, keys, membership, local
        self._written: dict[str, int] = {}
        self._consumer = ""  # whose hash `_written` is

    async def beat(self, held: Iterable[object]) -> None:
        """Write the counts of `held` (what runs here, and what ended with its outcome not
        yet written) that changed since the last beat; the hash lives while the beats do,
        and goes once nothing here has counted a call."""
        consumer = self.membership.consumer
        if consumer != self._consumer:  # (a new incarnation: its hash is a new one)
            self._consumer, self._written = consumer, {}
        now = {t.id: t.tool_calls for t in held if isinstance(t, ClusterTask)
               and t.consumer == consumer and t.tool_calls}
        if not now and not self._written:
            return
        changed = {k: v for k, v in now.items() if self._written.get(k) != v}
        pipe = self.redis.pipeline(transaction=False)
        key = self.keys.running_calls(consumer)
        if changed:
            pipe.hset(key, mapping=changed)
        gone = [k for k in self._written if k not in now]
        if gone:
            pipe.hdel(key, *gone)
        if now:  # (past its incarnation's lapse, a dead node's is gone too)
            pipe.pexpire(key, int(2 * self.membership.ttl * 1000))
        await pipe.execute()
        self._written = now

    async def of(self, task_id: str) -> int:
        """The calls of the task's running attempt as its node last wrote them (0: none
        written, or one of a Redis writer's that is no count, or no count of an integer's)."""
        mine = self.local(task_id)
        if isinstance(mine, ClusterTask) and not mine.ended:
            return mine.tool_calls
        owner = await read(lambda: self.redis.hget(self.keys.task(task_id), "owner"))
        if not owner:
            return 0
        kept = self.keys.running_calls(owner.decode(errors="replace"))
        got = await read(lambda: self.redis.hget(kept, task_id))
        return int(got) if got and got.isdigit() and len(got) <= COUNT_DIGITS else 0
