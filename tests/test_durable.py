"""Durable agent work (issue 39, docs/durable.md): a retried task's tool calls are
answered from its step journal, `ctx.step` results are given back, a diverging retry goes
live, a task checkpoint comes back, the byte budget refuses, retention deletes steps.

Real processes throughout: the daemon in this loop (its SQLite journal), an SDK worker
(tests/durable_agent.py) that SIGKILLs itself after call k, and a stdio MCP server that
counts its calls in a file (tests/servers/counting_mcp.py)."""

from __future__ import annotations

import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc
from corral.taskoptions import TaskOptions

from .daemon_harness import PY, counting_fleet, in_process

HERE = Path(__file__).parent


def fleet(tmp: Path, agent_extra: str = "") -> str:
    return counting_fleet(tmp, "durable", "durable_agent.py", agent_extra)


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def run_task(d: Any, task_input: dict[str, Any]) -> Any:
    return await d.sup.tasks.run("durable", task_input, TaskOptions(timeout=60))


@pytest.mark.parametrize("k", [1, 5, 9])
async def test_a_retry_after_a_worker_kill_makes_no_tool_call_twice(tmp_path: Path,
                                                                     k: int) -> None:
    async with in_process(tmp_path, fleet(tmp_path)) as d:
        res = await run_task(d, {"calls": 10, "stop_after": k, "how": "die",
                                 "marker": str(tmp_path / "marker")})
        assert res.status == "succeeded", res
        assert res.output["results"] == [f"bumped {i}" for i in range(1, 11)]
        assert lines(tmp_path / "server-count") == [str(i) for i in range(1, 11)]
        first, second = res.attempts
        assert first.outcome == "lost" and second.outcome == "succeeded"
        assert second.replayed == k and second.diverged is msgspec_unset()
        info = await d.sup.tasks.info(res.task_id)
        assert info.attempts[1].replayed == k
        assert d.sup.tasks.stats()["steps"]["replayed"] == k


def msgspec_unset() -> Any:
    import msgspec
    return msgspec.UNSET


