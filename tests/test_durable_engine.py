"""The durable engine without processes (supervisor/durable/): a call with keyed steps,
pure over its store, driven by a planner stub. A step's id is kept before its work
starts and a step that ended is never run again; a row that names an id is run again
under that same id; a refusal ends the step failed; an abandoned call's running steps
end as it did, their tasks cancelled; the driver ends a call by its planner, its
deadline, a cancel with a reason, and leaves it running (kept, resumable) when the
process stops or the store fails."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from corral import jsonrpc
from corral.jsonrpc import RpcError
from corral.supervisor.durable import WHOLE, CallRecord, StepEnd, StepRow
from corral.supervisor.durable.calls import Calls, StepFailed
from corral.supervisor.durable.engine import StepEngine, Work
from corral.supervisor.durable.record import StepKey
from corral.supervisor.durable.store import MemoryStore


@dataclass
class Job:
    """A call of a kind of the tests' own."""

    call_id: str
    status: str = "running"
    error: str | None = None
    ended: float | None = None
    deadline: float | None = None
    tenant: str | None = None
    rows: dict[StepKey, StepRow] = field(default_factory=dict)

    def record(self) -> CallRecord:
        return CallRecord(self.call_id, "job", "j", b"{}", None, self.status, 0.0,
                          self.tenant, self.ended, self.deadline, None, self.error,
                          rows=dict(self.rows))


class Cancelled:
    def __init__(self) -> None:
        self.ids: list[str] = []

    def cancel_task(self, task_id: str) -> None:
        self.ids.append(task_id)


class FailingStore(MemoryStore):
    """A store whose writes fail from `broken` on (a full disk)."""

    broken = False

    async def save_steps(self, call_id: str, rows: list[StepRow]) -> None:
        if self.broken:
            raise OSError("disk full")
        await super().save_steps(call_id, rows)

    async def save_call(self, record: CallRecord) -> None:
        if self.broken:
            raise OSError("disk full")
        await super().save_call(record)


async def _kept(store: MemoryStore, job: Job) -> Job:
    await store.save_call(job.record())
    return job


def _succeeds(seen: list[str], output: Any = "out") -> Work:
    async def work(step_id: str) -> StepEnd:
        seen.append(step_id)
        return StepEnd("succeeded", output)
    return work


def _hangs(started: asyncio.Event) -> Work:
    """A step's work that sets `started` and never ends (until it is cancelled)."""
    async def work(step_id: str) -> StepEnd:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("never")
    return work


async def test_a_steps_id_is_kept_before_its_work_starts_and_it_runs_once() -> None:
    store, tasks = MemoryStore(), Cancelled()
    engine = StepEngine(store, tasks)
    job = await _kept(store, Job("c1"))
    kept_first: list[StepRow] = []

    async def work(step_id: str) -> StepEnd:
        loaded = store.load("c1")
        assert loaded is not None
        kept_first.append(loaded.rows[("a", WHOLE)])
        return StepEnd("succeeded", {"n": 1})

    row = await engine.step(job, ("a", WHOLE), work)
    assert (row.status, row.output) == ("succeeded", {"n": 1})
    assert [(r.status, r.task_id) for r in kept_first] == [("running", row.task_id)]
    # run again (a later driver): its row as it ended, the work never started
    seen: list[str] = []
    again = await engine.step(job, ("a", WHOLE), _succeeds(seen))
    assert seen == [] and (again.status, again.task_id) == ("succeeded", row.task_id)
    # its output is the store's, read back (none in the call's rows)
    assert job.rows[("a", WHOLE)].output is None
    assert engine.output(job, again) == {"n": 1}


