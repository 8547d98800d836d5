"""What a durable call's commit covers (decision 1610): the records and step rows of every
call saved in one turn are one transaction; a commit that fails is told to each saver and
never written after; a step's recorded task is looked for without a commit or a thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from corral.daemon import storeschema
from corral.daemon.calljournal import CallJournal
from corral.daemon.sqlwrites import Write, statement
from corral.daemon.storeschema import StoreError
from corral.daemon.storewriter import WriterThread
from corral.daemon.taskjournal import TaskJournalDB
from corral.supervisor.durable import CallRecord, StepEnd, StepRow
from corral.supervisor.durable.engine import StepEngine
from corral.supervisor.tasks import Task
from corral.supervisor.workflows import WorkflowSpec

from .test_store_faults import lockable_store


def record(call_id: str, status: str = "running") -> CallRecord:
    return CallRecord(call_id, "workflow", "w", b"{}", {"n": call_id}, status, 1.0)


async def test_the_calls_saved_in_one_turn_are_one_transaction(tmp_path: Path) -> None:
    async with lockable_store(tmp_path / "corral.db", [], []) as (store, _, _holder):
        assert store.thread is not None
        calls = CallJournal(store)
        jobs = store.thread.here + store.thread.handed
        await asyncio.gather(*(calls.save_call(record(f"c{i}")) for i in range(8)),
                             *(calls.save_steps(f"c{i}", [StepRow("s", -1, "running", f"t{i}")])
                               for i in range(8)))
        assert store.thread.here + store.thread.handed == jobs + 1
        assert [(r.call_id, r.input, r.rows) for r in calls.unfinished("workflow")] == [
            (f"c{i}", {"n": f"c{i}"}, {("s", -1): StepRow("s", -1, "running", f"t{i}")})
            for i in range(8)]
        # a record saved again in the same turn as its step's end: both in one write
        await asyncio.gather(calls.save_steps("c0", [StepRow("s", -1, "succeeded", "t0",
                                                             output={"x": 1})]),
                             calls.save_call(record("c0", "succeeded")))
        assert store.thread.here + store.thread.handed == jobs + 2
        kept = calls.load("c0")
        assert kept is not None and kept.status == "succeeded"
        assert (kept.rows[("s", -1)].status, calls.output("c0", "s", -1)) == ("succeeded",
                                                                              {"x": 1})


async def test_a_failed_commit_is_told_to_each_saver_and_never_written_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storeschema, "BUSY_TIMEOUT_MS", 100)  # a lock fails a commit fast
    db = tmp_path / "corral.db"
    errors: list[str] = []
    async with lockable_store(db, errors, errors) as (store, _, holder):
        calls = CallJournal(store)
        holder.execute("BEGIN EXCLUSIVE")  # every commit fails now
        told = await asyncio.gather(
            calls.save_call(record("a")), calls.save_steps("a", [StepRow("s", -1, "running",
                                                                         "t")]),
            calls.save_call(record("b")), return_exceptions=True)
        assert [str(e) for e in told] == [
            f"state database {db} cannot be written (database is locked)"] * 3
        assert all(isinstance(e, StoreError) for e in told)
        holder.execute("ROLLBACK")  # written again: what was refused is not
        await calls.save_call(record("c"))
        assert [r.call_id for r in calls.unfinished("workflow")] == ["c"]
        assert (calls.load("a"), calls.load("b")) == (None, None)
        assert errors == []


async def test_a_recorded_task_is_known_waiting_committed_and_after_a_restart(
        tmp_path: Path) -> None:
    """`knows`: what `outcome` asks before it submits a step's recorded task (a task it
    does not know is submitted under the recorded id; one it knows is waited for)."""
    db = tmp_path / "tasks.db"
    storeschema.open_database(db).close()
    journal = TaskJournalDB(db)
    task = Task("a", msgspec.Raw(b'{"x": 1}'), 0, 30.0, 0, 1, task_id="t-1")
    assert not journal.knows("t-1")
    journal.write(task)  # young: its row waits, nobody waiting for it
    assert journal.knows("t-1")
    await journal.committed()
    assert journal.knows("t-1") and not journal.knows("t-2")
    await journal.close()
    again = TaskJournalDB(db)  # the next daemon: from the table alone
    try:
        assert again.knows("t-1") and not again.knows("t-2")
    finally:
        await again.close()


async def test_a_calls_end_and_its_last_steps_are_one_commit(tmp_path: Path) -> None:
    """(decision 1680) StepEngine.keep_end on the state database: one transaction."""
    async with lockable_store(tmp_path / "corral.db", [], []) as (store, _, _holder):
        assert store.thread is not None
        calls = CallJournal(store)
        engine = StepEngine(calls, Uncancelled())
        call = Kept("k1")
        await calls.save_call(call.record())

        async def work(step_id: str) -> StepEnd:
            return StepEnd("succeeded", {"x": 1})

        jobs = store.thread.here + store.thread.handed
        row = await engine.step(call, ("s", -1), work, last=True)
        assert store.thread.here + store.thread.handed == jobs + 1  # its row, alone
        before = calls.load("k1")
        assert before is not None and before.rows[("s", -1)].status == "running"
        call.status = "succeeded"
        await engine.keep_end(call)
        assert store.thread.here + store.thread.handed == jobs + 2
        kept = calls.load("k1")
        assert kept is not None and kept.status == "succeeded"
        assert (kept.rows[("s", -1)].status, kept.rows[("s", -1)].task_id) == (
            "succeeded", row.task_id)
        assert calls.output("k1", "s", -1) == {"x": 1}
        assert call.rows[("s", -1)].status == "succeeded"


class Uncancelled:
    def cancel_task(self, task_id: str) -> None:
        raise AssertionError(task_id)


class Kept:
    """A call of the tests' own kind, kept by the engine."""

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.status = "running"
        self.error: str | None = None
        self.ended: float | None = None
        self.deadline: float | None = None
        self.tenant: str | None = None
        self.rows: dict[tuple[str, int], StepRow] = {}

    def record(self) -> CallRecord:
        return record(self.call_id, self.status)


