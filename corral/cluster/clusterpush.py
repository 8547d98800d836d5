"""The push configs of the cluster's tasks (supervisor/pushstore.py) in Redis, where every
node finds them: a hash per task, config id -> "SEQ MAC RECORD" (the MAC binds the record
to its task and id: a Redis writer without the cluster's key cannot point a task's
pushes, and their tokens, at its own URL), the set of the tasks that have any, and the
node delivering each task's events (a lease it renews: another node takes over when it
dies). A
task's hash expires with its record once it ended (scripts._ended); one made after the
end is given its record's time to live as it is made."""

from __future__ import annotations

import time
from typing import Any

from .connection import read, read_all, unanswered
from .keys import Keys
from .trust import PUSH, Trust

# KEYS: the task's configs, the tasks with configs, the task's record
# ARGV: config id, value, most, task id -> 1 kept, 0 the task has its most
PUT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0
    and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[4])
local ttl = redis.call('TTL', KEYS[3])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return 1"""
# KEYS: the task's configs, the tasks with configs; ARGV: config id ('' all), task id
DELETE = """
if ARGV[1] == '' then redis.call('DEL', KEYS[1])
else redis.call('HDEL', KEYS[1], ARGV[1]) end
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
return 1"""
# KEYS: the task's delivering node; ARGV: this node's holder, ms -> 1 it delivers, 0 not
LEAD = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1"""


class ClusterPush:
    """The PushStore of a node's cluster home."""

    shared = True  # (every node delivers from it, one a task at a time)

    def __init__(self, redis: Any, keys: Keys, trust: Trust) -> None:
        self.redis = redis
        self.keys = keys
        self.trust = trust
        self._put = redis.register_script(PUT)
        self._delete = redis.register_script(DELETE)
        self._lead = redis.register_script(LEAD)

    async def put(self, task_id: str, config_id: str, record: bytes, most: int) -> bool:
        mac = self.trust.sign(PUSH, task_id, config_id, record)
        value = f"{time.time_ns()} {mac} ".encode() + record
        with unanswered(f"the push config {config_id} of task {task_id} was not kept in "
                        "the cluster's Redis"):
            kept = await self._put(keys=[self.keys.push(task_id), self.keys.pushed,
                                         self.keys.task(task_id)],
                                   args=[config_id, value, most, task_id])
        return bool(kept)

    async def of(self, task_id: str) -> dict[str, bytes]:
        with unanswered(f"the push configs of task {task_id} were not read from the "
                        "cluster's Redis"):
            got = await read(lambda: self.redis.hgetall(self.keys.push(task_id)))
        found: list[tuple[int, str, bytes]] = []
        for raw_id, value in got.items():
            # (an id that is no UTF-8 is no node's: its MAC does not verify)
            config_id = raw_id.decode(errors="replace")
            seq, mac, record = _split(value)
            if not self.trust.valid(mac, PUSH, task_id, config_id, record):
                self.trust.refuse(PUSH, f"{task_id}/{config_id}", mac or None,
                                  "it is not listed nor delivered to")
                continue
            found.append((seq, config_id, record))
        return {config_id: record for _, config_id, record in sorted(found)}

    async def delete(self, task_id: str, config_id: str) -> None:
        await self._forget(task_id, config_id)

    async def drop(self, task_id: str) -> None:
        await self._forget(task_id, "")

    async def _forget(self, task_id: str, config_id: str) -> None:
        with unanswered(f"the push configs of task {task_id} were not deleted from the "
                        "cluster's Redis"):
            await self._delete(keys=[self.keys.push(task_id), self.keys.pushed],
                               args=[config_id, task_id])

    async def tasks(self) -> list[str]:
        """(A task whose configs expired with its record leaves the set as it is read,
        as does a member that is no UTF-8, a Redis writer's: it names no task.)"""
        with unanswered("the tasks with push configs were not read from the cluster's "
                        "Redis"):
            listed = await read(lambda: self.redis.smembers(self.keys.pushed))
            ids = {x: x.decode(errors="replace") for x in listed}
            named = {x: t for x, t in ids.items() if t.encode() == x}
            # (whether each has its hash still, in one round trip)
            there = await read_all(self.redis, lambda pipe: [
                pipe.exists(self.keys.push(t)) for t in named.values()]) if named else []
            kept = {x: t for (x, t), n in zip(named.items(), there, strict=True) if n}
            gone = [x for x in ids if x not in kept]
            if gone:
                await self.redis.srem(self.keys.pushed, *gone)
        return sorted(kept.values())

    async def lead(self, task_id: str, holder: str, seconds: float) -> bool:
        with unanswered(f"who delivers task {task_id}'s push configs was not read from "
                        "the cluster's Redis"):
            return bool(await self._lead(keys=[self.keys.push_lead(task_id)],
                                         args=[holder, int(seconds * 1000)]))


def _split(value: bytes) -> tuple[int, str, bytes]:
    """A kept value's order, MAC and record (one not so made: no MAC, refused)."""
    seq, _, rest = value.partition(b" ")
    mac, _, record = rest.partition(b" ")
    try:
        return int(seq), mac.decode(errors="replace"), record
    except ValueError:
        return 0, "", value