async def test_named_steps_are_given_back_to_a_retry(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    async with in_process(tmp_path, fleet(tmp_path)) as d:
        res = await run_task(d, {"calls": 10, "stop_after": 4, "how": "die", "named": True,
                                 "counter": str(counter), "marker": str(tmp_path / "m")})
        assert res.status == "succeeded", res
        assert res.output["results"] == [f"counted {i}" for i in range(1, 11)]
        assert lines(counter) == [str(i) for i in range(1, 11)]
        assert res.attempts[1].replayed == 4


async def test_a_diverging_retry_is_marked_and_finishes_live(tmp_path: Path) -> None:
    from corral.supervisor.tasks.steps import StepsDiverged

    # its one retry the loss's (retry_lost = 1): the retry is its last attempt
    async with in_process(tmp_path, fleet(tmp_path).replace(
            "retries = 1", "retries = 0\nretry_lost = 1")) as d:
        seen: list[StepsDiverged] = []
        d.sup.stream.subscribe(seen.append, StepsDiverged)
        res = await run_task(d, {"calls": 10, "stop_after": 5, "how": "die",
                                 "diverge_at": 4, "marker": str(tmp_path / "m")})
        assert res.status == "succeeded", res
        assert res.output["results"] == [*(f"bumped {i}" for i in range(1, 4)),
                                         *(f"bumped {i * 100}" for i in range(4, 11))]
        # attempt 1 made calls 1-5; the retry replayed 1-3 and made 4-10 live
        assert lines(tmp_path / "server-count") == [
            *(str(i) for i in range(1, 6)), *(str(i * 100) for i in range(4, 11))]
        second = res.attempts[1]
        assert (second.replayed, second.diverged) == (3, 4)
        assert [(e.attempt, e.seq, e.why) for e in seen] == [
            (2, 4, "call 4 to counting__bump has other arguments")]
        assert d.sup.tasks.stats()["steps"]["diverged"] == 1
        # the obsolete steps (4 and 5) left the journal; the retry, the task's last
        # attempt (no retry left), journaled none of its own
        await d.sup.tasks.steps.journal.stored()
        db = sqlite3.connect(tmp_path / "state" / "corral.db")
        rows = db.execute("SELECT seq, attempt FROM steps WHERE task_id = ? AND seq > 0 "
                          "ORDER BY seq", (res.task_id,)).fetchall()
        assert rows == [(1, 1), (2, 1), (3, 1)]


async def test_a_task_checkpoint_is_given_back_on_retry(tmp_path: Path) -> None:
    async with in_process(tmp_path, fleet(tmp_path)) as d:
        res = await run_task(d, {"calls": 3, "stop_after": 2, "how": "die",
                                 "checkpoint": True, "marker": str(tmp_path / "m")})
        assert res.status == "succeeded", res
        assert res.output["attempt"] == 2
        assert res.output["resumed"] is True
        assert res.output["task_state"] == {"done": 2}
        # a first attempt is not resumed
        res = await run_task(d, {"calls": 1})
        assert (res.output["resumed"], res.output["task_state"]) == (False, None)


async def test_past_max_step_bytes_a_tool_call_is_refused(tmp_path: Path) -> None:
    async with in_process(tmp_path, fleet(tmp_path, "max_step_bytes = 120")) as d:
        res = await d.sup.tasks.run("durable", {"calls": 3}, TaskOptions(timeout=30))
        assert res.status == "failed"
        # each result is 63 bytes of JSON: the third call finds the budget spent
        assert res.error.code == jsonrpc.TASK_FAILED
        assert (f"step budget exceeded: task {res.task_id} has journaled 126 bytes of "
                "step results (max_step_bytes 120); nothing more of it can be kept for a "
                "retry") in res.error.message
        assert lines(tmp_path / "server-count") == ["1", "2"]


async def test_a_task_with_no_retry_left_journals_nothing(tmp_path: Path) -> None:
    # no retries, and at most once (retry_lost = 0): no attempt could follow this one
    async with in_process(tmp_path, fleet(tmp_path).replace(
            "retries = 1", "retries = 0\nretry_lost = 0")) as d:
        res = await d.sup.tasks.run("durable", {"calls": 3}, TaskOptions(timeout=30))
        assert res.status == "succeeded"
        assert d.sup.tasks.stats()["steps"]["journaled"] == 0


async def test_replay_tools_are_made_again(tmp_path: Path) -> None:
    extra = 'replay_tools = ["counting__bump"]'
    async with in_process(tmp_path, fleet(tmp_path, extra)) as d:
        res = await run_task(d, {"calls": 4, "stop_after": 2, "how": "die",
                                 "marker": str(tmp_path / "m")})
        assert res.status == "succeeded"
        assert lines(tmp_path / "server-count") == ["1", "2", "1", "2", "3", "4"]
        assert res.attempts[1].replayed is msgspec_unset()


async def pruned(d: Any) -> None:
    """A pass of the task journal's pruning, over (the writer's next job is done), and
    no error of it (the journal would be refusing)."""
    d.sup.tasks.journal.start_pruning()
    await d.store.thread.commit([])
    assert d.sup.tasks.journal.refusing is None


async def test_retention_deletes_steps_and_their_results(tmp_path: Path) -> None:
    async with in_process(tmp_path, fleet(tmp_path),
                          supervisor="journal_max_tasks = 1") as d:
        ids = []
        for _ in range(3):
            res = await d.sup.tasks.run("durable", {"calls": 2}, TaskOptions(timeout=30))
            assert res.status == "succeeded"
            ids.append(res.task_id)
        journal = d.sup.tasks.journal
        await journal.committed()
        await d.sup.tasks.steps.journal.stored()  # out of the step log
        db = sqlite3.connect(tmp_path / "state" / "corral.db")
        assert db.execute("SELECT count(*) FROM steps").fetchone() == (6,)
        # results stored once by content: "bumped 1" and "bumped 2"
        assert db.execute("SELECT count(*) FROM step_results").fetchone() == (2,)
        await pruned(d)
        assert db.execute("SELECT DISTINCT task_id FROM steps").fetchall() == [(ids[-1],)]
        assert db.execute("SELECT count(*) FROM step_results").fetchone() == (2,)
        # the last task pruned too: nothing of its steps is left
        db.execute("UPDATE tasks SET finished = 1 WHERE id = ?", (ids[-1],))
        db.commit()
        journal.max_age = 60
        await pruned(d)
        assert db.execute("SELECT count(*) FROM steps").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM step_results").fetchone() == (0,)


async def test_a_lone_step_is_committed_at_once_and_one_turns_steps_together(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The database's commit path of a tool call's step (decision 221; a result past
    LOG_MAX with journal_sync "normal", every step with "full"): a lone step is committed
    on the loop as it is put (committed() has nothing to wait for), the steps of one loop
    turn after it are one batch at the turn's end, and the thread's waits for a lock are
    its own again after the loop's commits."""
    import asyncio

    from corral.daemon import steps as steps_module
    from corral.daemon import storeschema
    from corral.daemon.steps import StepsDB

    monkeypatch.setattr(steps_module, "LOG_MAX", 0)  # (these results are small)
    # a loaded host's disk can make the first commit on the loop slow, which sends the
    # next ones to the thread for a while (HERE_SLOW, tested on its own): not this test's
    from corral.daemon import storewriter
    monkeypatch.setattr(storewriter, "HERE_SLOW", 3600.0)
    from corral.daemon.storeschema import open_database
    from corral.daemon.storewriter import WriterThread
    from corral.supervisor.tasks.stepjournal import Step

    db = tmp_path / "corral.db"
    open_database(db).close()
    writer = WriterThread(db)
    steps = StepsDB(db, writer)
    try:
        steps.put(Step("t", 1, "a__b", 1, b"h", b'{"n":1}'))
        assert (steps.rows, writer.here, writer.handed) == (1, 1, 0)
        steps.put(Step("t", 2, "a__b", 1, b"h", b'{"n":2}'))
        steps.put(Step("t", 3, "a__b", 1, b"h", b'{"n":3}'))
        assert steps.rows == 1  # the same turn: they wait for its end, together
        await steps.committed()
        assert (steps.rows, writer.here, writer.handed) == (3, 2, 0)
        await asyncio.sleep(0)
        steps.put(Step("t", 4, "a__b", 1, b"h", b'{"n":4}'))  # a new turn: at once
        assert (steps.rows, writer.here) == (4, 3)
        ms: list[int] = []  # read by a job on the thread
        await writer.commit([lambda c: ms.extend(c.execute("PRAGMA busy_timeout").fetchone())])
        assert ms == [storeschema.BUSY_TIMEOUT_MS]
        assert [s.seq for s in await steps.history("t")] == [1, 2, 3, 4]
    finally:
        await steps.close()
        await writer.close()


async def test_a_loop_commit_slow_with_no_wait_of_its_own_keeps_the_loop_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job on the loop that took past HERE_SLOW without sleeping in it (a busy host's
    preemption looks so: the loop thread was off its core, not waiting for the disk)
    does not send the next ones to the thread; one that slept in it does (decision 221;
    tests/test_writer_here.py has the slow disk's pause itself)."""
    import asyncio
    import time

    from corral.daemon import storewriter
    from corral.daemon.storeschema import open_database
    from corral.daemon.storewriter import WriterThread

    monkeypatch.setattr(storewriter, "HERE_SLOW", 0.01)
    db = tmp_path / "corral.db"
    open_database(db).close()
    writer = WriterThread(db)
    try:
        def spin(_db: sqlite3.Connection) -> None:
            end = time.monotonic() + 0.03
            while time.monotonic() < end:
                pass

        def sleep(_db: sqlite3.Connection) -> None:
            time.sleep(0.03)

        assert writer.run_on_loop(spin) == (True, None)
        # that commit woke the checkpointer's thread: once it has checkpointed, it rests
        # (checkpointer.MIN_GAP), and no other thread takes the GIL from the next spin
        # (a wait for the GIL is a sleep of the loop's thread, as a disk's would be)
        deadline = time.monotonic() + 10
        while writer.checkpointer.checkpoints < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        assert writer.run_on_loop(spin) == (True, None)  # still on the loop
        assert writer.run_on_loop(sleep) == (True, None)
        assert writer.run_on_loop(spin) == (False, None)  # paused: the thread's now
        assert writer.here == 3
    finally:
        await writer.close()


async def test_a_step_is_one_write_to_the_log_and_reaches_the_database_in_batches(
        tmp_path: Path) -> None:
    """journal_sync "normal" (decision 294): a step is committed once its record is
    written to the step log, nothing committed to SQLite on its way; the log's records
    go to the database as one batch (their file removed once they are committed) when
    the batch is due, a task ends, or its history is read."""
    from corral.daemon.steplog import log_dir
    from corral.daemon.steps import StepsDB
    from corral.daemon.storeschema import open_database
    from corral.daemon.storewriter import WriterThread
    from corral.supervisor.tasks.stepjournal import Step

    db = tmp_path / "corral.db"
    open_database(db).close()
    writer = WriterThread(db)
    steps = StepsDB(db, writer)
    try:
        for seq in (1, 2, 3):
            # durable as put: its caller is answered with no wait (TaskSteps.put)
            assert steps.put(Step("t", seq, "a__b", 1, b"h", b'{"n":%d}' % seq)) is True
            await steps.committed("t")
        assert (steps.rows, writer.here, writer.handed) == (0, 0, 0)
        (log,) = log_dir(db).iterdir()
        assert log.stat().st_size > 0
        steps.ended("t")
        await steps.stored()
        assert steps.rows == 3 and list(log_dir(db).iterdir()) == []
        steps.put(Step("t", 4, "a__b", 1, b"h", b'{"n":4}'))
        assert [s.seq for s in await steps.history("t")] == [1, 2, 3, 4]
        assert list(log_dir(db).iterdir()) == []
    finally:
        await steps.close()
        await writer.close()


async def test_a_logged_step_behind_a_write_to_the_database_waits_for_its_commit(
        tmp_path: Path) -> None:
    """A step in the log is durable as it is put only where nothing put before it still
    waits for the database: behind a diverged attempt's drop, its put says so (False),
    its caller waits for the commit, and the next one is durable as put again."""
    from corral.daemon.steps import StepsDB
    from corral.daemon.storeschema import open_database
    from corral.daemon.storewriter import WriterThread
    from corral.supervisor.tasks.stepjournal import Step

    db = tmp_path / "corral.db"
    open_database(db).close()
    writer = WriterThread(db)
    steps = StepsDB(db, writer)
    try:
        assert steps.put(Step("t", 1, "a__b", 1, b"h", b'{"n":1}')) is True
        steps.drop_from("t", 1)
        assert steps.put(Step("t", 1, "a__c", 2, b"h", b'{"n":2}')) is False
        await steps.committed("t")
        assert steps.put(Step("t", 2, "a__c", 2, b"h", b'{"n":3}')) is True
        assert [(s.seq, s.name) for s in await steps.history("t")] == [
            (1, "a__c"), (2, "a__c")]
    finally:
        await steps.close()
        await writer.close()


async def test_a_killed_daemons_step_log_is_read_back_and_a_cut_record_dropped(
        tmp_path: Path) -> None:
    """The log files a killed daemon left go into the database at the next start, in
    the order written (a named step written again: the last one); a record cut short
    (its write never returned, so it was never answered) is dropped, and what follows."""
    import asyncio
    import os
    import signal

    from corral.daemon.steplog import log_dir
    from corral.daemon.steps import StepsDB
    from corral.daemon.storeschema import open_database
    from corral.daemon.storewriter import WriterThread
    from corral.supervisor.tasks.stepjournal import NAMED_SEQ

    from .conftest import ROOT

    db = tmp_path / "corral.db"
    open_database(db).close()
    # a process that puts the steps and is killed: nothing flushed, nothing closed
    killed = textwrap.dedent(f"""
        import asyncio, os, signal
        from pathlib import Path
        from corral.daemon.steps import StepsDB
        from corral.daemon.storewriter import WriterThread
        from corral.supervisor.tasks.stepjournal import NAMED_SEQ, Step

        async def main() -> None:
            db = Path({str(db)!r})
            steps = StepsDB(db, WriterThread(db))
            steps.put(Step("t", 1, "a__b", 1, b"h", b'{{"n":1}}'))
            steps.put(Step("t", NAMED_SEQ, "model", 1, b"", b'"first"'))
            steps.put(Step("t", NAMED_SEQ, "model", 1, b"", b'"second"'))
            steps.put(Step("t", 2, "a__b", 1, b"h", b'{{"n":2}}'))
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """)
    proc = await asyncio.create_subprocess_exec(PY, "-c", killed, env={
        **os.environ, "PYTHONPATH": str(ROOT)})
    assert await asyncio.wait_for(proc.wait(), 30) == -signal.SIGKILL
    (log,) = log_dir(db).iterdir()
    log.write_bytes(log.read_bytes()[:-3])  # the last record cut short

    writer = WriterThread(db)
    again = StepsDB(db, writer)
    try:
        assert await asyncio.to_thread(again.recover) == 3
        assert list(log_dir(db).iterdir()) == []
        assert [(s.seq, s.name, s.body) for s in await again.history("t")] == [
            (NAMED_SEQ, "model", b'"second"'), (1, "a__b", b'{"n":1}')]
    finally:
        await again.close()
        await writer.close()


async def test_while_the_database_fails_steps_go_its_way_and_the_log_is_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch the database refuses keeps its log file (read back at the next start, or
    written when the database takes it again); while it fails, a step goes the
    database's way and is refused as it refuses it, so no batch piles up behind."""
    import sqlite3

    from corral.daemon import storewriter
    from corral.daemon.steplog import log_dir
    from corral.daemon.steps import StepsDB
    from corral.daemon.storeschema import StoreError, open_database
    from corral.daemon.storewriter import WriterThread
    from corral.supervisor.tasks.stepjournal import Step

    monkeypatch.setattr(storewriter, "RETRY_EVERY", 0.1)  # (the database's next try, below)
    db = tmp_path / "corral.db"
    open_database(db).close()
    writer = WriterThread(db)
    errors: list[str] = []
    steps = StepsDB(db, writer, on_error=errors.append)
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("ALTER TABLE steps RENAME TO steps_away")
        steps.put(Step("t", 1, "a__b", 1, b"h", b'{"n":1}'))
        await steps.committed("t")  # in the log: committed
        with pytest.raises(StoreError):
            await steps.stored()
        assert len(list(log_dir(db).iterdir())) == 1
        assert errors and "the step log keeps the others" in errors[0]
        # the database's way: not durable until its commit, which its caller waits for
        assert steps.put(Step("t", 2, "a__b", 1, b"h", b'{"n":2}')) is False
        with pytest.raises(StoreError, match="no such table: steps"):
            await steps.committed("t")
        assert len(list(log_dir(db).iterdir())) == 1  # no second file
        other.execute("ALTER TABLE steps_away RENAME TO steps")
        await steps.stored()  # at its next try
        assert [s.seq for s in await steps.history("t")] == [1, 2]
        assert list(log_dir(db).iterdir()) == []
    finally:
        other.close()
        await steps.close()
        await writer.close()


async def test_a_journal_written_again_ends_its_outage_and_the_next_is_told_anew(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the database takes the steps again their outage is over: a step goes to the
    step log again (not the database's way), and a second outage is told as the first
    was, not kept silent as a failure that never ended."""
    import sqlite3

    from corral.daemon import storewriter
    from corral.daemon.steplog import log_dir
    from corral.daemon.steps import StepsDB
    from corral.daemon.storeschema import StoreError, open_database
    from corral.daemon.storewriter import WriterThread
    from corral.supervisor.tasks.stepjournal import Step

    monkeypatch.setattr(storewriter, "RETRY_EVERY", 0.1)
    db = tmp_path / "corral.db"
    open_database(db).close()
    writer = WriterThread(db)
    errors: list[str] = []
    steps = StepsDB(db, writer, on_error=errors.append)
    other = sqlite3.connect(db, isolation_level=None)
    try:
        for n in (1, 2):  # two outages, each ended by the database taking the steps again
            other.execute("ALTER TABLE steps RENAME TO steps_away")
            steps.put(Step("t", n, "a__b", 1, b"h", b'{"n":%d}' % n))
            await steps.committed("t")  # in the step log, as at the first outage
            with pytest.raises(StoreError):
                await steps.stored()
            assert len(errors) == n and "the step log keeps the others" in errors[-1]
            other.execute("ALTER TABLE steps_away RENAME TO steps")
            await steps.stored()
        assert [s.seq for s in await steps.history("t")] == [1, 2]
        assert list(log_dir(db).iterdir()) == []
    finally:
        other.close()
        await steps.close()
        await writer.close()


async def test_a_retrys_replayed_calls_and_steps_are_spans_marked_replayed(
        tmp_path: Path) -> None:
    """Issue 41: with [tracing], each call and named step a retry is answered from the
    journal is a span under that attempt, marked `corral.step.replayed`, where its live
    call was a client span of the first attempt."""
    from corral import methods as m
    from corral.daemon.caller import Caller

    operator = Caller(via="socket")
    async with in_process(tmp_path, fleet(tmp_path),
                          "[tracing]\nexport_interval = 0.05\n") as d:
        res = await run_task(d, {"calls": 4, "stop_after": 3, "how": "die",
                                 "marker": str(tmp_path / "marker")})
        assert res.status == "succeeded", res
        named = await run_task(d, {"calls": 2, "stop_after": 2, "how": "die", "named": True,
                                   "counter": str(tmp_path / "named"),
                                   "marker": str(tmp_path / "marker2")})
        assert named.status == "succeeded", named
        view = await d.dispatcher.call(operator, "traces.get", {"task_id": res.task_id})
        assert isinstance(view, m.TraceView)
        attempts = {s.attributes["corral.attempt"]: s for s in view.spans
                    if s.name == "task/run durable"}
        calls = [s for s in view.spans if s.name == "tools/call bump"]
        replayed = [s for s in calls if s.attributes.get("corral.step.replayed")]
        live = [s for s in calls if not s.attributes.get("corral.step.replayed")]
        # the first attempt's three live calls; the retry's three replayed, one live
        assert sorted(s.attributes["corral.attempt"] for s in live) == [1, 1, 1, 2]
        assert [s.attributes["corral.attempt"] for s in replayed] == [2, 2, 2]
        for s in replayed:
            assert (s.parent_id, s.kind, s.end - s.start) == (attempts[2].span_id,
                                                             "client", 0)
            assert (s.attributes["corral.mcp.server"], s.attributes["corral.task.id"]) == (
                "counting", res.task_id)
        view = await d.dispatcher.call(operator, "traces.get", {"task_id": named.task_id})
        steps = [(s.name, s.attributes["corral.attempt"]) for s in view.spans
                 if s.attributes.get("corral.step.replayed")]
        assert steps == [("step s1", 2), ("step s2", 2)]


async def test_a_named_step_asked_for_again_is_one_replay_and_corrals_own_are_refused(
        tmp_path: Path) -> None:
    """Attacker's pass: a retry that asks for the same named step a thousand times is
    given it each time, counted and traced once (a worker cannot fill the span buffer
    through `step/get`); corral's own step names are no worker's to read."""
    from corral.daemon.caller import Caller

    fleet_text = textwrap.dedent(f"""
        [agents.asks]
        command = ["{PY}", "{HERE}/replaying_agent.py"]
        retries = 1
        backoff_initial = 0.05
    """)
    async with in_process(tmp_path, fleet_text, "[tracing]\nexport_interval = 0.05\n") as d:
        res = await d.sup.tasks.run("asks", {"asks": 1000}, TaskOptions(timeout=60))
        assert res.status == "succeeded", res
        assert res.output == {"got": [{"found": True, "result": 42}] * 1000, "own": {
            "code": jsonrpc.INVALID_PARAMS,
            "message": "step/get: the step name 'corral/lineage' is reserved: names "
                       "beginning spawn: or corral/ are corral's own steps"}}
        assert res.attempts[1].replayed == 1
        view = await d.dispatcher.call(Caller(via="socket"), "traces.get",
                                       {"task_id": res.task_id})
        assert [s.name for s in view.spans if s.attributes.get("corral.step.replayed")] == [
            "step s"]


def test_a_checkpoint_a_killed_daemon_left_in_its_step_log_is_the_one_its_retry_is_given(
        tmp_path: Path) -> None:
    """A checkpoint answered is one write() to the step log (journal_sync "normal"); a
    daemon kill -9ed before that batch reached the database leaves it only there. The next
    daemon reads the log back before it takes its tasks back, each with its checkpoint, so
    the retry is given the last one answered. (A real kill catches it there only within
    the batch's 50 ms: tests/contract/test_steps.py; here the log holds a checkpoint newer
    than the database's by construction, as that kill leaves it.)"""
    from corral.cli.client import Client
    from corral.daemon.steplog import StepLog, log_dir
    from corral.supervisor.tasks.stepjournal import CHECKPOINT_SEQ, Step

    from .cluster.harness import kill9
    from .daemon_harness import Daemon
    from .test_daemon_cli import wait_until

    marker = tmp_path / "m"
    d = Daemon(tmp_path, fleet(tmp_path))
    try:
        d.start()
        with Client(d.sock) as c:
            task_id = c.call("tasks.submit", {"agent": "durable", "input": {
                "calls": 3, "stop_after": 2, "how": "hang", "checkpoint": True,
                "marker": str(marker)}})["task_id"]
        wait_until(marker.exists, 30, "the first attempt past its second checkpoint")
        kill9(d)
        log = StepLog(log_dir(d.state / "corral.db"))
        assert log.append(Step(task_id, CHECKPOINT_SEQ, "", 1, b"", b'{"done":99}'))
        log.rotate()
        d.start()
        with Client(d.sock) as c:
            done = c.call("tasks.get", {"task_id": task_id, "wait": True})
    finally:
        d.close()
    assert done["status"] == "succeeded", done
    assert [a["outcome"] for a in done["attempts"]] == ["lost", "succeeded"]
    assert (done["output"]["resumed"], done["output"]["task_state"]) == (True, {"done": 99})
