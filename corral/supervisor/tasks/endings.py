"""A task's end: its one outcome kept, counted, journaled and told (TaskFinished), or a
retry waiting for its backoff. The task's machine decides each move; this is what follows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ... import jsonrpc
from ...taskoptions import AGENTS_RETRY
from ...taskviews import TaskFailure
from .admission import refusal
from .model import Task, TaskFinished
from .retry import backoff, lost_attempts, retry_lost
from .taskmachine import AT_MOST_ONCE_NOTE, AttemptOutcome, LostBudget, TaskCause, TaskStep

if TYPE_CHECKING:
    from ..stream import Stream
    from .counters import AgentTasks, RetiredCounts
    from .delays import Delays
    from .dispatch import TaskDispatch
    from .durable import TaskJournal
    from .host import TaskHost
    from .payload import Output
    from .queue import Queue
    from .retention import Retention
    from .sessions import Sessions
    from .steps import TaskSteps
    from .suspension import Suspensions


class EndingEngine(Protocol):
    """What a task's end needs of the TaskManager."""

    sup: TaskHost
    active: dict[str, Task]
    by_agent: dict[str, AgentTasks]
    retired: RetiredCounts
    retention: Retention
    stream: Stream
    trace_end: Callable[[Task], None] | None
    queue: Queue
    delays: Delays
    dispatch: TaskDispatch
    sessions: Sessions
    suspensions: Suspensions
    steps: TaskSteps

    @property
    def journal(self) -> TaskJournal | None: ...

    def live(self, task_id: str) -> Task | None: ...