@contextlib.asynccontextmanager
async def held_writer(path: Path) -> AsyncIterator[tuple[WriterThread, list[str],
                                                         threading.Event]]:
    """A writer thread over a fresh database with a table `t` (unique `n`), the
    statements its connection ends transactions with, and a gate: a job that waits for it
    holds the thread busy, so what is queued meanwhile is queued together."""
    storeschema.open_database(path).close()
    writer = WriterThread(path, sync="full")
    ends: list[str] = []
    try:
        await writer.commit([statement("CREATE TABLE t (n INTEGER UNIQUE)")])
        writer._db.set_trace_callback(
            lambda sql: ends.append(sql) if sql in ("COMMIT", "ROLLBACK") else None)
        gate = threading.Event()
        yield writer, ends, gate
    finally:
        gate.set()
        await writer.close()


def insert(n: int) -> Write:
    return statement("INSERT INTO t (n) VALUES (?)", (n,))


async def test_commits_queued_while_the_writer_is_busy_share_one_transaction(
        tmp_path: Path) -> None:
    async with held_writer(tmp_path / "corral.db") as (writer, ends, gate):
        writer.run(lambda db: gate.wait(30))  # busy (a fsync, say)
        commits = [asyncio.ensure_future(writer.commit([insert(n)])) for n in range(5)]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*commits)
        assert ends == ["COMMIT"]  # the five in one
        assert writer._db.rows("SELECT n FROM t ORDER BY rowid") == [(n,) for n in range(5)]


async def test_a_failing_commit_in_a_shared_one_is_told_alone_and_the_order_is_kept(
        tmp_path: Path) -> None:
    """A job of its own transaction among them (a pruning) runs where it was queued;
    a commit that fails in the shared transaction fails alone, the others written."""
    async with held_writer(tmp_path / "corral.db") as (writer, ends, gate):
        writer.run(lambda db: gate.wait(30))
        first = [asyncio.ensure_future(writer.commit([insert(n)])) for n in (1, 1, 2)]
        await asyncio.sleep(0)  # (each queued as its task first runs)
        seen: list[list[tuple[int]]] = []
        writer.run(lambda db: seen.append(db.execute("SELECT n FROM t").fetchall()))
        after = asyncio.ensure_future(writer.commit([insert(3)]))
        await asyncio.sleep(0)
        gate.set()
        told = await asyncio.gather(*first, after, return_exceptions=True)
        assert [None if r is None else str(r) for r in told] == [
            None, f"state database {writer.path} cannot be written (UNIQUE constraint "
                  "failed: t.n)", None, None]
        assert isinstance(told[1], StoreError)
        # the three together, rolled back, each then alone; the fourth after the read
        assert ends == ["ROLLBACK", "COMMIT", "ROLLBACK", "COMMIT", "COMMIT"]
        assert seen == [[(1,), (2,)]]
        assert writer._db.rows("SELECT n FROM t ORDER BY rowid") == [(1,), (2,), (3,)]


def test_a_workflow_is_compiled_once_per_change_and_its_agents_checked_at_each_start(
        tmp_path: Path) -> None:
    """A run's start takes its workflow as compiled for every run (Catalog.whole) and
    checks its agents as compiling with them would (check_agents): the same refusal,
    for the first step whose agent is not known."""
    from corral.daemon.store import StateStore
    from corral.daemon.workflows.catalog import Catalog
    from corral.supervisor.workflows import WorkflowError, compile_workflow
    from corral.supervisor.workflows.plan import check_agents

    two = msgspec.convert({"steps": [{"name": "a", "agent": "x"}, {"name": "b", "agent": "y"},
                                     {"name": "c", "workflow": "one"}]}, WorkflowSpec)
    one = msgspec.convert({"steps": [{"name": "s", "agent": "z"}]}, WorkflowSpec)
    store = StateStore(tmp_path / "corral.db")
    try:
        catalog = Catalog(store)
        catalog.configure({"two": two, "one": one})
        wf = catalog.whole("two")
        assert wf is not None and catalog.whole("two") is wf and catalog.workflow("two") is wf
        assert wf.agents == ["x", "y", "z"]
        check_agents(wf, {"x", "y"}.__contains__)  # (z is the nested one's: its start's)
        for known in ({"y"}, {"x"}, set()):
            with pytest.raises(WorkflowError) as alone:
                check_agents(wf, known.__contains__)
            with pytest.raises(WorkflowError) as whole:
                compile_workflow("two", two, known.__contains__, {"one": one})
            assert str(alone.value) == str(whole.value) == (
                f"workflow two, step {'a' if 'x' not in known else 'b'}: no such agent: "
                f"{'x' if 'x' not in known else 'y'}")
        catalog.configure({"two": two})  # a reload: its nested workflow gone
        assert catalog.whole("two") is None and catalog.whole("nope") is None
        assert catalog.workflow("two").agents == ["x", "y"]  # (said when it is run)
    finally:
        store.close()
