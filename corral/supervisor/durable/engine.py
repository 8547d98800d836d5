"""A call's steps run at most once each, kept as they go. The rule: a step's id is
committed in the call's rows before its work starts, and a row that names an id is only
ever waited for, its work started again under that id only where it never began (the
process stopped between the two writes). Pure over its store and the work it is given."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from msgspec.structs import replace

from ...jsonrpc import RpcError
from ..tasks.ids import new_id
from .record import STEP_ENDED, Durable, StepEnd, StepKey, StepRow
from .store import DurableStore

# a step's work, given the id the call recorded for it: to its end
Work = Callable[[str], Awaitable[StepEnd]]
# told of each row as it is kept (a workflow's run events)
Observer = Callable[[Durable, StepRow], None]


class Cancels(Protocol):
    def cancel_task(self, task_id: str) -> None:
        """Its task cancelled if it is queued or running (else nothing)."""


@runtime_checkable
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

    async def step(self, call: Durable, key: StepKey, work: Work) -> StepRow:
        """The step to its end: its row as it ended before, else its work run under its row's id
        (made and kept first). A refusal (RpcError) is the step's failure, ended and raised."""
        row = call.rows.get(key)
        if row is not None and row.status in STEP_ENDED:
            return row
        if row is None and isinstance(work, RowCarrier):  # it keeps its row as it starts
            new = call.rows[key] = StepRow(key[0], key[1], "running", new_id(), time.time())
            # in the call's rows while its submit is in flight: a call abandoned meanwhile
            # cancels its task and ends its row as it does those kept
            running = work.carry(self.store, call.call_id, new,
                                 lambda: self._noted(call, [new]))
        else:
            row = await self.begin(call, key)
            assert row.task_id is not None
            running = work(row.task_id)
        try:
            end = await running
        except RpcError as exc:
            await self.end(call, key, StepEnd("failed", None, exc.message))
            raise
        return await self.end(call, key, end)

    async def begin(self, call: Durable, key: StepKey) -> StepRow:
        """The step's row as it is, else one made running under a new id, kept before its work."""
        row = call.rows.get(key)
        if row is None:
            row = StepRow(key[0], key[1], "running", new_id(), time.time())
            await self.save(call, [row])
        return row

    async def end(self, call: Durable, key: StepKey, end: StepEnd) -> StepRow:
        row = call.rows.get(key)
        ended = StepRow(key[0], key[1], end.status, row.task_id if row is not None else None,
                        row.started if row is not None else time.time(), time.time(),
                        end.output, end.error)
        await self.save(call, [ended])
        return ended

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
