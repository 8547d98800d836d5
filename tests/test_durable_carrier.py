"""The durable engine with a step's work that keeps its step's new row itself
(supervisor/durable/engine.py RowCarrier, decision 752: a cluster node's step task, its
row written by its submit script): the engine writes no row before it; the row is the
call's (its run events told) when the work says the store has it; a refused one ends
the step failed under the id it was given; a row that names an id already is run again
by the plain work under that id, never kept a second time."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from corral import jsonrpc
from corral.jsonrpc import RpcError
from corral.supervisor.durable import WHOLE, StepEnd, StepRow
from corral.supervisor.durable.engine import StepEngine
from corral.supervisor.durable.record import Durable
from corral.supervisor.durable.store import DurableStore, MemoryStore

from .test_durable_engine import Cancelled, Job, _kept


class Carrier:
    """A work that keeps its row as a cluster step's submit does, or is refused."""

    def __init__(self, refusal: RpcError | None = None) -> None:
        self.refusal = refusal
        self.carried: list[StepRow] = []
        self.called: list[str] = []
        self.kept_before: list[StepRow | None] = []

    async def __call__(self, task_id: str) -> StepEnd:
        self.called.append(task_id)
        return StepEnd("succeeded", "again")

    async def carry(self, store: DurableStore, call_id: str, row: StepRow,
                    noted: Callable[[], None]) -> StepEnd:
        loaded = store.load(call_id)
        assert loaded is not None
        self.kept_before.append(loaded.rows.get((row.step, row.item)))
        self.carried.append(row)
        if self.refusal is not None:
            raise self.refusal
        await store.save_steps(call_id, [row])
        noted()
        return StepEnd("succeeded", "out")


async def test_a_carrier_keeps_its_new_row_and_the_engine_is_told() -> None:
    store = MemoryStore()
    seen: list[tuple[str, str]] = []

    def observe(call: Durable, r: StepRow) -> None:
        seen.append((r.step, r.status))
    engine = StepEngine(store, Cancelled(), observe)
    job = await _kept(store, Job("k1"))
    work = Carrier()
    row = await engine.step(job, ("a", WHOLE), work)
    assert work.kept_before == [None]  # the engine wrote no row before it
    [carried] = work.carried
    assert (carried.status, carried.task_id) == ("running", row.task_id)
    assert (row.status, row.output, work.called) == ("succeeded", "out", [])
    assert seen == [("a", "running"), ("a", "succeeded")]


async def test_a_refused_carrier_ends_the_step_failed_under_its_id() -> None:
    store = MemoryStore()
    engine = StepEngine(store, Cancelled())
    job = await _kept(store, Job("k2"))
    work = Carrier(RpcError(jsonrpc.CONFLICT, "call k2 not kept: another node holds it"))
    with pytest.raises(RpcError, match="another node holds it"):
        await engine.step(job, ("b", WHOLE), work)
    loaded = store.load("k2")
    assert loaded is not None
    kept = loaded.rows[("b", WHOLE)]
    assert (kept.status, kept.error, kept.task_id) == (
        "failed", "call k2 not kept: another node holds it", work.carried[0].task_id)


async def test_a_row_that_names_an_id_is_not_carried_again() -> None:
    store = MemoryStore()
    engine = StepEngine(store, Cancelled())
    await store.save_steps("k3", [StepRow("a", 0, "running", "kept-id", 1.0)])
    job = await _kept(store, Job("k3", rows={("a", 0): StepRow("a", 0, "running",
                                                               "kept-id", 1.0)}))
    work = Carrier()
    row = await engine.step(job, ("a", 0), work)
    assert (work.carried, work.called) == ([], ["kept-id"])
    assert (row.task_id, row.status, row.output) == ("kept-id", "succeeded", "again")
