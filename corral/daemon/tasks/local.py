"""Tasks on this node's engine, made durable by its journal (docs/durable.md).

A task is acknowledged only once the journal holds it; while the journal cannot write, new
tasks are refused. A task that ended before its failed journal write was known ran, and
its outcome is the answer: refusing it would have the client run it twice. An idempotency
key is claimed and its task submitted with no await between (corral/taskkeys.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import msgspec

from ... import jsonrpc
from ... import methods as m
from ...jsonrpc import RpcError
from ...supervisor.agents import Agents
from ...supervisor.stream import Subscription
from ...supervisor.tasks import (
    LOST_IN_RESTART,
    ON_WORKER,
    Task,
    TaskFinished,
    TaskManager,
    TaskProgress,
    Unfinished,
    new_id,
)
from ...taskkeys import KeyClaim, claimed, submitted
from ...taskviews import TaskInfo, TaskResult
from ...text import plural
from ...timeouts import waited, within
from ..caller import Channel
from ..flowcontrol import Latest
from ..storeschema import StoreError
from ..taskjournal import TaskJournalDB
from .front import Page, Sees, accepted, listing_window, replayed


class LocalFront:
    """The TaskFront of a daemon with no [cluster] (and a cluster node's for `local`)."""

    def __init__(self, agents: Agents, engine: TaskManager, journal: TaskJournalDB | None,
                 report: Callable[[str], None]) -> None:
        self.agents = agents
        self.engine = engine  # the engine's tasks
        self.journal = journal
        self.report = report
        self.recovered = asyncio.Event()
        self.reattached: Callable[[str], Awaitable[None]] | None = None

    @property
    def refusing(self) -> str | None:
        return self.journal.refusing if self.journal is not None else None

    def recover(self, records: list[Unfinished],
                reattached: Callable[[str], Awaitable[None]] | None = None) -> None:
        """Finish the story of every task the previous daemon accepted, then open the
        front. Called with no await since the agents were added, so no
        task is accepted before the journal's are back, queued after theirs."""
        self.reattached = reattached
        tasks = self.engine.recovery.restore(records)
        # those held compact are no Task (suspension.py): suspended, as they were
        compact = len(records) - len(tasks)
        if records:
            was_running = {r.task_id for r in records if r.status in ON_WORKER}
            lost = sum(1 for t in tasks if t.status == "lost")
            retried = sum(1 for t in tasks if t.id in was_running and t.status != "lost")
            # for a person, with no attempt
            waiting = sum(1 for t in tasks if t.suspended) + compact
            self.report(f"task journal: {plural(len(records), 'unfinished task')} recovered: "
                        f"{len(records) - len(was_running) - waiting} queued again, "
                        f"{plural(retried, 'running task')} retried, {lost} lost "
                        f"({LOST_IN_RESTART})"
                        + (f", {waiting} suspended (waiting for a person)" if waiting
                           else ""))
        self.recovered.set()

    # -- handing a task in ----------------------------------------------------------------
    def _accept(self, p: m.TaskParams, holder: str | None,
                made: Callable[[Task], None] | None = None) -> Awaitable[Task | KeyClaim]:
        """The task accepted and in the journal, or the claim of `holder`'s idempotency
        key that names another (nothing is accepted then: corral/taskkeys.py's rule, the
        journal its KeyStore). `made`: told of the task before its commit is awaited.
        To await: a refusal raises at the call, and a task of no key is `_put`'s (no
        frame of this one at each resume of its wait for the commit)."""
        tasks, refusing = self.engine, self.refusing
        if refusing is not None:
            # refused before it reaches an agent: a task that cannot be recorded never runs
            raise RpcError(jsonrpc.INTERNAL_ERROR, f"{refusing}; the task was not accepted")
        if tasks.held is not None and self.journal is None:
            # nothing would keep it for the next daemon
            raise RpcError(jsonrpc.REFUSED, f"refused: {tasks.held}, and without a task "
                                            "journal (task_journal = false) a task accepted "
                                            "now would be lost: submit it again once the "
                                            "daemon is back")
        key, journal = p.idempotency_key, self.journal
        agent = self.agents.get(p.agent) if key is not None else None
        if key is None or agent is None:  # (no such agent: submit says so)
            return self._put(p, None, made)
        if journal is None:
            raise RpcError(jsonrpc.INVALID_PARAMS, (
                "invalid params: an idempotency key is kept in the task journal, and this "
                "daemon has none (task_journal = false): submit it without one"))
        return self._keyed(p, journal, agent.spec.tenant, holder, made)

    async def _keyed(self, p: m.TaskParams, journal: TaskJournalDB, tenant: str,
                     holder: str | None, made: Callable[[Task], None] | None
                     ) -> Task | KeyClaim:
        """`_accept` of a task with an idempotency key."""
        claim = await claimed(journal, tenant, p, new_id(), holder)
        task, _ = await submitted(journal, claim, lambda t: self._put(p, t, made, claim))
        return task or claim

    async def _put(self, p: m.TaskParams, task_id: str | None,
                   made: Callable[[Task], None] | None, keyed: KeyClaim | None = None
                   ) -> Task:
        """In the journal before it is acknowledged (`keyed`: its key's row with it). A
        failed write is known only after the task may have reached an agent: one still
        queued or running is cancelled and refused; one that has ended ran (its row is
        written when the journal can)."""
        # (the engine's Intake itself: its TaskManager.submit is the same call, a frame more)
        task = self.engine.intake.submit(p.agent, p.input, p, traceparent=p.traceparent,
                                         tracestate=p.tracestate, task_id=task_id)
        if keyed is not None and self.journal is not None:
            self.journal.keep_key(task, keyed)
        if made is not None:
            made(task)
        try:
            await self.engine.committed()
        except StoreError as exc:
            if not task.ended:
                self.engine.cancel(task.id)
                raise RpcError(jsonrpc.INTERNAL_ERROR,
                               f"{exc}; the task was not accepted") from None
        return task

    async def _outcome(self, task: Task) -> TaskResult:
        if self.refusing is None:  # else its end is written when it can be
            with contextlib.suppress(StoreError):  # logged by the journal; it stands
                await self.engine.committed()
        return await self.engine.outcome(task)

    async def _first(self, claim: KeyClaim, wait: float | None) -> TaskInfo:
        """The task an idempotency key named, as it is now, or once it ends within
        `wait` (seconds; None: now). Durable before it is told: the first request may
        still wait for its commit, and fail it (then this one is refused as it is)."""
        task_id = claim.task_id
        try:
            await self.engine.committed()
        except StoreError as exc:
            # refused as the first is: its task still runs (the first's refusal cancels
            # it), or the first has let go of the key already
            task = self.engine.active.get(task_id) or self.engine.finished.get(task_id)
            if task is not None and (not task.ended or self.journal is None
                                     or self.journal.key_of(claim.tenant, claim.key) is None):
                raise RpcError(jsonrpc.INTERNAL_ERROR,
                               f"{exc}; the task was not accepted") from None
        if wait is not None:
            with contextlib.suppress(TimeoutError):
                return await within(self.get(task_id, wait=True), wait)
        return await self.get(task_id, wait=False)

    async def submit(self, p: m.TasksSubmit, channel: Channel, holder: str | None
                     ) -> m.TaskAccepted:
        if not self.recovered.is_set():  # (open: no coroutine of the Event's a submission)
            await self.recovered.wait()
        task = await self._accept(p, holder)
        if isinstance(task, KeyClaim):
            return replayed(await self._first(task, p.wait))
        status = task.status
        if p.wait is None:
            return accepted(task.id, status)
        # (one ended by its commit is not waited for, nor given a future to wait on: its
        # `done`, made before its end, asks the running loop, a getpid(2) on 3.11)
        if not task.ended:
            try:
                # a caller that goes away cancels this wait, not the task
                await waited(task.done, p.wait)
            except TimeoutError:
                return accepted(task.id, status)
        return accepted(task.id, status, await self._outcome(task))

    async def run(self, p: m.TasksRun, channel: Channel, holder: str | None) -> TaskResult:
        await self.recovered.wait()
        # a caller that does not read gets the newest progress, never a growing backlog
        progress = Latest(channel, "task.progress", held=True)

        def watch(e: TaskProgress | TaskFinished) -> None:
            if isinstance(e, TaskProgress):
                progress.send({"task_id": e.task.id, **e.progress})

        watching: list[tuple[Task, Subscription | None]] = []
        try:
            task = await self._accept(p, holder,
                                      lambda t: watching.append((t, t.watch(watch))))
            if isinstance(task, KeyClaim):
                first = await self._first(task, None)
                channel.notify("task.accepted", {"task_id": task.task_id})
                progress.release()
                ended = first if first.finished is not None else await self.get(
                    task.task_id, wait=True)
                return ended.outcome()
            # a caller that loses the connection (a daemon restart) waits again by this id
            channel.notify("task.accepted", {"task_id": task.id})
            progress.release()
            # a caller that goes away cancels this wait, not the task
            await asyncio.shield(task.done)
        finally:
            for t, sub in watching:
                t.unwatch(sub)
            progress.close()
        return await self._outcome(task)

    # -- asking -----------------------------------------------------------------------------
    async def get(self, task_id: str, *, wait: bool) -> TaskInfo:
        await self.recovered.wait()
        if wait and self.reattached is not None:
            await self.reattached(task_id)
        return await self.engine.info(task_id, wait=wait)

    def holds(self, task_id: str) -> bool:
        return task_id in self.engine.active or task_id in self.engine.finished

    async def input_of(self, task_id: str) -> msgspec.Raw | None:
        task = self.engine.active.get(task_id)
        if task is not None:
            return task.input
        return await self.journal.load_input(task_id) if self.journal is not None else None

    async def list(self, p: m.TasksList, sees: Sees | None = None) -> Page:
        await self.recovered.wait()
        if p.agent is not None and self.journal is None:
            self.agents.agent(p.agent)
        since, limit = listing_window(p)
        if limit == 0:
            return [], None
        # one more than the page: whether older tasks are left, without counting them
        page = await self.engine.query(agent=p.agent, status=p.status, since=since,
                                       limit=limit + 1, before=p.before, sees=sees,
                                       filters=p)
        if len(page) <= limit:
            return page, None
        return page[1:], page[1].task_id

    async def cancel(self, task_id: str) -> TaskInfo:
        await self.recovered.wait()
        return self.engine.cancel(task_id).info()
