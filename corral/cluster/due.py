"""Cluster tasks that may not start before a time (a delay, a not_before, a retry's
backoff), moved from the due set into their streams when due: every live node runs the
move at each beat, and each task moves exactly once whichever nodes run it together.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from .connection import why
from .keys import GROUP, Keys
from .membership import Membership

AT_ONCE = 256  # tasks one call moves (what is left is moved at once by the next)

# The tasks due by ARGV[1] moved from the due set to their streams (their records' own,
# made with its group where it is gone): one still queued and held (no entry) gets one;
# one cancelled meanwhile only leaves the set (CANCEL takes it out too).
# KEYS: due; ARGV: now, the cluster's key prefix, at most this many
# -> the earliest due time left (a string), or false
DUE = f"""
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0,
    tonumber(ARGV[3]))) do
  redis.call('ZREM', KEYS[1], id)
  local task = ARGV[2] .. 'task:' .. id
  local rec = redis.call('HMGET', task, 'status', 'entry', 'stream', 'tenant', 'agent')
  if rec[5] then  -- (its route's count of what is held: scripts.hold)
    redis.call('ZREM', ARGV[2] .. 'held:' .. (rec[4] or 'default') .. ':' .. rec[5], id)
  end
  if rec[1] == 'queued' and rec[2] == '' and rec[3] then
    if redis.call('EXISTS', rec[3]) == 0 then
      redis.call('XGROUP', 'CREATE', rec[3], '{GROUP}', '0', 'MKSTREAM')
    end
    redis.call('HSET', task, 'entry', redis.call('XADD', rec[3], '*', 'task', id))
    redis.call('HDEL', task, 'not_before')
  end
end
return redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2] or false
"""


class DueClock:
    """A node's part in moving the cluster's due tasks (one per node)."""

    def __init__(self, redis: Any, keys: Keys, membership: Membership,
                 report: Callable[[str], None]) -> None:
        self.keys = keys
        self.membership = membership
        self.report = report
        self.script = redis.register_script(DUE)
        self._failing = False

    async def step(self) -> float | None:
        """The earliest due time left (None: none)."""
        first = await self.script(keys=[self.keys.due], args=[
            repr(time.time()), self.keys.prefix, AT_ONCE])
        return None if first is None else float(first)

    async def run(self) -> None:
        while True:
            wait = self.membership.beat
            if self.membership.member:
                try:
                    first = await self.step()
                    self._failing = False
                except RedisError as exc:
                    first = None
                    if not self._failing:
                        self.report(f"cluster: moving due tasks: {why(exc)}")
                    self._failing = True
                if first is not None:
                    wait = min(wait, max(0.0, first - time.time()))
            await asyncio.sleep(wait)
