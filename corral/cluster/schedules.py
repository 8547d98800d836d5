"""Schedules on a cluster (docs/workflows.md#schedules): each schedule's row in Redis
beside a fenced lease, so that exactly one node fires each.

Every write is one script that takes, renews or is refused the lease; a fire's write also
refuses a fire time not later than the stored one, so two nodes cannot both fire a time,
even across a lease's expiry. Times are Redis's (`TIME`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..supervisor.schedule import ScheduleRow
from ..timeouts import cancel_all

# KEYS[1] the schedule's hash. ARGV: me, ttl (ms), mode, a fire time, last_started ("":
# unchanged), paused ("" as declared, "0", "1"). Modes: "renew" (the lease alone), "init"
# (a row where there is none), "fire" (a later fire time than the row's: its fires counted
# one more), "set" (a pause, a skip, what a fire started: the fire time never goes back).
# Returns the fence this node holds, or 0 when it may not write (another's lease, a fire
# time already taken, "init" of a row there is).
SAVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'holder', 'until', 'fence', 'last_fire')
local fence = tonumber(h[3] or '0')
if h[1] ~= ARGV[1] then
  if h[1] and tonumber(h[2] or '0') > now then return 0 end
  fence = fence + 1
end
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'until', now + tonumber(ARGV[2]),
           'fence', fence)
local mode, at = ARGV[3], tonumber(ARGV[4])
if mode == 'renew' then return fence end
if not h[4] then
  redis.call('HSET', KEYS[1], 'last_fire', ARGV[4], 'fires', 0, 'last_started', '',
             'paused', ARGV[6])
  if mode == 'init' then return fence end
elseif mode == 'init' then
  return 0
end
local last = tonumber(redis.call('HGET', KEYS[1], 'last_fire'))
if mode == 'fire' then
  if at <= last then return 0 end
  redis.call('HINCRBY', KEYS[1], 'fires', 1)
  redis.call('HSET', KEYS[1], 'last_fire', ARGV[4], 'last_started', '')
  return fence
end
if at > last then redis.call('HSET', KEYS[1], 'last_fire', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'last_started', ARGV[5]) end
redis.call('HSET', KEYS[1], 'paused', ARGV[6])
return fence
"""


def _text(v: Any) -> str | None:
    return None if v is None else v.decode() if isinstance(v, bytes) else str(v)


class ClusterLedger:
    """The schedules' rows and leases in the cluster's Redis (a schedules Ledger)."""

    def __init__(self, redis: Any, prefix: str, membership: Any, ttl: float,
                 report: Callable[[str], None]) -> None:
        self.redis = redis
        self.prefix = prefix
        self.membership = membership  # this node's: its incarnation holds the leases
        self.ttl_ms = int(ttl * 1000)
        self.every = ttl / 3
        self.report = report
        self._save = redis.register_script(SAVE)
        self.fences: dict[str, int] = {}  # the schedules whose lease this node holds
        self._names: list[str] = []
        self._keeper: asyncio.Task[None] | None = None

    def key(self, name: str) -> str:
        return f"{self.prefix}schedule:{name}"

    async def _write(self, name: str, mode: str, row: ScheduleRow | None = None) -> bool:
        if not self.membership.member:  # joining, or fenced: it fires nothing
            self.fences.clear()
            return False
        r = row or ScheduleRow(0.0)
        paused = "" if r.paused is None else str(int(r.paused))
        fence = int(await self._save(keys=[self.key(name)], args=[
            self.membership.consumer, self.ttl_ms, mode, repr(r.last_fire), r.last_started or "",
            paused]))
        if fence:
            self.fences[name] = fence
        elif mode != "init":
            self.fences.pop(name, None)
        return fence != 0

    # -- the Ledger protocol --------------------------------------------------------------
    async def ready(self) -> None:
        """Once the node is a member (its missed fires are settled under its lease)."""
        while not self.membership.member:
            await self.membership.changed.wait()

    async def load(self, name: str) -> ScheduleRow | None:
        got = await self.redis.hmget(self.key(name), "last_fire", "fires", "last_started",
                                     "paused")
        if got[0] is None:
            return None
        paused = _text(got[3])
        return ScheduleRow(float(got[0]), int(got[1] or 0), _text(got[2]) or None,
                           None if not paused else paused == "1")

    async def save(self, name: str, row: ScheduleRow, *, fire: bool = False,
                   new: bool = False) -> bool:
        return await self._write(name, "init" if new else "fire" if fire else "set", row)

    def holds(self, name: str) -> bool:
        return name in self.fences and self.membership.member

    def watch(self, names: list[str]) -> None:
        self._names = names
        for gone in set(self.fences) - set(names):
            del self.fences[gone]
        if self._keeper is None:
            self._keeper = asyncio.ensure_future(self._keep())

    async def _keep(self) -> None:
        while True:
            for name in list(self._names):
                try:
                    await self._write(name, "renew")
                except Exception as exc:  # Redis away: the lease lapses; said once a round
                    self.fences.pop(name, None)
                    self.report(f"schedules: lease of {name} not renewed: {exc}")
                    break
            await asyncio.sleep(self.every)

    async def close(self) -> None:
        if self._keeper is not None:
            await cancel_all([self._keeper])
