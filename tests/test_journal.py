"""The task journal: tasks survive a daemon crash, with every story finished; waiting
clients get their outcome across a restart; finished tasks stay cheap in memory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import msgspec

from corral.daemon.storeschema import open_database
from corral.daemon.taskjournal import YOUNG_FOR, YOUNG_SLACK, TaskJournalDB
from corral.supervisor import Supervisor
from corral.supervisor.tasks import Output, Task

from .conftest import EXAMPLES, PY, ROOT, agent, all_ready
from .daemon_harness import Daemon, corral_popen, in_process, shared_tmpdir
from .test_daemon_cli import wait_until
from .test_gateway_stdio import wait_until_async


def worker(name: str, extra: str = "") -> str:
    return (f'[agents.{name}]\ncommand = ["{PY}", "{EXAMPLES}/misbehave.py"]\n'
            f'env = {{ PYTHONPATH = "{ROOT}" }}\nbackoff_initial = 0.05\nstop_timeout = 2.0\n'
            f'{extra}\n')


def kill_daemon_and_workers(d: Daemon) -> None:
    """SIGKILL the daemon, then its orphaned workers by pid (their containment is another
    test's subject)."""
    pids = [a["pid"] for a in d.json("status")["agents"] if a["pid"]]
    assert d.proc is not None
    d.proc.kill()
    d.proc.wait()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_after_a_daemon_crash_every_accepted_task_finishes_its_story() -> None:
    # `once` is at most once: a task lost to the restart is not run again (retry_lost)
    agents = (worker("keep", "max_concurrent_tasks = 1\nretries = 1")
              + worker("once", "max_concurrent_tasks = 1\nretries = 0\nretry_lost = 0"))
    d = Daemon(shared_tmpdir(), agents)
    d.start()
    try:
        def submit(name: str, inp: str) -> str:
            return d.cli("run", name, "--input", inp, "--detach").stdout.strip()

        sleep = '{"do": "sleep", "seconds": 60}'
        running = {n: submit(n, sleep) for n in ("keep", "once")}
        queued = [submit("keep", f'{{"do": "echo", "n": {i}}}') for i in range(3)]
        wait_until(lambda: all(d.task(t)["status"] == "running"
                               for t in running.values()), what="both running")
        kill_daemon_and_workers(d)
        d.start()
        once = d.json("task", running["once"])
        assert (once["status"], once["error"]["message"]) == (
            "lost", "daemon restarted (not run again: at most once, retry_lost = 0)")
        assert [(a["outcome"], a["error"]) for a in once["attempts"]] == [
            ("lost", "daemon restarted")]
        # the retried task keeps its place: it runs again before the queued ones
        keep = wait_until(lambda: (t := d.task(running["keep"]))["status"] == "running"
                          and len(t["attempts"]) == 2 and t, what="the retry")
        assert (keep["attempts"][0]["outcome"], keep["attempts"][0]["error"]) == (
            "lost", "daemon restarted")
        assert [d.json("task", t)["status"] for t in queued] == ["queued"] * 3
        d.cli("cancel", running["keep"])
        done = [d.json("task", t, "--wait") for t in queued]
        assert [t["status"] for t in done] == ["succeeded"] * 3
        assert [t["output"]["n"] for t in done] == [0, 1, 2]
        assert done[0]["attempts"][0]["started"] < done[1]["attempts"][0]["started"] < (
            done[2]["attempts"][0]["started"])
        lost = d.json("tasks", "--since", "1h", "--status", "lost")["tasks"]
        assert [t["task_id"] for t in lost] == [running["once"]]
        listed = d.json("tasks", "--since", "1h")["tasks"]
        assert [t["task_id"] for t in listed] == [*running.values(), *queued]
        log = (d.state / "logs" / "corral.log").read_text()
        assert ("task journal: 5 unfinished tasks recovered: 3 queued again, 1 running task "
                "retried, 1 lost (daemon restarted)") in log
        assert d.stop() == 0
    finally:
        d.close()


def test_a_waiting_run_gets_its_outcome_across_a_daemon_restart() -> None:
    d = Daemon(shared_tmpdir(), worker("w", "retries = 1"))
    release = d.dir / "release"
    d.start()
    try:
        client = corral_popen(
            ["--socket", str(d.sock), "run", "w", "--input",
             json.dumps({"do": "await", "path": str(release)}), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        tid = wait_until(lambda: [t["task_id"] for t in d.ask("tasks.list")["tasks"]
                                  if t["status"] == "running"], what="running")[0]
        kill_daemon_and_workers(d)
        d.start()
        release.touch()  # the retry, on the new daemon, may finish
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, (out, err)
        res = json.loads(out)
        assert (res["task_id"], res["status"], res["output"]) == (tid, "succeeded",
                                                                  {"awaited": str(release)})
        assert [a["outcome"] for a in res["attempts"]] == ["lost", "succeeded"]
        assert f"corral: lost the daemon while waiting for task {tid}; reconnecting" in err
        assert d.stop() == 0
    finally:
        d.close()


def test_a_graceful_restart_keeps_queued_tasks() -> None:
    d = Daemon(shared_tmpdir(), worker("w", "max_concurrent_tasks = 1"))
    d.start()
    try:
        busy = d.cli("run", "w", "--input", '{"do": "sleep", "seconds": 60}',
                     "--detach").stdout.strip()
        waiting = d.cli("run", "w", "--input", '{"do": "echo"}', "--detach").stdout.strip()
        wait_until(lambda: d.task(busy)["status"] == "running", what="running")
        assert d.stop() == 0
        d.start()
        assert d.json("task", waiting, "--wait")["status"] == "succeeded"
        assert d.json("task", busy)["status"] == "lost"
        assert d.stop() == 0
    finally:
        d.close()


# -- in-process: the engine with the real journal --------------------------------------------
async def test_large_outputs_live_in_the_journal_and_memory_stays_small(
        db_path: Path) -> None:
    journal = TaskJournalDB(db_path)
    async with Supervisor(heartbeat_interval=0.2, journal=journal, keep_tasks=5,
                          keep_tasks_bytes=50_000) as sup:
        sup.add(agent("big", "misbehave.py", max_concurrent_tasks=8))
        await all_ready(sup, "big")
        pad = "x" * 20_000
        results = await sup.tasks.map("big", [{"do": "echo", "i": i, "pad": pad}
                                              for i in range(40)], concurrency=20)
        assert all(r.status == "succeeded" for r in results)
        assert len(sup.tasks.finished) == 5 and not sup.tasks.active
        kept = list(sup.tasks.finished.values())
        assert [t.output_dropped for t in kept] == [True] * 3 + [False] * 2
        assert all(len(t.input) == 0 for t in kept)
        held = sup.tasks.retention.held_bytes
        assert held == sum(t.out.size if t.out else 0 for t in kept) < 50_000
        assert all(r.output["pad"] == pad for r in results)  # every caller got its output
        # every task answers, from the journal when it is no longer in memory
        first = await sup.tasks.info(results[0].task_id)
        assert msgspec.json.decode(first.output) == {"do": "echo", "i": 0, "pad": pad}
        last = await sup.tasks.info(results[-1].task_id)
        assert msgspec.json.decode(last.output)["i"] == 39
        # batched: changes to a task within a batch are one row, a batch one transaction
        assert journal.writes >= 3 * 40 and journal.rows < journal.writes
        assert journal.batches < journal.writes
        listed = await sup.tasks.query(since=time.time() - 60, limit=100)
        assert [t.task_id for t in listed] == [r.task_id for r in results]
    await journal.close()


async def test_without_a_journal_outputs_are_dropped_oldest_first_past_the_byte_bound(
        ) -> None:
    async with Supervisor(heartbeat_interval=0.2, keep_tasks=30,
                          keep_tasks_bytes=100_000) as sup:
        sup.add(agent("big", "misbehave.py"))
        await all_ready(sup, "big")
        pad = "x" * 20_000
        results = [await sup.tasks.run("big", {"do": "echo", "i": i, "pad": pad})
                   for i in range(10)]
        kept = [sup.tasks.get(r.task_id) for r in results]
        assert [t.output_dropped for t in kept] == [True] * 6 + [False] * 4
        assert kept[-1].output["i"] == 9
        info = await sup.tasks.info(results[0].task_id)
        assert (info.status, info.output, info.output_dropped) == ("succeeded", None, True)
        assert sup.tasks.retention.held_bytes == sum(t.out.size if t.out else 0 for t in kept)


async def test_the_journal_prunes_finished_tasks_by_count_and_age(db_path: Path) -> None:
    journal = TaskJournalDB(db_path, max_tasks=3, max_age=3600)
    async with Supervisor(heartbeat_interval=0.2, journal=journal) as sup:
        sup.add(agent("p", "misbehave.py", max_concurrent_tasks=4))
        await all_ready(sup, "p")
        results = await sup.tasks.map("p", [{"do": "echo", "i": i} for i in range(8)],
                                      concurrency=1)
        await sup.tasks.committed()
    db = open_database(db_path)
    db.execute("UPDATE tasks SET finished = finished - 7200 WHERE id = ?",
               (results[7].task_id,))
    # each task's labels and its record of who started it (labels.py) go with it
    db.executemany("INSERT INTO labels (key, label, seq) VALUES (?, 'x', 0)",
                   [(k,) for r in results for k in (r.task_id, f"started:{r.task_id}")])
    db.close()
    journal.start_pruning()  # a pass at once: close() lets the writer finish it
    await journal.close()
    db = open_database(db_path)
    kept = [r[0] for r in db.execute("SELECT id FROM tasks ORDER BY arrival")]
    labelled = {r[0] for r in db.execute("SELECT key FROM labels")}
    db.close()
    assert kept == [r.task_id for r in results[4:7]]
    assert labelled == {k for t in kept for k in (t, f"started:{t}")}


async def test_journal_sync_full_sets_synchronous_full(tmp_path: Path) -> None:
    async with in_process(tmp_path, "", supervisor='journal_sync = "full"') as d:
        synchronous: list[int] = []  # read by a job on the journal's writer
        await d.store.thread.commit([
            lambda db: synchronous.extend(db.execute("PRAGMA synchronous").fetchone())])
        assert synchronous == [2]


async def test_a_batch_is_one_upsert_per_task_and_keeps_what_a_change_does_not_carry(
        db_path: Path) -> None:
    journal = TaskJournalDB(db_path)
    tasks = [Task("a", msgspec.Raw(b'{"n": %d}' % i), 0, 30.0, 0, i) for i in range(341)]
    for t in tasks:
        journal.write(t)
    await journal.committed()
    for t in tasks[::3]:  # an upsert: some rows change, the rest stay as they were
        t.status, t.finished, t.out = "succeeded", 1.0, Output(msgspec.Raw(b"1"), 1)
        journal.write(t)
    await journal.committed()
    await journal.close()
    db = open_database(db_path)
    got = db.execute("SELECT arrival, status, input, output FROM tasks ORDER BY arrival"
                     ).fetchall()
    db.close()
    # a finished task's input is kept with its row (decision 170)
    assert got == [(i, "succeeded", b'{"n": %d}' % i, b'{"output":1}') if i % 3 == 0 else
                   (i, "queued", b'{"n": %d}' % i, None) for i in range(341)]
    assert journal.batches == 2 and journal.rows == 341 + 114


def _rows(db_path: Path, *ids: str) -> dict[str, tuple[object, ...]]:
    """The journal's rows of `ids` as a reader sees them: id -> (status, input, output)."""
    db = sqlite3.connect(db_path)
    try:
        got = db.execute(f"SELECT id, status, input, output FROM tasks WHERE id IN "
                         f"({','.join('?' * len(ids))})", ids).fetchall()
    finally:
        db.close()
    return {i: tuple(rest) for i, *rest in got}


async def test_a_new_task_nobody_waits_on_is_one_row_and_a_long_one_is_written_running(
        db_path: Path) -> None:
    """A new task's first row waits up to YOUNG_FOR when nobody awaits its commit: one that
    ends meanwhile is one row (one insert, not an insert and an update); one still running
    then is written as it is (input kept for a restart); `committed()` takes every waiting
    row at once (what `tasks.run` acknowledges after). The one row has the input (kept
    after the task's end: decision 170)."""
    journal = TaskJournalDB(db_path)
    async with Supervisor(heartbeat_interval=0.2, journal=journal) as sup:
        sup.add(agent("y", "misbehave.py", max_concurrent_tasks=8))
        await all_ready(sup, "y")
        rows = journal.rows
        results = await sup.tasks.map("y", [{"do": "echo", "i": i} for i in range(20)],
                                      concurrency=4)
        await sup.tasks.committed()
        assert journal.rows - rows == 20  # one row a task
        ids = [r.task_id for r in results]
        assert _rows(db_path, *ids) == {
            r.task_id: ("succeeded", b'{"do":"echo","i":%d}' % i,
                        b'{"output":{"do":"echo","i":%d}}' % i)
            for i, r in enumerate(results)}
        loop = asyncio.get_running_loop()
        submitted = loop.time()  # (the journal's clock)
        long = sup.tasks.submit("y", {"do": "sleep", "seconds": 30})
        assert _rows(db_path, long.id) == {}
        # (no committed(), which would take the young rows: the row comes by itself)
        await wait_until_async(lambda: _rows(db_path, long.id), YOUNG_FOR + 10)
        # it waited (less a millisecond: the loop's clock counts in them)
        assert loop.time() - submitted >= YOUNG_FOR - YOUNG_SLACK - 0.001
        assert _rows(db_path, long.id) == {
            long.id: ("running", b'{"do":"sleep","seconds":30}', None)}
        waited = sup.tasks.submit("y", {"do": "sleep", "seconds": 30})
        assert _rows(db_path, waited.id) == {}
        await sup.tasks.committed()  # someone waits: written now, young no more
        assert _rows(db_path, waited.id)[waited.id][1] == b'{"do":"sleep","seconds":30}'
        sup.tasks.cancel(long.id)
        sup.tasks.cancel(waited.id)
        await sup.tasks.committed()
        assert {s for s, _, _ in _rows(db_path, long.id, waited.id).values()} == {"cancelled"}
    await journal.close()


async def test_a_first_row_still_waiting_at_close_is_written_and_a_restart_has_it(
        db_path: Path) -> None:
    """Closing the journal does not drop the rows that wait (YOUNG_FOR): their timer is
    stopped, and close writes them as their tasks are, input and arrival order kept, so
    the next daemon runs them again."""
    journal = TaskJournalDB(db_path)
    async with Supervisor(heartbeat_interval=0.2, journal=journal) as sup:
        sup.add(agent("y", "misbehave.py", max_concurrent_tasks=1))
        await all_ready(sup, "y")
        running = sup.tasks.submit("y", {"do": "sleep", "seconds": 30})
        queued = sup.tasks.submit("y", {"do": "echo", "n": 1})
        assert _rows(db_path, running.id, queued.id) == {}  # their first rows wait
        await journal.close()
        assert _rows(db_path, running.id, queued.id) == {
            running.id: ("running", b'{"do":"sleep","seconds":30}', None),
            queued.id: ("queued", b'{"do":"echo","n":1}', None)}
    reopened = TaskJournalDB(db_path)
    try:
        assert [(r.task_id, r.status) for r in reopened.unfinished()] == [
            (running.id, "running"), (queued.id, "queued")]
    finally:
        await reopened.close()
