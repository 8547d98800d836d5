"""A cluster task's steps in Redis (docs/durable.md): the StepJournal of the tasks a node
claimed. Every write is fenced by the claim's token and carries a MAC. A step is a field
of the task's hash: "SEQ" a tool call, "0:NAME" a named step, "cp" the checkpoint. One
loop turn's writes go in one pipeline, in order: a divergence's drop is never overtaken by
the step after it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import msgspec
from redis.exceptions import RedisError

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..supervisor.tasks import Task
from ..supervisor.tasks.stepjournal import CHECKPOINT_SEQ, NAMED_SEQ, Step
from .keys import CHECKPOINT_FIELD, Keys
from .queue import ClusterTask
from .scripts import RedisPart, Scripts
from .trust import STEP, Trust

_Payload = tuple[str, int, str, msgspec.Raw]  # name, attempt, the arguments' hash, result
_decode = msgspec.json.Decoder(_Payload)


def field_of(seq: int, name: str) -> str:
    if seq == CHECKPOINT_SEQ:
        return CHECKPOINT_FIELD
    return str(seq) if seq != NAMED_SEQ else f"0:{name}"


class _Ops:
    """One task's writes waiting for the next pipeline."""

    __slots__ = ("done", "drop", "fields", "token")

    def __init__(self, token: int) -> None:
        self.token = token
        self.drop: int | None = None  # its tool-call steps from this seq on go first
        self.fields: dict[str, bytes] = {}
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class ClusterSteps(RedisPart):
    """The StepJournal of cluster tasks; `active` finds a running task by id."""

    def __init__(self, scripts: Scripts, keys: Keys, trust: Trust,
                 active: Callable[[str], Task | None]) -> None:
        super().__init__(scripts, keys, trust)
        self._active = active
        self._ops: dict[str, _Ops] = {}  # by task, in the order first put
        self._last: dict[str, asyncio.Future[None]] = {}  # each task's newest writes
        self._sender: asyncio.Task[None] | None = None
        self.written = 0  # steps Redis took
        self.refused = 0  # and writes it refused (the fence) or could not take

    def _pending(self, task_id: str) -> _Ops | None:
        ops = self._ops.get(task_id)
        if ops is None:
            task = self._active(task_id)
            if not isinstance(task, ClusterTask):
                return None  # not a claim of this node's (any more): nothing to fence
            ops = self._ops[task_id] = _Ops(task.token)
            self._last[task_id] = ops.done
            if self._sender is None:
                self._sender = asyncio.ensure_future(self._send())  # at the turn's end
        return ops

    # -- the StepJournal protocol ---------------------------------------------------------
    def put(self, step: Step) -> None:
        ops = self._pending(step.task_id)
        if ops is None or step.body is None:
            return
        field = field_of(step.seq, step.name)
        payload = msgspec.json.encode((step.name, step.attempt, step.args.hex(),
                                       msgspec.Raw(step.body)))
        mac = self.trust.sign(STEP, step.task_id, field, payload)
        ops.fields[field] = mac.encode() + b" " + payload

    def drop_from(self, task_id: str, seq: int) -> None:
        ops = self._pending(task_id)
        if ops is None:
            return
        ops.drop = seq if ops.drop is None else min(ops.drop, seq)
        for field in [f for f in ops.fields if f.isdigit() and int(f) >= seq]:
            del ops.fields[field]

    async def committed(self, task_id: str | None = None) -> None:
        waits = (list(self._last.values()) if task_id is None
                 else [f for f in (self._last.get(task_id),) if f is not None])
        for fut in waits:
            await asyncio.shield(fut)

    def ended(self, task_id: str) -> None:
        """(Its steps go with the task's end: the FINISH script deletes them.)"""

    async def history(self, task_id: str) -> list[Step]:
        try:
            raw = await self.redis.hgetall(self.keys.steps(task_id))
        except (RedisError, OSError):
            return []  # the retry's calls go live: nothing it was not told is replayed
        steps = [self._step(task_id, f.decode(errors="replace"), value)
                 for f, value in raw.items()]
        return sorted((s for s in steps if s is not None), key=lambda s: s.seq)

    def resume(self, task: ClusterTask, value: bytes) -> None:
        """A retried claim given its task's last checkpoint as its claim read it, if it verifies."""
        step = self._step(task.id, CHECKPOINT_FIELD, value)
        if step is not None and step.body is not None:
            task.checkpoint = msgspec.Raw(step.body)

    def _step(self, task_id: str, field: str, value: bytes) -> Step | None:
        """None when its MAC does not verify, or it is not one this corral wrote."""
        mac, _, payload = value.partition(b" ")
        if not self.trust.valid(mac, STEP, task_id, field, payload):
            self.trust.refuse(STEP, f"{field} of task {task_id}", mac,
                              "that call is made again" if field != CHECKPOINT_FIELD
                              else "the retry starts without it")
            return None
        try:
            name, attempt, args, body = _decode.decode(payload)
            seq = (NAMED_SEQ if field.startswith("0:") else CHECKPOINT_SEQ
                   if field == CHECKPOINT_FIELD else int(field))
            return Step(task_id, seq, name, attempt, bytes.fromhex(args), bytes(body))
        except (msgspec.DecodeError, ValueError):
            return None

    # -- to Redis -------------------------------------------------------------------------
    async def _send(self) -> None:
        try:
            while self._ops:
                batch, self._ops = self._ops, {}
                calls = []
                for task_id, ops in batch.items():
                    args: list[Any] = [ops.token, "" if ops.drop is None else ops.drop,
                                       *(part for row in ops.fields.items() for part in row)]
                    calls.append((self.scripts.step,
                                  [self.keys.task(task_id), self.keys.steps(task_id)], args))
                try:
                    results: list[Any] = await self.scripts.acknowledged(calls)
                except Exception as exc:  # whatever it is, the calls waiting are told
                    # (Redis away, or a bug): none may wait for an answer never coming
                    results = [exc] * len(calls)
                for (task_id, ops), result in zip(batch.items(), results, strict=True):
                    self._settle(task_id, ops, result)
        finally:
            self._sender = None

    def _settle(self, task_id: str, ops: _Ops, result: Any) -> None:
        if self._last.get(task_id) is ops.done:
            del self._last[task_id]
        if result == 1:
            self.written += len(ops.fields)
            ops.done.set_result(None)
            return
        self.refused += 1
        if isinstance(result, BaseException):
            error = RpcError(jsonrpc.UNAVAILABLE, f"step not kept: the cluster's Redis did "
                                                  f"not take it ({result})")
        else:
            error = RpcError(jsonrpc.CONFLICT, f"step not kept: task {task_id} is no longer "
                                               f"this node's claim (fence {ops.token})")
        ops.done.set_exception(error)
        ops.done.exception()  # retrieved: nobody may be waiting

    async def close(self) -> None:
        if self._sender is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._sender)