class Endings:
    """Its engine's tasks' ends: the Outcomes dispatch tells, the RetryPolicy machines ask."""

    def __init__(self, engine: EndingEngine) -> None:
        self.engine = engine
        self._done: asyncio.Future[None] | None = None  # the `done` of every finished task

    def ended(self, task: Task, end: AttemptOutcome, result: Output | None = None) -> TaskStep:
        """The task's machine moves it by `end`: an end is kept, counted, journaled and
        told here; a retry (`step.retried`) is the caller's to follow."""
        e = self.engine
        assert end.cause is not None
        step = task.fire(end.cause, self)
        if not step.ends:
            return step
        task.out = result
        task.error = end.error
        if step.once and end.error is not None:  # it says why it was not run again
            task.error = TaskFailure(end.error.code, f"{end.error.message} ({AT_MOST_ONCE_NOTE})",
                                     end.error.data)
        task.finished = time.time()
        q = e.by_agent.get(task.agent)
        if q is not None:
            q.counts[task.status] += 1
            q.latencies.append(task.finished - task.due)
        else:
            e.retired.count(task.agent, task.status)
        task.home.record(task)
        e.active.pop(task.id, None)
        e.retention.keep(task)
        done, task._done = task._done, self._done or self._finished()
        if done is not None and not done.done():
            done.set_result(None)
        waiter, task.waiter = task.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        elif result is not None and result.fresh:
            result.forget()  # (its caller went away: a cancelled run)
        watchers, task.watchers = task.watchers, None
        if e.trace_end is not None:
            e.trace_end(task)
        stream = e.stream
        if watchers or TaskFinished in stream.wanted:
            event = TaskFinished(task)
            if watchers:
                stream.tell(watchers, event)
            stream.emit(event)
        # what a finished task keeps has no container a full collection must walk again (a
        # stall of the loop with thousands kept), nor its last checkpoint
        task.attempts = tuple(task.attempts)
        task.checkpoint = None
        return step

    def finish(self, task: Task, cause: TaskCause, error: TaskFailure) -> None:
        """A task ended by `cause` other than its attempt's end (a cancel, its agent down)."""
        self.ended(task, AttemptOutcome(cause, error))

    # -- a retry ----------------------------------------------------------------------
    def retried_on(self, task: Task) -> tuple[str, ...] | None:
        """The outcomes the task's policy retries; None (no retry): its agent is gone."""
        e = self.engine
        agent = e.sup.agents.get(task.agent)
        if agent is None or task.agent not in e.by_agent:
            return None
        return (task.options.retry or AGENTS_RETRY).outcomes(agent.spec)

    def lost_budget(self, task: Task) -> LostBudget | None:
        """The task's retry_lost and its lost attempts so far; None: its agent is gone."""
        e = self.engine
        agent = e.sup.agents.get(task.agent)
        if agent is None or task.agent not in e.by_agent:
            return None
        return LostBudget(retry_lost(task, agent.spec), lost_attempts(task.attempts))

    def retry(self, task: Task) -> None:
        """The machine retried the task: it waits for its backoff, and a timed-out
        attempt's retry for that attempt to stop too (dispatch calls `again`)."""
        e = self.engine
        agent = e.sup.agent(task.agent)  # (there is one: retried_on said so)
        e.by_agent[task.agent].counts["retried"] += 1
        attempt = task.attempts[-1]
        delay = backoff(agent.spec, task.attempt)  # (a cluster's: counted across nodes)
        if delay or agent.spec.retry_backoff:
            attempt.backoff = delay
        task.replica = None
        task.not_before = time.time() + delay if delay else None
        if attempt.finished is None:  # timed out: its worker has yet to stop it
            task.home.record(task)
        else:
            self.again(task)

    def again(self, task: Task) -> None:
        """A task to retry waits for its time, or for a replica: here, or where its home queues it
        (the engine lets it go). One with a call in flight waits here: its answer is the retry's."""
        e = self.engine
        if not e.steps.in_flight(task.id) and task.home.queue_again(task, task.not_before):
            task.not_before = None
            e.active.pop(task.id, None)
            return
        if task.not_before is not None and task.not_before > time.time():
            task.home.record(task)
            e.delays.add(task)
            return
        self.due(task)

    def due(self, task: Task) -> None:
        """A delayed task's time has come: it waits in its agent's queue, at its arrival place."""
        e = self.engine
        task.not_before = None
        task.home.record(task)
        e.queue.requeue(task)
        e.dispatch.pump(task.agent)
        self.drain_if_down(task.agent)

    def _finished(self) -> asyncio.Future[None]:
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
            self._done.set_result(None)
        return self._done

    def stopped(self, task: Task) -> None:
        self.engine.suspensions.settle(task)

    # -- an agent that will not run again ---------------------------------------------------
    def drain_if_down(self, name: str) -> None:
        e = self.engine
        agent = e.sup.agents.get(name)
        if agent is None or refusal(agent) is None or not (e.queue.depth(name)
                                                           or e.delays.count(name)):
            return
        if e.sup.closing and e.journal is not None:
            return  # they stay queued in the journal, for the next daemon
        cause: TaskCause
        if any(x.machine.failed for x in agent.replicas):
            cause, error = TaskCause.DROPPED, TaskFailure(jsonrpc.PEER_CLOSED,
                                                          refusal(agent) or "")
        elif all(x.machine.stays_down for x in agent.replicas):
            cause, error = TaskCause.CANCEL, TaskFailure(jsonrpc.REQUEST_CANCELLED,
                                                         f"agent {name} was stopped")
        else:
            last = next((x.last_exit for x in agent.replicas if x.last_exit), "unknown")
            cause, error = TaskCause.DROPPED, TaskFailure(jsonrpc.PEER_CLOSED,
                                                          f"agent {name} is down: {last}")
        self.drain(name, cause, error)

    def drain(self, name: str, cause: TaskCause, error: TaskFailure) -> None:
        e = self.engine
        waiting = e.delays.of(name)
        for delayed in waiting:
            e.delays.remove(delayed)
        waiting += e.sessions.drain(name)  # first: the lines move as tasks end
        while (task := e.queue.take(name)) is not None:
            waiting.append(task)
        # and those that wait for a person with no attempt, which would wait for it next
        waiting += [t for t in e.active.values() if t.suspended and t.agent == name]
        waiting += [t for i in e.suspensions.of_agent(name)
                    if (t := e.live(i)) is not None and t.agent == name]
        for task in waiting:
            self.finish(task, cause, error)
