"""The engine's tasks taken back after a restart or an upgrade in place (those running on a
worker handed over): made again from their records, in order, before any accepted after."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from ... import jsonrpc
from ...taskviews import TaskFailure
from .intake import AdmittingEngine, Intake
from .model import LOST_IN_RESTART, CompactTask, Task, TaskHome, TaskRecord
from .taskmachine import AttemptOutcome, TaskCause, TaskStatus

if TYPE_CHECKING:
    from ..replica import Replica
    from .endings import Endings


class RecoveringEngine(AdmittingEngine, Protocol):
    """What recovery needs of the TaskManager, besides what intake does."""

    endings: Endings
    intake: Intake

    def traced_again(self, task: Task) -> None: ...


def rebuilt(rec: TaskRecord, seq: int, session: str | None, home: TaskHome) -> Task:
    """A journal's task made again as its record was (not its status), its `home` the engine's."""
    task = Task(rec.agent, rec.input, rec.priority, rec.timeout, rec.retries_left, seq)
    task.home = home
    task.id, task.created, task.started = rec.task_id, rec.created, rec.started
    task.tool_calls, task.attempts, task.journaled = rec.tool_calls, rec.attempts, True
    task.usage, task.checkpoint = rec.usage, rec.checkpoint
    task.options, task.not_before = rec.options, rec.not_before
    task.tenant, task.session = rec.tenant, session
    task.due = max(rec.created, rec.not_before or rec.created)
    return task


class Recovery:
    """Takes tasks back into its engine (made with it, one each)."""

    def __init__(self, engine: RecoveringEngine) -> None:
        self.engine = engine

    def restore(self, records: Iterable[TaskRecord | CompactTask]) -> list[Task]:
        """A journal's unfinished tasks taken back, in order, before any accepted after (a running
        one lost its attempt to the restart; a suspended one waits on, compact): the Tasks made."""
        e = self.engine
        restored: list[Task] = []
        waiting: list[Task] = []
        now = time.time()
        delayed: list[Task] = []
        for rec in records:
            seq = e.next_seq()
            session = e.sessions.member(rec.task_id)
            agent = e.sup.agents.get(rec.agent)
            if isinstance(rec, CompactTask):
                rec.seq = seq
                if agent is not None and session is None and e.suspensions.keep(rec):
                    e.agent_tasks(agent).counts["accepted"] += 1
                    continue
                whole = e.journal.record(rec.task_id) if e.journal is not None else None
                if whole is None:  # (its row is read in the same start: it is there)
                    continue
                rec = whole
            task = rebuilt(rec, seq, session, e.home)
            e.traced_again(task)
            e.active[task.id] = task
            restored.append(task)
            q = e.agent_tasks(agent) if agent is not None else None
            if q is not None:
                q.counts["accepted"] += 1
            task.restored(rec.status)
            if task.running:  # its attempt was lost to the restart: retried, or lost
                for a in task.attempts:
                    if a.outcome == TaskStatus.RUNNING:
                        a.outcome, a.error, a.finished = TaskStatus.LOST, LOST_IN_RESTART, now
                if e.endings.ended(task, AttemptOutcome(TaskCause.LOST, TaskFailure(
                        jsonrpc.PEER_CLOSED, LOST_IN_RESTART))).ends:
                    continue
                assert q is not None  # (a retry is of an agent that exists)
                q.counts["retried"] += 1
                task.not_before = None  # the restart was its wait
            if q is None:
                e.endings.finish(task, TaskCause.DROPPED, TaskFailure(
                    jsonrpc.PEER_CLOSED, f"{LOST_IN_RESTART}: agent {rec.agent} no longer "
                                         "exists"))
                continue
            if task.suspended and not e.suspensions.restored(task):
                task.home.record(task)  # it waits on for a person, with no attempt
                continue
            task.home.record(task)
            if task.not_before is not None and task.not_before > now:
                delayed.append(task)  # waits for its time, as before the restart
            else:
                task.not_before = None
                waiting.append(task)
        for task in delayed:  # a retry waiting for its backoff keeps its session's turn
            if task.attempts:
                e.sessions.claim(task)
        e.queue.recover(waiting)
        for task in delayed:
            e.delays.add(task)
        for name in {t.agent for t in restored}:
            e.dispatch.pump(name)
        return restored

    def adopt_running(self, rec: TaskRecord, r: Replica, rid: int) -> Task:
        """A journaled task running on a worker `corral upgrade` handed over: its answer ends
        it. Taken in as a cluster's kept claim is (Intake.adopt, its worker given)."""
        e = self.engine
        task = rebuilt(rec, 0, e.sessions.member(rec.task_id), e.home)
        task.not_before, task.due = None, time.time()
        e.sessions.claim(task)
        e.intake.adopt(task, running=(r, rid))
        return task