class Fresh:
    """A work that can start under an id made now without looking for it (StepTask)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, step_id: str) -> StepEnd:
        self.seen.append(("looked for", step_id))
        return StepEnd("succeeded", None)

    async def fresh(self, step_id: str) -> StepEnd:
        self.seen.append(("fresh", step_id))
        return StepEnd("succeeded", None)


async def test_a_new_rows_work_starts_fresh_and_a_kept_rows_is_looked_for() -> None:
    store = MemoryStore()
    engine = StepEngine(store, Cancelled())
    job = await _kept(store, Job("c5"))
    await store.save_steps("c5", [StepRow("b", WHOLE, "running", "kept-id", 1.0)])
    loaded = store.load("c5")
    assert loaded is not None
    job.rows = loaded.rows
    work = Fresh()
    new = await engine.step(job, ("a", WHOLE), work)
    await engine.step(job, ("b", WHOLE), work)
    assert work.seen == [("fresh", new.task_id), ("looked for", "kept-id")]


async def test_a_row_that_names_an_id_is_run_again_under_that_id() -> None:
    """As after a crash between the row's commit and the work's end."""
    store = MemoryStore()
    engine = StepEngine(store, Cancelled())
    job = await _kept(store, Job("c2"))
    await store.save_steps("c2", [StepRow("a", 0, "running", "kept-id", 1.0)])
    loaded = store.load("c2")
    assert loaded is not None
    resumed = Job("c2", rows=loaded.rows)
    seen: list[str] = []
    row = await engine.step(resumed, ("a", 0), _succeeds(seen))
    assert seen == ["kept-id"]
    assert (row.task_id, row.started, row.status) == ("kept-id", 1.0, "succeeded")
    del job


async def test_a_refused_step_ends_failed_with_the_refusal_and_raises() -> None:
    store = MemoryStore()
    engine = StepEngine(store, Cancelled())
    job = await _kept(store, Job("c3"))

    async def refused(step_id: str) -> StepEnd:
        raise RpcError(jsonrpc.INVALID_PARAMS, "no such agent: chat")

    with pytest.raises(RpcError, match="no such agent: chat"):
        await engine.step(job, ("b", WHOLE), refused)
    loaded = store.load("c3")
    assert loaded is not None
    row = loaded.rows[("b", WHOLE)]
    assert (row.status, row.error) == ("failed", "no such agent: chat")


async def test_a_store_that_fails_before_the_id_is_kept_starts_no_work() -> None:
    store = FailingStore()
    engine = StepEngine(store, Cancelled())
    job = await _kept(store, Job("c4"))
    store.broken = True
    seen: list[str] = []
    with pytest.raises(OSError, match="disk full"):
        await engine.step(job, ("a", WHOLE), _succeeds(seen))
    assert seen == [] and job.rows == {}


async def test_abandon_ends_running_steps_and_cancels_their_tasks_alone() -> None:
    store, tasks = MemoryStore(), Cancelled()
    told: list[tuple[str, str]] = []
    engine = StepEngine(store, tasks, lambda call, row: told.append((row.step, row.status)))
    job = await _kept(store, Job("c5"))
    await engine.save(job, [StepRow("done", WHOLE, "succeeded", "t1", 1.0, 2.0),
                            StepRow("busy", WHOLE, "running", "t2", 1.0),
                            StepRow("map", WHOLE, "running", None, 1.0)])
    await engine.abandon(job, StepEnd("timed_out", None, "the run's timeout passed"))
    assert tasks.ids == ["t2"]
    loaded = store.load("c5")
    assert loaded is not None
    assert {k[0]: (r.status, r.error) for k, r in loaded.rows.items()} == {
        "done": ("succeeded", None), "busy": ("timed_out", "the run's timeout passed"),
        "map": ("timed_out", "the run's timeout passed")}
    assert told[-2:] == [("busy", "timed_out"), ("map", "timed_out")]


@dataclass
class Plan:
    """A planner stub: one step per name in `steps`, in order, each `work`'s."""

    engine: StepEngine
    steps: list[str]
    work: Work
    abandoned: list[str] = field(default_factory=list)
    ends: list[str] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)
    last: bool = False  # the last step's end left to the call's (StepEngine.end)
    # awaited after the last step ended and before the call's status is set
    after_last: asyncio.Event | None = None

    async def drive(self, call: Job) -> None:
        for name in self.steps:
            row = await self.engine.step(call, (name, WHOLE), self.work,
                                         last=self.last and name == self.steps[-1])
            if row.status != "succeeded":
                raise StepFailed(f"step {name}: {row.status}")
        if self.after_last is not None:
            await self.after_last.wait()
        call.status = "succeeded"

    async def abandon(self, call: Job) -> None:
        self.abandoned.append(call.call_id)
        await self.engine.abandon(call, StepEnd("cancelled", None, call.error))

    def timed_out(self, call: Job) -> str:
        return "past its deadline"

    def ended(self, call: Job) -> None:
        self.ends.append(call.status)

    def stopped(self, call: Job, why: str) -> None:
        self.stops.append(why)


