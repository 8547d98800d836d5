"""Outcomes of the cluster tasks this node ran, on their way to the task records (FINISH,
fenced): kept in order while Redis is away; a refused one (the task was taken over) is
counted, logged and dropped. One told to a durable call's step is held for the call's next
write to carry (rides.py), or goes alone after a beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from redis.exceptions import RedisError

from ..supervisor.tasks import TaskFinished, TaskProgress, TaskStatus
from ..supervisor.tasks.taskmachine import TaskCause, TaskMachine, cancel_failure
from ..timeouts import within
from . import records
from .clusteroutput import ClusterOutputs
from .connection import why
from .keys import Keys
from .queue import ClusterQueue, ClusterTask
from .reaper import cancelled
from .scripts import RedisPart, Scripts
from .trust import Trust

BATCH = 256  # outcomes written in one round trip (a pipeline of script calls)
# an output up to this size rides along on the outcomes stream, which every node reads:
# the client waiting for it needs no read of the record
INLINE_OUTPUT = 4096
MARKED = 2  # FINISH's answer to a retry whose cancel's mark is not as read
_json = msgspec.json.Encoder().encode


class Outbox(RedisPart):
    def __init__(self, scripts: Scripts, keys: Keys, trust: Trust, node: str, beat: float,
                 queue: ClusterQueue, report: Callable[[str], None], kept_for: float,
                 outputs: ClusterOutputs | None = None,
                 moved: Callable[[list[str]], Awaitable[None]] | None = None) -> None:
        # (trust signs each outcome: a client believes only a signed one)
        super().__init__(scripts, keys, trust)
        self.node = node
        self.beat = beat
        self.kept_for = int(kept_for)  # seconds a finished record stays ([cluster])
        self.queue = queue
        self.report = report
        # the tasks' live output: a task's chunks reach Redis before its end, which
        # closes its stream (scripts._ended)
        self.outputs = outputs
        # the sessions of turns whose end was written move (ClusterSessions.moved)
        self.moved = moved
        self.pending: deque[tuple[ClusterTask, list[Any]]] = deque()
        self.reports: dict[str, tuple[ClusterTask, bytes]] = {}  # newest progress, by task
        # fenced incarnations: their tasks are the cluster's again, none of their outcomes go
        self.given_up: set[str] = set()
        self.held: dict[str, tuple[ClusterTask, list[Any]]] = {}  # by task (`hold`)
        self.turned: dict[str, None] = {}  # outcomes refused, the newest (`send_held`)
        self.published = 0
        self.refused = 0  # late writes the fence refused
        self._kick = asyncio.Event()
        self._sending = asyncio.Lock()

    def finished(self, e: TaskFinished, hold: bool = False) -> list[Any] | None:
        """A task's end: its outcome goes to its record. `hold`: a call's step waits for
        it here, and an outcome that rides on the outcomes stream is then held (its
        FINISH's arguments returned, None when it goes as any other)."""
        task = e.task
        self.queue.wake(task.agent)  # its slot is free: its agent's puller may read more
        if not isinstance(task, ClusterTask) or task.consumer in self.given_up:
            return None
        err = task.error
        output = b"" if task.raw_output is None else bytes(task.raw_output)
        inline = task.base == 0 and len(output) <= INLINE_OUTPUT
        status, error = str(task.status), b"" if err is None else records.error_json(err)
        args = self._finish_args(task, status, output, error, repr(task.finished), inline,
                                 self.trust.outcome(task.id, task.token, status, output, error))
        if hold and inline:
            self.held[task.id] = (task, args)
            asyncio.get_running_loop().call_later(self.beat, self._release, task.id)
            return args
        self.pending.append((task, args))
        self._kick.set()
        return None

    def requeue(self, task: ClusterTask, at: float | None) -> None:
        """A retry of the task, queued again in Redis for any node, due at `at` (None: at
        once), fenced and in order with the outcomes (FINISH)."""
        self.queue.wake(task.agent)  # its slot is free: its agent's puller may read more
        if task.consumer in self.given_up:
            return
        # (kept while its cancel's mark is none, as this node's beat last read it: a
        # cancel asked since makes FINISH answer MARKED, and the retry is decided again)
        self.pending.append((task, self._finish_args(
            task, "queued", b"", b"", "" if at is None else repr(at), False, "")))
        self._kick.set()

    def _finish_args(self, task: ClusterTask, status: str, output: bytes, error: bytes,
                     when: str, inline: bool, mac: str) -> list[Any]:
        return [task.token, task.id, status, output, error, when, task.entry, task.base,
                self.kept_for, task.retries_left, "1" if inline else "0", mac,
                *records.attempts_json(task, self.node)]

    def _release(self, task_id: str) -> None:
        held = self.held.pop(task_id, None)
        if held is not None:
            self.pending.append(held)
            self._kick.set()

    def take(self, task_ids: list[str]) -> list[tuple[ClusterTask, list[Any]]]:
        """The held outcomes of these tasks, for a call's write to carry (each then `landed`)."""
        return [self.held.pop(t) for t in task_ids if t in self.held]

    def waiting(self, task_ids: list[str]) -> bool:
        """Whether an outcome of these tasks waits to be sent (not held)."""
        mine = set(task_ids)
        return any(t.id in mine for t, _args in self.pending)

    def call_of(self, task: ClusterTask, args: list[Any]) -> tuple[Any, list[str], list[Any]]:
        return (self.scripts.finish, [self.keys.task(task.id), self.keys.attempts(task.id),
                                      task.stream, self.keys.outcomes, *self.keys.listed],
                args)

    def landed(self, item: tuple[ClusterTask, list[Any]], answer: Any) -> None:
        """A carried outcome's answer: written (1), else it goes as any other."""
        if answer == 1:
            self.published += 1
            return
        self.pending.appendleft(item)
        self._kick.set()

    async def send_held(self, task_ids: list[str]) -> bool:
        """These tasks' outcomes in their records before a call's write that does not
        carry them: False when one was refused; RedisError when Redis does not take
        them."""
        self.pending.extendleft(reversed(self.take(task_ids)))
        mine = set(task_ids)
        while any(t.id in mine for t, _args in self.pending):
            if not await self.send():
                raise RedisError("the outcomes wait for Redis")
        turned = [t for t in task_ids if self.turned.pop(t, 0) is None]
        return not turned

    def progress(self, e: TaskProgress | TaskFinished) -> None:
        """A watcher of each claimed task: its newest progress goes to the record, fenced
        like its outcome; a report not yet sent is replaced by a newer."""
        task = e.task
        if not isinstance(e, TaskProgress) or not isinstance(task, ClusterTask) or \
                task.consumer in self.given_up:
            return
        self.reports[task.id] = (task, _json(e.progress))
        self._kick.set()

    async def run(self) -> None:
        while True:
            if not self.pending and not self.reports:
                self._kick.clear()
                with contextlib.suppress(TimeoutError):
                    await within(self._kick.wait(), self.beat)
                continue
            if not await self.send():
                await asyncio.sleep(self.beat)

    async def flush(self) -> None:
        """Send what waits, while Redis answers (a node about to stop)."""
        while self.pending and await self.send():
            pass

    async def send(self) -> bool:
        """One batch to Redis; False when it did not answer (the batch still waits). One
        send at a time; an outcome Redis refused with an error (noeviction) waits again."""
        async with self._sending:
            reports, self.reports = self.reports, {}
            taken = [self.pending[i] for i in range(min(BATCH, len(self.pending)))]
            batch = [(t, a) for t, a in taken if t.consumer not in self.given_up]
            if batch and self.outputs is not None:
                await self.outputs.caught_up()
            # progress before outcomes: a report never lands on a task already ended
            calls = [(self.scripts.progress, [self.keys.task(task.id), self.keys.outcomes],
                      [task.token, data, task.id])
                     for task, data in reports.values()]
            calls += [self.call_of(task, args) for task, args in batch]
            try:
                written = await self.scripts.acknowledged(calls) if calls else []
            except RedisError as exc:
                self.report(f"cluster: {len(self.pending)} outcomes wait for Redis "
                            f"({why(exc)})")
                for tid, report in reports.items():  # unless newer ones came meanwhile
                    self.reports.setdefault(tid, report)
                return False
            written = written[len(reports):]
            for _ in taken:
                self.pending.popleft()
            again = [(item, w) for item, w in zip(batch, written, strict=True)
                     if isinstance(w, Exception)]
            self.pending.extendleft(reversed([item for item, _ in again]))
        if again:
            self.report(f"cluster: {len(again)} outcomes wait: Redis refused them "
                        f"({why(again[0][1])})")
        landed = [t for (t, _args), ok in zip(batch, written, strict=True) if ok == 1]
        turned = [t for (t, _args), ok in zip(batch, written, strict=True) if ok == 0]
        marked = [item for item, ok in zip(batch, written, strict=True) if ok == MARKED]
        if marked:
            await self._decide_again(marked)
        with contextlib.suppress(RedisError):
            landed += await self._sent_before(turned)
            turned = [t for t in turned if t not in landed]
        self.published += len(landed)
        if self.moved is not None:
            await self.moved([t.id for t in landed if t.session is not None])
        for task in turned:
            self.refused += 1
            self.turned[task.id] = None  # (asked by send_held at once: the newest kept)
            if len(self.turned) > BATCH:
                del self.turned[next(iter(self.turned))]
            self.report(f"cluster: the outcome of task {task.id} ({task.status}) was "
                        "refused: the task was taken over from this node")
        return not again

    async def _decide_again(self, marked: list[tuple[ClusterTask, list[Any]]]) -> None:
        """Retries FINISH refused for their cancel's mark, decided again on the mark read
        now (as it was while Redis does not answer), first of what waits: asked to cancel,
        the machine's cancel of the attempt each ran ends it, in cancel_failure's words
        for a task on a worker (where the cancel found it); else the retry, kept while
        the mark is as now read."""
        pipe = self.redis.pipeline(transaction=False)
        for task, _args in marked:
            pipe.hget(self.keys.task(task.id), "cancel")
        try:
            marks = await pipe.execute()
        except RedisError:
            marks = [args[4] for _task, args in marked]
        for (task, args), mark in reversed(list(zip(marked, marks, strict=True))):
            machine = TaskMachine(task.retries_left)
            machine.fire(TaskCause.START)
            if cancelled(machine, mark) is None:
                self.pending.appendleft((task, [*args[:4], mark or b"", *args[5:]]))
                continue
            status, error = str(machine.status), records.error_json(
                cancel_failure(TaskStatus.RUNNING))
            self.pending.appendleft((task, self._finish_args(
                task, status, b"", error, repr(time.time()), task.base == 0,
                self.trust.outcome(task.id, task.token, status, b"", error))))
        self._kick.set()

    async def _sent_before(self, refused: list[ClusterTask]) -> list[ClusterTask]:
        """Of the outcomes FINISH refused, those it refused for being there already: sent
        before, their answer lost."""
        if not refused:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for task in refused:
            pipe.hmget(self.keys.task(task.id), "fence", "status")
        return [task for task, (fence, status) in zip(refused, await pipe.execute(),
                                                      strict=True)
                if fence == str(task.token).encode() and status == str(task.status).encode()]
