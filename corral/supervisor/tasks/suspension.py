"""Waiting without a process (docs/approvals.md#waiting-without-a-process).

A task is suspended where its asks are kept first (AskShelf.give_back), in one step that
finds what it asked still pending: the engine's inbox keeps it here; a cluster gives its
claim back. Only then is its attempt stopped; an answer that reaches the attempt meanwhile
waits for that step, so a task suspended there does not also run on here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Protocol

import msgspec

from ... import jsonrpc
from ...askviews import Ask
from ...jsonrpc import RpcError
from ...timeouts import kept
from .inbox import AskEnded, Inbox
from .model import CompactTask, Resumer
from .taskmachine import TaskCause, suspended
from .waitclock import WaitClock, WaitTimer

if TYPE_CHECKING:
    from ..memory import Releaser
    from ..stream import Stream
    from .dispatch import TaskDispatch
    from .durable import TaskJournal
    from .model import Task
    from .steps import TaskSteps

log = logging.getLogger("corral.tasks")
REREAD = 1.0  # seconds: a record Redis did not answer for is read again after
# what a suspended task's attempt held while it ran and asked, let go once it settled
# (bench/RESULTS.md, "what a running attempt holds once it asked": 4.8 KB)
ATTEMPT_BYTES = 4096


class SuspendingEngine(Protocol):
    """What suspension needs of the TaskManager."""

    active: dict[str, Task]
    inbox: Inbox
    dispatch: TaskDispatch
    steps: TaskSteps
    stream: Stream
    memory: Releaser

    @property
    def journal(self) -> TaskJournal | None: ...

    def live(self, task_id: str) -> Task | None: ...


class _Wait:
    """A waiting task's suspend timer and its held calls' waits (its suspension cancels them)."""

    __slots__ = ("attempt", "calls", "gone", "timer", "writing")

    def __init__(self, attempt: int, timer: WaitTimer | asyncio.TimerHandle | None) -> None:
        self.attempt = attempt
        self.timer = timer
        self.gone = False  # suspended: its held calls end REQUEST_CANCELLED
        self.calls: list[asyncio.Future[Ask]] = []
        # its suspension being written where its asks are kept (True: done)
        self.writing: asyncio.Future[bool] | None = None


class Suspensions:
    def __init__(self, engine: SuspendingEngine, clock: WaitClock,
                 again: Callable[[Task], None]) -> None:
        """`again`: where a task whose wait has ended goes (the engine's Endings.again)."""
        self.engine = engine
        self.again = again
        self.clock = clock
        self._held: dict[str, _Wait] = {}
        # the suspended tasks kept compact: their id -> their `seq` (Task's), no object of
        # their own: the row is the journal's, their agent and tenant those of their asks
        self.compact: dict[str, int] = {}
        # suspended tasks whose stopped attempt ended, to keep compact once committed
        self._settled: list[Task] = []
        self._settling: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()  # suspensions being written
        # suspended tasks a cluster's home queues again, let go once their stopped attempt ended
        self._handed: set[str] = set()
        self.suspended = 0  # attempts given back while they waited
        self.resumed = 0  # suspended tasks queued again
        self.unwritten = 0  # suspensions their home did not take: they wait on
        # of those, found written when the record was read again: given back after all
        self.unsure = 0
        engine.stream.subscribe(self._ask_ended, AskEnded)

    def suspendable(self, task: Task) -> bool:
        """Whether the waiting task's calls are journaled (a next attempt is answered them)."""
        r = task.replica
        if r is None or task.home.steps is None:
            return False
        spec = r.spec
        return bool(getattr(spec, "replay", True)) and (
            task.retries_left > 0 or bool(getattr(spec, "suspend_after", 0.0)))

    def hold(self, task: Task) -> None:
        """The task waits for a person (at its first held call): its suspend_after timed."""
        if task.id in self._held or not self.suspendable(task):
            return
        assert task.replica is not None  # (suspendable: its attempt is on its worker)
        seconds: float = getattr(task.replica.spec, "suspend_after", 0.0)
        # (a partial, not a closure: a function and a cell each for task, seconds, self)
        timer = None if not seconds else self.clock.call_later(
            seconds, partial(self._waited, task, seconds))
        self._held[task.id] = _Wait(task.attempt, timer)

    def _waited(self, task: Task, seconds: float) -> None:
        held = self._held.get(task.id)  # (a call being made lands first: its answer was lost, #72)
        if held is not None and self.engine.steps.in_flight(task.id) > len(held.calls):
            # its timer: a release stops the looks, or a next hold's wait would end with them
            held.timer = asyncio.get_running_loop().call_later(
                0.1, partial(self._waited, task, seconds))
            return
        self.suspend(task, f"waited {seconds:g} s for a person (suspend_after)")

    async def wait(self, task: Task, asked: asyncio.Future[Ask]) -> Ask:
        """The ask as it ended, or REQUEST_CANCELLED once the task was suspended (which
        cancels `asked`: no task, no `asyncio.wait` and its callbacks per held call)."""
        held = self._held.get(task.id)
        if held is not None:
            if held.gone:
                asked.cancel()
                raise _suspended_call(task)
            held.calls.append(asked)
        try:
            ask = await asked
        except asyncio.CancelledError:
            # (no local holds the current task: the error raised holds this frame, and
            # the task the error, a cycle left for a full collection)
            if held is not None and held.gone and asked.cancelled() and not _cancelling():
                raise _suspended_call(task) from None
            raise
        finally:
            if held is not None:
                held.calls.remove(asked)
            asked.cancel()  # (done: nothing; else no one waits on it any more)
        if held is None:
            return ask
        writing = held.writing
        if not held.gone and writing is not None:
            # ended as its suspension is written: that write decides which comes first
            await asyncio.shield(writing)
        if held.gone:
            raise _suspended_call(task)
        return ask

    def release(self, task_id: str) -> None:
        held = self._held.pop(task_id, None)
        if held is not None and held.timer is not None:
            held.timer.cancel()

    def suspend(self, task: Task, why: str) -> bool:
        """Give the waiting task's attempt back once its home has it suspended; False: it
        was not held here, or no longer waits, or is being suspended already."""
        held = self._held.get(task.id)
        if (held is None or not task.waiting or task.attempt != held.attempt
                or held.writing is not None):
            return False
        loop = asyncio.get_running_loop()
        held.writing = loop.create_future()
        kept(self._writes, loop.create_task(self._write(task, held, why)))
        return True

    def _give_back(self, task: Task, held: _Wait, why: str) -> None:
        self.release(task.id)
        replica, attempt = task.replica, task.attempts[-1]
        assert replica is not None  # (a waiting task's attempt is on its worker)
        engine = self.engine
        engine.dispatch.deadlines.discard(task, task.timeout)
        suspended(attempt, why)
        task.fire(TaskCause.SUSPEND)
        task.replica = None
        # what it keeps while it waits, for days maybe, kept small: its input apart from
        # the request line it came in, its attempts in a tuple (a new one makes a list)
        task.input = msgspec.Raw(bytes(task.input))
        task.attempts = tuple(task.attempts)
        task.home.record(task)
        self.suspended += 1
        held.gone = True
        for call in held.calls:
            call.cancel()
        engine.dispatch.stop_attempt(task, replica, attempt, "was suspended")

    async def _write(self, task: Task, held: _Wait, why: str) -> None:
        resumer = Resumer.NOBODY
        shelf = task.home.asks
        try:
            resumer = await shelf.give_back(task, why)
        except RpcError as exc:  # (its message names the task: it waits on its attempt)
            self.unwritten += 1
            log.warning("%s", exc.message)
            # its home may have taken it all the same (its answer lost): what the record
            # says decides, read until it answers, while an answer that reaches the
            # attempt waits (else it would run here and again where it is queued)
            if await self._written(task, held):
                resumer = Resumer.HOME
        finally:
            done = (resumer is not Resumer.NOBODY and task.waiting
                    and task.attempt == held.attempt)
            if done:
                if resumer is Resumer.HOME:
                    self._handed.add(task.id)
                self._give_back(task, held, why)
            assert held.writing is not None
            held.writing.set_result(done)

    async def _written(self, task: Task, held: _Wait) -> bool:
        while task.waiting and task.attempt == held.attempt:
            try:
                gone = not await task.home.asks.holds(task)
            except RpcError:
                await asyncio.sleep(REREAD)
                continue
            if gone:
                self.unsure += 1
            return gone
        return False

    def suspend_all(self, why: str) -> int:
        """Every waiting task that can be suspended, suspended now (a daemon about to be
        upgraded: a worker's request held open cannot be handed over); how many."""
        return sum(self.suspend(t, why) for t in list(self.engine.active.values())
                   if t.waiting)

    def _ask_ended(self, e: AskEnded) -> None:
        ask = e.ask
        if ask.pending:
            return
        task = self.engine.active.get(ask.task_id)
        if task is None and ask.task_id in self.compact and \
                not self.engine.inbox.asking(ask.task_id):
            task = self.engine.live(ask.task_id)
        if task is not None:
            self.resume(task)

    def resume(self, task: Task) -> bool:
        """A suspended task with nothing pending is queued again (after a restart too);
        False: it was not suspended, or still waits, or its home queues it again."""
        if not task.suspended or task.id in self._handed or \
                self.engine.inbox.waiting_for(task.id):
            return False
        task.fire(TaskCause.RESUME)
        self.resumed += 1
        last = task.attempts[-1] if task.attempts else None
        if last is not None and last.finished is None:
            # its stopped attempt has yet to end: dispatch queues it then (as a timeout's retry)
            task.home.record(task)
        else:
            self.again(task)
        return True

    def settle(self, task: Task) -> None:
        """The suspended task's stopped attempt ended: kept compact once its row is committed and
        only the engine holds its Task; one its home queues again is let go."""
        # what the attempt held goes back to the system once the wave of them is over
        self.engine.memory.settled(ATTEMPT_BYTES)
        if task.id in self._handed:
            self._handed.discard(task.id)
            if task.suspended and self.engine.active.get(task.id) is task:
                del self.engine.active[task.id]
            return
        if not self._compactable(task):
            return
        # one commit awaited for all settled meanwhile, not a coroutine each (thousands at once)
        self._settled.append(task)
        if self._settling is None:
            self._settling = asyncio.get_running_loop().create_task(self._compacted())

    def _compactable(self, task: Task) -> bool:
        return (task.suspended and task.id not in self._handed and task.session is None
                and task.trace is None and not task.awaited and task.id not in self._held
                and all(a.finished is not None for a in task.attempts)
                and self.engine.active.get(task.id) is task
                and self.engine.inbox.asking(task.id))

    async def _compacted(self) -> None:
        journal = self.engine.journal
        try:
            while self._settled and journal is not None:
                settled, self._settled = self._settled, []
                try:
                    await journal.committed()
                except Exception:  # a journal that cannot write: they stay whole
                    continue
                for task in settled:
                    if self._compactable(task):
                        del self.engine.active[task.id]
                        self.compact[task.id] = task.seq
        finally:
            self._settling = None
            self._settled = []

    def stats(self) -> dict[str, int]:
        return {"suspended": self.suspended, "resumed": self.resumed,
                "compact": len(self.compact), "unwritten": self.unwritten,
                "unsure": self.unsure}

    def keep(self, task: CompactTask) -> bool:
        """A journal's suspended task, kept compact while its asks pend; False: to be made whole."""
        if not task.settled or not self.engine.inbox.asking(task.task_id):
            return False
        self.compact[task.task_id] = task.seq
        return True

    def of_agent(self, name: str) -> list[str]:
        """The ids of the tasks kept compact that agent `name` may hold: those whose asks
        name it, and any whose asks have all ended (their rebuild failed)."""
        inbox = self.engine.inbox
        return [i for i in self.compact
                if not (asks := inbox.waiting_for(i)) or asks[0].agent == name]

    def restored(self, task: Task) -> bool:
        """A journal's suspended task after a restart: True when nothing it asked is
        pending (the caller queues it); False: it waits on, suspended."""
        now = time.time()
        for a in task.attempts:
            if a.finished is None:
                a.finished = now
        if self.engine.inbox.waiting_for(task.id):
            return False
        task.fire(TaskCause.RESUME)
        self.resumed += 1
        return True


def _cancelling() -> bool:
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0


def _suspended_call(task: Task) -> RpcError:
    return RpcError(jsonrpc.REQUEST_CANCELLED,
                    f"task {task.id} was suspended while it waited for a person: its next "
                    f"attempt asks again")