def _driver(store: MemoryStore, steps: list[str], work: Work, *, last: bool = False
            ) -> tuple[Calls[Job], Plan]:
    plan = Plan(StepEngine(store, Cancelled()), steps, work, last=last)
    calls: Calls[Job] = Calls(plan, plan.engine)
    calls.recovered.set()
    return calls, plan


async def test_a_call_is_driven_to_its_end_and_kept_so() -> None:
    store = MemoryStore()
    seen: list[str] = []
    calls, plan = _driver(store, ["a", "b"], _succeeds(seen))
    job = await _kept(store, Job("d1"))
    calls.drive(job)
    await calls.wait("d1", None)
    loaded = store.load("d1")
    assert loaded is not None and loaded.status == "succeeded" and loaded.ended is not None
    assert len(seen) == 2 and plan.ends == ["succeeded"] and plan.abandoned == []
    assert "d1" not in calls.live


async def test_a_failed_step_fails_the_call_with_its_text() -> None:
    store = MemoryStore()

    async def fails(step_id: str) -> StepEnd:
        return StepEnd("failed", None, "boom")

    calls, plan = _driver(store, ["a", "b"], fails)
    job = await _kept(store, Job("d2"))
    calls.drive(job)
    await calls.wait("d2", None)
    assert (job.status, job.error) == ("failed", "step a: failed")
    assert plan.abandoned == ["d2"] and list(job.rows) == [("a", WHOLE)]


async def test_cancel_and_deadline_end_the_call_and_its_running_steps() -> None:
    store = MemoryStore()
    started = asyncio.Event()
    calls, plan = _driver(store, ["a"], _hangs(started))
    job = await _kept(store, Job("d3"))
    calls.drive(job)
    await started.wait()
    assert await calls.cancel("d3", "asked to") is True
    assert (job.status, job.error) == ("cancelled", "asked to")
    assert job.rows[("a", WHOLE)].status == "cancelled"
    assert await calls.cancel("d3", "again") is False  # no longer driven here

    late = await _kept(store, Job("d4", deadline=0.0))
    calls.drive(late)
    await calls.wait("d4", None)
    assert (late.status, late.error) == ("timed_out", "past its deadline")
    assert plan.ends == ["cancelled", "timed_out"]


async def test_a_call_cancelled_before_its_driver_first_ran_ends_and_is_kept_so() -> None:
    store = MemoryStore()
    seen: list[str] = []
    calls, plan = _driver(store, ["a"], _succeeds(seen))
    job = await _kept(store, Job("d7"))
    calls.drive(job)  # (its driver not run yet: nothing awaited since)
    assert await calls.cancel("d7", "asked at once") is True
    loaded = store.load("d7")
    assert loaded is not None
    assert (loaded.status, loaded.error) == ("cancelled", "asked at once")
    assert seen == [] and plan.ends == ["cancelled"] and "d7" not in calls.live


async def test_a_stopping_process_leaves_the_call_running_and_a_later_one_resumes_it(
        ) -> None:
    store = MemoryStore()
    started = asyncio.Event()
    calls, _ = _driver(store, ["a", "b"], _hangs(started))
    calls.drive(await _kept(store, Job("d5")))
    await started.wait()
    await calls.close()
    loaded = store.load("d5")
    assert loaded is not None and loaded.status == "running"
    step_id = loaded.rows[("a", WHOLE)].task_id

    seen: list[str] = []
    later, plan = _driver(store, ["a", "b"], _succeeds(seen))
    (record,) = store.unfinished("job")
    later.drive(Job("d5", rows=record.rows))
    await later.wait("d5", None)
    assert seen[0] == step_id and len(seen) == 2  # a under its kept id, then b
    assert plan.ends == ["succeeded"]


