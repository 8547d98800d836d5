"""A cluster task's spawns (`task/spawn`, `task/wait`) in Redis: its children are cluster
tasks, so a parent whose attempt another node runs finds them
(docs/cluster.md#spawn-trees-on-any-node).

A spawn's row is written with the child's record and stream entry in one script, fenced by
the parent's claim: a key that has a row answers that row's child, never a second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from redis.exceptions import RedisError

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..supervisor.labels import LabelStore
from ..supervisor.tasks import Task, new_id
from ..supervisor.tasks.admission import QueueBound, cluster_refusal
from ..supervisor.tasks.model import SpawnOrder, SpawnReply
from ..supervisor.tasks.spawntree import Lineage
from ..supervisor.tasks.taskmachine import TERMINAL
from ..taskoptions import encoded, step_options
from ..taskviews import TaskInfo
from .connection import never_sent, read, read_all, unanswered, why
from .keys import Keys
from .queue import ClusterTask
from .records import on_worker, trace_field
from .scripts import RedisPart, Scripts, submit_script
from .trust import SPAWN as SIGNED_SPAWN
from .trust import TENANT, Trust

RECORD_GONE = "no task of this id is kept (its record has gone: keep_tasks, keep_tasks_for)"
SPAWN_UNANSWERED = "task/spawn: the cluster's Redis did not answer"
WAIT_UNANSWERED = "task/wait: the cluster's Redis did not answer"
ROOT = Lineage(0)
# spawns in Redis at once (a map's spawns come together): the node's pool is not all one
# map's
AT_ONCE = 16
_lineage = msgspec.json.Decoder(tuple[int, str | None, str | None, str])

# A spawn: its row and its child's submit (SUBMIT's), in one step, only while the parent
# is running under the caller's claim; a key with a row answers its child.
# KEYS: SUBMIT's five (the child's), the parent's record, the parent's spawns
# ARGV: SUBMIT's eleven (the child's), then the parent's fence token, the spawn's key,
#       max_children of the parent's agent, the row (its MAC, a space, the child's id);
#       then SUBMIT's last five (the child's place in its tree among them)
# -> 1 spawned, {'full', n} the child's agent's queue is full, {'fence'} the parent is not this
#    claim's, {'had', row} the key's row, {'fan', n} the parent has n children already
SPAWN = submit_script(first="""
local parent = redis.call('HMGET', KEYS[6], 'fence', 'status')
if parent[1] ~= ARGV[12] or not ON_WORKER then return {'fence'} end
local had = redis.call('HGET', KEYS[7], ARGV[13])
if had then return {'had', had} end
local n = redis.call('HLEN', KEYS[7])
if n >= tonumber(ARGV[14]) then return {'fan', n} end""",
                      then="redis.call('HSET', KEYS[7], ARGV[13], ARGV[15])").replace(
                          "ON_WORKER", on_worker("parent[2]"))


def lineage_field(trust: Trust, task_id: str, lineage: Lineage, parent: str = "") -> str:
    """A task's place in its spawn tree as its record keeps it: the MAC, a space, the
    JSON (depth, reach, who set the reach, its parent's id)."""
    body = msgspec.json.encode((lineage.depth, lineage.reach, lineage.by, parent)).decode()
    return f"{trust.sign(SIGNED_SPAWN, task_id, body)} {body}"


class ClusterSpawns(RedisPart):
    """The SpawnStore of cluster tasks (a claimed task's `home.spawns`)."""

    def __init__(self, scripts: Scripts, keys: Keys, trust: Trust, node: str,
                 serves: Callable[[str, str], Awaitable[bool]],
                 max_queue: Callable[[str, str], Awaitable[QueueBound]],
                 ended: Callable[[str], Awaitable[TaskInfo]],
                 info: Callable[[str], Awaitable[TaskInfo | None]], labels: LabelStore
                 ) -> None:
        """`max_queue`: the bound of a tenant's agent's queue (ClusterTasks'); `ended`,
        `info`: a cluster task's record once it ended, and as it is now; `labels`: where
        a child's handed labels are kept."""
        super().__init__(scripts, keys, trust)
        self.labels = labels
        self.node = node
        self._serves = serves
        self._max_queue = max_queue
        self._ended = ended
        self._info = info
        self.script = self.redis.register_script(SPAWN)
        # held only around a call to Redis, never across a wait for a child (a child
        # spawning in turn on this node must get one)
        self._calls = asyncio.Semaphore(AT_ONCE)

    # -- task/spawn -----------------------------------------------------------------------
    async def placed(self, task: Task, key: str) -> tuple[str | None, Lineage]:
        def fill(pipe: Any) -> None:
            pipe.hget(self.keys.spawns(task.id), key)
            pipe.hget(self.keys.task(task.id), "lineage")

        with unanswered(SPAWN_UNANSWERED):
            async with self._calls:
                row, lineage = await read_all(self.redis, fill)
        mine = self._lineage(task.id, lineage)
        return (None if row is None else self._child(task.id, key, row),
                mine._replace(depth=mine.depth + 1))

    def _child(self, parent_id: str, key: str, row: bytes, method: str = "task/spawn"
               ) -> str:
        mac, _, child = row.decode(errors="replace").partition(" ")
        if not self.trust.valid(mac, SIGNED_SPAWN, parent_id, key, child):
            self.trust.refuse(SIGNED_SPAWN, f"{key} of task {parent_id}", mac,
                              f"{method} is refused")
            raise RpcError(jsonrpc.REFUSED, f"{method}: the row of spawn {key} of task "
                           f"{parent_id} in Redis is not signed with this node's cluster "
                           "key (a Redis writer without the key made or changed it): "
                           "refused")
        return child

    def _lineage(self, task_id: str, field: bytes | None) -> Lineage:
        if field is None and self.trust.key is None:
            return ROOT  # (without a key every record is taken as it is)
        # every task's record has its place, signed: one without it had it deleted
        mac, _, body = (field or b"").decode(errors="replace").partition(" ")
        if self.trust.valid(mac, SIGNED_SPAWN, task_id, body):
            with contextlib.suppress(msgspec.DecodeError):
                depth, reach, by, _parent = _lineage.decode(body)
                return Lineage(depth, reach, by)
        self.trust.refuse(SIGNED_SPAWN, f"place of task {task_id}", mac,
                          "it spawns nothing")
        raise RpcError(jsonrpc.REFUSED, f"task/spawn: the place of task {task_id} in its "
                       "spawn tree in Redis is not signed with this node's cluster key (a "
                       "Redis writer without the key made or changed it): refused")

    async def serves(self, agent: str, tenant: str) -> bool:
        with unanswered(SPAWN_UNANSWERED):
            return await self._serves(agent, tenant)

    async def spawn(self, task: Task, order: SpawnOrder) -> SpawnReply:
        assert isinstance(task, ClusterTask)  # (only a claim carries these)
        child_id = new_id()
        keys = [self.keys.task(child_id), self.keys.stream(order.tenant, order.agent, 0),
                self.keys.priorities(order.tenant, order.agent), self.keys.agents,
                self.keys.live, self.keys.task(task.id), self.keys.spawns(task.id)]
        row = f"{self.trust.sign(SIGNED_SPAWN, task.id, order.key, child_id)} {child_id}"
        bound = await self._max_queue(order.agent, order.tenant)
        if order.labels:  # (kept before the child is: a node that claims it reads them)
            await self.labels.mark(child_id, order.labels)
        args: list[Any] = [
            child_id, order.agent, order.raw_input, 0,
            "" if order.timeout is None else repr(order.timeout),
            "" if order.retries is None else order.retries, repr(time.time()), self.node,
            bound.most, "0", trace_field(order.traceparent, order.tracestate),
            task.token, order.key, order.max_children, row, "",
            encoded(step_options(order.timeout, None)) or b"",
            lineage_field(self.trust, child_id, order.lineage, task.id), order.tenant,
            self.trust.sign(TENANT, child_id, order.agent, order.tenant)]
        got = await self._run(keys, args)
        if got == 1:
            return SpawnReply(child_id)
        full = cluster_refusal(order.agent, got, bound)
        if full is not None:
            raise full
        what = got[0].decode() if isinstance(got, list) and got else ""
        if what == "had":
            return SpawnReply(self._child(task.id, order.key, got[1]), had=True)
        if what == "fan":
            return SpawnReply(None, int(got[1]))
        raise RpcError(jsonrpc.CONFLICT, f"task/spawn: task {task.id} is no longer this "
                                         f"node's claim (fence {task.token})")

    async def _run(self, keys: list[Any], args: list[Any]) -> Any:
        """The script, once more when its answer was lost (the same child id: a row
        written by the first answers it)."""
        for again in (False, True):
            try:
                async with self._calls:
                    return await self.scripts.one(self.script, keys, args)
            except RedisError as exc:
                if again or never_sent(exc):
                    raise RpcError(jsonrpc.UNAVAILABLE, f"{SPAWN_UNANSWERED} ({why(exc)})"
                                   ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    # -- task/wait ------------------------------------------------------------------------
    async def children(self, task: Task) -> set[str]:
        with unanswered(WAIT_UNANSWERED):
            async with self._calls:
                rows = await read(lambda: self.redis.hgetall(self.keys.spawns(task.id)))
        return {self._child(task.id, k.decode(errors="replace"), v, "task/wait")
                for k, v in rows.items()}

    async def outcome(self, child_id: str) -> dict[str, Any]:
        with unanswered(WAIT_UNANSWERED):
            async with self._calls:
                info = await self._info(child_id)
            if info is None:
                return {"task_id": child_id, "status": "lost", "output": None,
                        "error": RECORD_GONE}
            ended = info if info.status in TERMINAL else await self._ended(child_id)
        out: dict[str, Any] = {"task_id": child_id, "status": str(ended.status),
                               "output": ended.output}
        if ended.error is not None:
            out["error"] = ended.error.message
        return out
