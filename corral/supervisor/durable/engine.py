"""A call's steps run at most once each, kept as they go. The rule: a step's id is
committed in the call's rows before its work starts, and a row that names an id is only
ever waited for, its work started again under that id only where it never began (the
process stopped between the two writes). A call's last step's end is kept in the commit
of the call's own end. Pure over its store and the work it is given."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from msgspec.structs import replace

from ... import jsonrpc
from ...jsonrpc import RpcError
from ..tasks.ids import new_id
from .record import STEP_ENDED, Durable, StepEnd, StepKey, StepRow
from .store import DurableStore, EndKeeper

# a step's work, given the id the call recorded for it: to its end
Work = Callable[[str], Awaitable[StepEnd]]
# told of each row as it is kept (a workflow's run events)
Observer = Callable[[Durable, StepRow], None]


class Cancels(Protocol):
    def cancel_task(self, task_id: str) -> None:
        """Its task cancelled if it is queued or running (else nothing)."""


class RowCarrier(Protocol):
    """A step's work that keeps its step's new row itself, in the act that starts it (a
    cluster node's step task): the row is the call's no later than its work exists."""

    def carry(self, store: DurableStore, call_id: str, row: StepRow,
              noted: Callable[[], None]) -> Awaitable[StepEnd]:
        """The step's work to its end, its row kept as it starts (`noted` then)."""


class StepEngine:
    def __init__(self, store: DurableStore, tasks: Cancels,
                 observe: Observer | None = None) -> None:
        self.store = store
        self.tasks = tasks
        self.observe = observe
        # a call's last step's end, left to be kept with the call's own (keep_end)
        self._last: dict[str, StepRow] = {}
        self._ends_together = isinstance(store, EndKeeper)

    async def step(self, call: Durable, key: StepKey, work: Work, *, last: bool = False
                   ) -> StepRow:
        """The step to its end: its row as it ended before, else its work run under its row's id
        (made and kept first). A refusal (RpcError) is the step's failure, ended and raised;
        not UNAVAILABLE (the cluster's Redis did not answer: its task may be made), raised
        with the step left running, as a store's failure is. `last`: the call ends when it
        does (`end`)."""
        row = call.rows.get(key)
        if row is not None and row.status in STEP_ENDED:
            return row
        # (a RowCarrier: asked of its attribute, as isinstance of a protocol is slow)
        carrier = getattr(work, "carry", None) if row is None else None
        if carrier is not None:  # it keeps its row as it starts
            new = call.rows[key] = StepRow(key[0], key[1], "running", new_id(), time.time())
            # in the call's rows while its submit is in flight: a call abandoned meanwhile
            # cancels its task and ends its row as it does those kept
            running = cast(RowCarrier, work).carry(self.store, call.call_id, new,
                                                   lambda: self._noted(call, [new]))
        else:
            # a work that can start under an id made now without looking for it (StepTask)
            fresh = getattr(work, "fresh", None) if row is None else None
            row = await self.begin(call, key)
            assert row.task_id is not None
            running = (fresh or work)(row.task_id)
        try:
            end = await running
        except RpcError as exc:
            if exc.code != jsonrpc.UNAVAILABLE:
                await self.end(call, key, StepEnd("failed", None, exc.message))
            raise
        return await self.end(call, key, end, last=last)

    async def begin(self, call: Durable, key: StepKey) -> StepRow:
        """The step's row as it is, else one made running under a new id, kept before its work."""
        row = call.rows.get(key)
        if row is None:
            row = StepRow(key[0], key[1], "running", new_id(), time.time())
            await self.save(call, [row])
        return row

    async def end(self, call: Durable, key: StepKey, end: StepEnd, *, last: bool = False
                  ) -> StepRow:
        """The step's end kept. `last`: the call ends next, and its end carries this one
        (keep_end), one commit for both: until then it is neither kept nor in the call's
        rows, and a kill meanwhile finds the step running under its id, its work's end
        read back from where that is kept (its task's row)."""
        row = call.rows.get(key)
        ended = StepRow(key[0], key[1], end.status, row.task_id if row is not None else None,
                        row.started if row is not None else time.time(), time.time(),
                        end.output, end.error)
        if last:
            self._last[call.call_id] = ended
            return ended
        await self.save(call, [ended])
        return ended

    async def keep_end(self, call: Durable) -> None:
        """The call's record kept as it ended (durable when this returns), with its last
        step's end where that was left for it (`end`), in one commit where the store
        makes one of them (EndKeeper), else the step's first."""
        row = self._last.pop(call.call_id, None)
        record = call.record()
        if row is None:
            await self.store.save_call(record)
            return
        if self._ends_together:
            await cast(EndKeeper, self.store).save_end(record, [row])
        else:
            await self.store.save_steps(call.call_id, [row])
            await self.store.save_call(record)
        self._noted(call, [row])

    async def let_go(self, call: Durable) -> None:
        """A call that ends otherwise than as its last step left it (a deadline, a cancel
        after it): that step's end kept as any other, before the call's running steps end."""
        row = self._last.pop(call.call_id, None)
        if row is not None:
            await self.save(call, [row])

    def forget(self, call_id: str) -> None:
        """A call whose driver stopped with it running: an end left for it is not kept
        (its step is found running, and ended again from its work's end)."""
        self._last.pop(call_id, None)

    async def save(self, call: Durable, rows: list[StepRow]) -> None:
        await self.store.save_steps(call.call_id, rows)
        self._noted(call, rows)

    def _noted(self, call: Durable, rows: list[StepRow]) -> None:
        for r in rows:
            # its output is the store's alone, read back when it is asked for
            call.rows[(r.step, r.item)] = replace(r, output=None) if r.output is not None else r
            if self.observe is not None:
                self.observe(call, r)

    def output(self, call: Durable, row: StepRow) -> Any:
        if row.output is not None:
            return row.output
        return self.store.output(call.call_id, row.step, row.item)

    async def abandon(self, call: Durable, end: StepEnd) -> None:
        """A call ended otherwise than by its steps: its running steps end so, tasks cancelled."""
        now = time.time()
        ended: list[StepRow] = []
        for r in call.rows.values():
            if r.status != "running":
                continue
            if r.task_id is not None:
                self.tasks.cancel_task(r.task_id)
            ended.append(StepRow(r.step, r.item, end.status, r.task_id, r.started, now,
                                 None, end.error))
        if ended:
            await self.save(call, ended)