async def test_a_store_that_fails_stops_the_driver_told_and_the_call_stays_running(
        ) -> None:
    store = FailingStore()
    seen: list[str] = []
    calls, plan = _driver(store, ["a"], _succeeds(seen))
    job = await _kept(store, Job("d6"))
    store.broken = True
    calls.drive(job)
    await calls.wait("d6", None)
    assert plan.stops == ["disk full; it is resumed at the next start"] and seen == []
    loaded = store.load("d6")
    assert loaded is not None and loaded.status == "running"
    assert "d6" not in calls.live


class CountingStore(MemoryStore):
    """Its writes in order: (what, the call's status or the rows' statuses)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, Any]] = []

    async def save_call(self, record: CallRecord) -> None:
        self.writes.append(("call", record.status))
        await super().save_call(record)

    async def save_steps(self, call_id: str, rows: list[StepRow]) -> None:
        self.writes.append(("steps", [(r.step, r.status) for r in rows]))
        await super().save_steps(call_id, rows)


async def test_a_last_steps_end_is_kept_with_the_calls_own_and_until_then_not_at_all(
        ) -> None:
    """(decision 1680) A store without one commit for both keeps the step's first."""
    store = CountingStore()
    seen: list[str] = []
    calls, plan = _driver(store, ["a", "b"], _succeeds(seen, {"n": 2}), last=True)
    told: list[tuple[str, str]] = []
    plan.engine.observe = lambda call, row: told.append((row.step, row.status))
    plan.after_last = asyncio.Event()
    job = await _kept(store, Job("e1"))
    store.writes.clear()
    calls.drive(job)
    while len(seen) < 2:
        await asyncio.sleep(0)
    await asyncio.sleep(0)  # (b's work has returned; its end is left to the call's)
    # neither kept nor in the call's rows: a kill now finds b running under its id
    assert store.writes == [("steps", [("a", "running")]), ("steps", [("a", "succeeded")]),
                            ("steps", [("b", "running")])]
    assert job.rows[("b", WHOLE)].status == "running" and told[-1] == ("b", "running")
    plan.after_last.set()
    await calls.wait("e1", None)
    assert store.writes[3:] == [("steps", [("b", "succeeded")]), ("call", "succeeded")]
    assert told[-1] == ("b", "succeeded") and plan.ends == ["succeeded"]
    loaded = store.load("e1")
    assert loaded is not None and loaded.rows[("b", WHOLE)].status == "succeeded"
    assert plan.engine.output(job, loaded.rows[("b", WHOLE)]) == {"n": 2}


async def test_a_call_that_ends_otherwise_after_its_last_step_keeps_that_steps_end_first(
        ) -> None:
    """Cancelled (or past its deadline) between its last step's end and its own: the step
    ended as its work did, kept before the call's running steps are abandoned."""
    store = CountingStore()
    calls, plan = _driver(store, ["a"], _succeeds([], "out"), last=True)
    plan.after_last = asyncio.Event()  # (never set: the call waits there)
    job = await _kept(store, Job("e2"))
    store.writes.clear()
    calls.drive(job)
    while len(store.writes) < 1:
        await asyncio.sleep(0)
    for _ in range(5):
        await asyncio.sleep(0)
    assert await calls.cancel("e2", "asked to") is True
    assert store.writes == [("steps", [("a", "running")]), ("steps", [("a", "succeeded")]),
                            ("call", "cancelled")]
    assert plan.abandoned == ["e2"] and job.rows[("a", WHOLE)].status == "succeeded"


async def test_a_stopping_process_forgets_an_end_left_for_the_call_and_resumes_the_step(
        ) -> None:
    store = CountingStore()
    seen: list[str] = []
    calls, plan = _driver(store, ["a"], _succeeds(seen, "out"), last=True)
    plan.after_last = asyncio.Event()
    calls.drive(await _kept(store, Job("e3")))
    while not seen:
        await asyncio.sleep(0)
    for _ in range(5):
        await asyncio.sleep(0)
    await calls.close()
    assert plan.engine._last == {}  # (nothing held for a call no longer driven)
    (record,) = store.unfinished("job")
    assert record.rows[("a", WHOLE)].status == "running"
    later, _ = _driver(store, ["a"], _succeeds(seen, "again"))
    resumed = Job("e3", rows=record.rows)
    later.drive(resumed)
    await later.wait("e3", None)
    assert seen == [seen[0], seen[0]] and resumed.status == "succeeded"  # under its kept id
