"""A person in the loop (docs/approvals.md): a running task's call asks a person where its
home keeps its asks and the task waits (`waiting`, journaled; suspended past
suspend_after) until the ask ends; and an attempt failed from outside its worker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ... import jsonrpc
from ...askviews import Ask, AskRequest
from ...jsonrpc import RpcError
from .endings import EndingEngine
from .inbox import Inbox, check_subject
from .model import Task
from .steps import caller_task
from .taskmachine import TaskCause, failed_outside

if TYPE_CHECKING:
    from ...taskviews import TaskFailure
    from .endings import Endings


class PersonLoopEngine(EndingEngine, Protocol):
    """What the person in the loop needs of the TaskManager, besides a task's end's."""

    inbox: Inbox
    endings: Endings


class PersonLoop:
    """A person in its engine's tasks' loop (made with it, one each)."""

    def __init__(self, engine: PersonLoopEngine) -> None:
        self.engine = engine

    async def ask_person(self, req: AskRequest) -> Ask:
        """A call of the running task `req.task_id` asks a person; the task waits until the ask
        ends (at once when the same call's earlier ask has). The ask as it ended."""
        e = self.engine
        check_subject(req)
        task = e.active.get(req.task_id)
        if task is None or not task.running:
            raise _not_asking(req)
        shelf = task.home.asks
        ask = await shelf.keep(task, req)
        if task.ended and ask.pending:
            # ended while its ask was kept, before it was attended for its end to withdraw
            await shelf.withdraw(task.id)
            raise _not_asking(req)
        if not ask.pending:
            return ask
        if task.running:  # (still, after the ask's commit)
            task.fire(TaskCause.WAIT)
            task.home.record(task)
            e.suspensions.hold(task)
        # parked: not one of its worker's MAX_IN_FLIGHT, whose line is read on meanwhile
        peer = task.replica.peer if task.replica is not None else None
        # (the request's own task: a call made in a flight of its own, steps.py)
        parked = peer.park(caller_task()) if peer is not None else None
        waits = e.inbox.waits
        asked = waits.waiter(shelf, ask)
        on = task.replica
        if on is not None:
            on.waiting_for_person += 1
        try:
            return await e.suspensions.wait(task, asked)
        finally:
            if on is not None:
                on.waiting_for_person -= 1
            waits.unwait(shelf, ask, asked)
            if parked is not None and peer is not None:
                peer.unpark(parked)
            if task.waiting and not waits.attends(task.id):
                task.fire(TaskCause.RESUME)
                task.home.record(task)
            if not task.waiting:
                e.suspensions.release(task.id)

    def asks_pending(self, task_id: str) -> bool:
        """Whether the task has an ask of a person pending (wherever it is kept)."""
        return self.engine.inbox.waits.attends(task_id)

    def fail_task(self, task: Task, error: TaskFailure) -> None:
        """The running task's attempt fails from outside its worker: ended failed, or
        retried as its policy says once its worker has stopped it."""
        e = self.engine
        if not task.running or task.replica is None:
            return
        attempt, replica = task.attempts[-1], task.replica
        e.dispatch.deadlines.discard(task, task.timeout)
        if e.endings.ended(task, failed_outside(attempt, error)).retried:
            e.endings.retry(task)
        e.dispatch.stop_attempt(task, replica, attempt, "failed by its approval policy")


def _not_asking(req: AskRequest) -> RpcError:
    return RpcError(jsonrpc.CONFLICT, f"task {req.task_id} is not running: only a running "
                                      "task's call asks a person")
