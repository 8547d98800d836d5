"""The engine's waits on asks of a person, whichever home keeps them: a call's wait, each
ask's deadline on the engine's WaitClock, the withdrawal of a task's pending asks at its end."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

from ... import jsonrpc
from ...askviews import Ask, AskEnd
from ...jsonrpc import RpcError
from ...timeouts import kept
from .model import TaskFinished

if TYPE_CHECKING:
    from ..stream import Stream
    from .model import AskShelf
    from .waitclock import WaitClock, WaitTimer

log = logging.getLogger("corral.inbox")

CORRAL = "corral"  # who ends an ask when no person does
EXPIRE_RETRY = 1.0  # seconds: a deadline's end the home refused is tried again after
# tries of a task's end's withdrawal of its asks, EXPIRE_RETRY s apart then twice as long each
# time; then pending until their deadlines or the next start's sweep (decision 1087)
WITHDRAW_TRIES = 5


class AskEnded(NamedTuple):
    """An ask was made (`ask.pending`) or ended on this node (the inbox's feeds, webhook)."""

    ask: Ask


class AskHeard(NamedTuple):
    """An ask's end its home learned of: told to the waits, not the feeds (its writer told them)."""

    ask: Ask


class AskWaits:
    """The asks attended here, with their deadlines: those waited on, the inbox's pending ones."""

    def __init__(self, stream: Stream, clock: WaitClock) -> None:
        self.stream = stream
        self.clock = clock
        # task id -> the id of its pending ask attended here, or their ids when several
        self._by_task: dict[str, str | tuple[str, ...]] = {}
        # ask id -> the futures of those waiting on its end, one each (none kept for an
        # ask no one waits on: a suspended task's, thousands of which may wait for days)
        self._waiters: dict[str, list[asyncio.Future[Ask]]] = {}
        # ask id -> its deadline; task id -> its asks' withdrawal, to be tried again
        self._timers: dict[str, WaitTimer] = {}
        self._work: set[asyncio.Task[None]] = set()
        stream.subscribe(self._ended, AskEnded)
        stream.subscribe(self._ended, AskHeard)
        # told of a task's end while an ask of a task is attended here
        self._ends = stream.subscribe(self._finished, TaskFinished, listening=False)

    # -- attending ------------------------------------------------------------------------
    def hold(self, shelf: AskShelf, ask: Ask, task_id: str | None = None) -> None:
        """The pending ask is attended here until it ends. `task_id`: the task's id as
        the engine holds it (one string for thousands of asks read back)."""
        ids = self.ids(ask.task_id)
        if ask.id in ids:
            return
        task_id = ask.task_id if task_id is None else task_id
        self._by_task[task_id] = (ask.id if not ids else
                                  (*ids, ask.id) if len(ids) > 1 else (ids[0], ask.id))
        self.stream.listen(self._ends)
        if ask.deadline is not None:
            # (the timer holds its id, not the ask unpacked, for days)
            self._arm(shelf, ask.id, task_id, max(0.0, ask.deadline - self.clock.time()))

    def _arm(self, shelf: AskShelf, ask_id: str, task_id: str, delay: float) -> None:
        self._timers[ask_id] = self.clock.call_later(
            delay, partial(self._expire, shelf, ask_id, task_id))

    def _forget(self, task_id: str, ask_id: str) -> None:
        left = tuple(i for i in self.ids(task_id) if i != ask_id)
        if not left:
            self._by_task.pop(task_id, None)
        else:
            self._by_task[task_id] = left[0] if len(left) == 1 else left
        timer = self._timers.pop(ask_id, None)
        if timer is not None:
            timer.cancel()

    def ids(self, task_id: str) -> tuple[str, ...]:
        held = self._by_task.get(task_id)
        return () if held is None else (held,) if isinstance(held, str) else held

    def attends(self, task_id: str) -> bool:
        return task_id in self._by_task

    # -- waiting --------------------------------------------------------------------------
    def waiter(self, shelf: AskShelf, ask: Ask) -> asyncio.Future[Ask]:
        """A future of the caller's own that the ask's end resolves (a caller that stops
        waiting lets it go: `unwait`). No coroutine, no shield: one object a waiter."""
        fut: asyncio.Future[Ask] = asyncio.get_running_loop().create_future()
        if not ask.pending:
            fut.set_result(ask)
            return fut
        waiting = self._waiters.get(ask.id)
        if waiting is not None:
            waiting.append(fut)
            return fut
        known = shelf.heed(ask)  # ended while the caller held the record
        if known is not None and not known.pending:
            fut.set_result(known)
            return fut
        self.hold(shelf, ask)
        self._waiters[ask.id] = [fut]
        return fut

    def unwait(self, shelf: AskShelf, ask: Ask, fut: asyncio.Future[Ask]) -> None:
        """`fut` no longer waits on the ask's end; the last one gone, the ask is attended
        on only if its home keeps its deadline here."""
        waiting = self._waiters.get(ask.id)
        if waiting is None or fut not in waiting:
            return
        waiting.remove(fut)
        if not waiting:
            del self._waiters[ask.id]
            if not shelf.unheed(ask):
                self._forget(ask.task_id, ask.id)

    async def wait(self, shelf: AskShelf, ask: Ask) -> Ask:
        fut = self.waiter(shelf, ask)
        try:
            return await fut
        finally:
            self.unwait(shelf, ask, fut)

    # -- ending ---------------------------------------------------------------------------
    def _ended(self, e: AskEnded | AskHeard) -> None:
        if not e.ask.pending:
            self._settle(e.ask)

    def _settle(self, ask: Ask) -> None:
        self._forget(ask.task_id, ask.id)
        for fut in self._waiters.pop(ask.id, ()):
            if not fut.done():
                fut.set_result(ask)

    def _expire(self, shelf: AskShelf, ask_id: str, task_id: str) -> None:
        self._timers.pop(ask_id, None)
        self._spawn(self._time_out(shelf, ask_id, task_id))

    async def _time_out(self, shelf: AskShelf, ask_id: str, task_id: str) -> None:
        try:
            ask = await shelf.read(ask_id)
            if ask is not None and ask.pending:
                ask = await shelf.end(ask, AskEnd.TIMED_OUT, CORRAL)
            if ask is None:  # (gone from where it was kept)
                self._forget(task_id, ask_id)
            elif not ask.pending:  # (ended first, by whoever: told here as it was)
                self._settle(ask)
        except Exception as exc:  # not written: tried again, pending meanwhile
            if not (isinstance(exc, RpcError) and exc.code == jsonrpc.CONFLICT):
                log.error("ask %s could not be timed out (%s); trying again", ask_id,
                          exc.message if isinstance(exc, RpcError) else exc)
            if ask_id not in self._timers and ask_id in self.ids(task_id):
                self._arm(shelf, ask_id, task_id, EXPIRE_RETRY)

    def _finished(self, e: TaskFinished) -> None:
        if not self._by_task:
            self.stream.listen(self._ends, False)
        elif e.task.id in self._by_task:
            self._withdraw(e.task.home.asks, e.task.id, 1)

    def _withdraw(self, shelf: AskShelf, task_id: str, tries: int) -> None:
        self._timers.pop(task_id, None)
        # (asked now, with the end: written after)
        self._spawn(self._withdrawn(shelf, shelf.withdraw(task_id), task_id, tries))

    async def _withdrawn(self, shelf: AskShelf, withdrawal: Awaitable[list[Ask]],
                         task_id: str, tries: int) -> None:
        try:
            await withdrawal
        except Exception as exc:  # pending where kept meanwhile
            delay = EXPIRE_RETRY * 2 ** (tries - 1) if tries < WITHDRAW_TRIES else None
            log.error("the asks of task %s could not be withdrawn (%s); %s", task_id, exc,
                      "pending until their deadlines or the next start" if delay is None
                      else f"trying again in {delay:g} s")
            if delay is not None:
                self._timers[task_id] = self.clock.call_later(
                    delay, partial(self._withdraw, shelf, task_id, tries + 1))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        kept(self._work, asyncio.get_running_loop().create_task(work))

    def close(self) -> None:
        """Stop the deadlines and the waits (the asks stay pending where kept)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for waiting in self._waiters.values():
            for fut in waiting:
                if not fut.done():
                    fut.cancel()
        self._waiters.clear()
        for task in self._work:
            task.cancel()
