"""The task journal when it cannot write (a full disk, an I/O error, a lock it cannot get):
no task is acknowledged unless its row is committed, the daemon serves on, accepted tasks
run on, and the journal catches up when it can write again — or names what it could not
record before a shutdown."""

from __future__ import annotations

import asyncio
import json
import re
import resource
import sqlite3
from pathlib import Path

import pytest

from corral.daemon.storeschema import StoreError
from corral.daemon.taskjournal import TaskJournalDB
from corral.supervisor import Supervisor

from .conftest import agent as agent_spec
from .conftest import all_ready
from .daemon_harness import Daemon
from .test_daemon_cli import wait_until
from .test_journal import worker

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def rows(db: Path) -> dict[str, tuple[str, bytes | None]]:
    """Each journaled task's status and input, read as another process would."""
    conn = sqlite3.connect(db)
    try:
        return {tid: (status, inp) for tid, status, inp in
                conn.execute("SELECT id, status, input FROM tasks")}
    finally:
        conn.close()


# -- in-process: the real journal, its writes failing on a lock another connection holds ---
async def test_failed_writes_are_kept_and_caught_up_and_what_is_left_is_named_at_close(
        db_path: Path, tmp_path: Path) -> None:
    errors: list[str] = []
    notices: list[str] = []
    journal = TaskJournalDB(db_path, on_error=errors.append, on_notice=notices.append)
    holder = sqlite3.connect(db_path, isolation_level=None)
    gate1, gate2 = tmp_path / "gate1", tmp_path / "gate2"
    refused = f"task journal {db_path} cannot be written (database is locked)"
    async with Supervisor(heartbeat_interval=0.2, journal=journal) as sup:
        sup.add(agent_spec("w", "misbehave.py", max_concurrent_tasks=4))
        await all_ready(sup, "w")
        t1 = sup.tasks.submit("w", {"do": "await", "path": str(gate1)})
        await sup.tasks.committed()
        holder.execute("BEGIN EXCLUSIVE")  # every write of the journal's fails now
        t2 = sup.tasks.submit("w", {"do": "await", "path": str(gate2)})
        with pytest.raises(StoreError) as err:
            await sup.tasks.committed()
        assert str(err.value) == refused
        assert errors == [f"{refused}: new tasks are refused until it can be written; the "
                          "changes of 1 accepted task wait in memory and are written when "
                          "it can (tried every 1 s)"]
        gate1.touch()
        await asyncio.wait_for(asyncio.shield(t1.done), 20)  # it runs on meanwhile
        assert t1.status == "succeeded"
        assert {t: s for t, (s, _) in rows(db_path).items()} == {t1.id: "running"}
        holder.execute("ROLLBACK")
        await sup.tasks.committed()  # the next attempt writes everything kept
        (notice,) = notices
        assert re.fullmatch(rf"task journal {re.escape(str(db_path))} is written again: the "
                            rf"changes of 2 tasks kept in memory since {STAMP} are recorded",
                            notice)
        # t2's input was in its first row only (the failed one): it is still recorded, so
        # a restarted daemon could run it again
        # (and t1's, finished, is kept with its row: decision 170)
        assert rows(db_path) == {
            t1.id: ("succeeded", json.dumps({"do": "await", "path": str(gate1)},
                                            separators=(",", ":")).encode()),
            t2.id: ("running", bytes(t2.input))}
        gate2.touch()
        await asyncio.wait_for(asyncio.shield(t2.done), 20)
        await sup.tasks.committed()
        holder.execute("BEGIN EXCLUSIVE")
        t3 = await sup.tasks.run("w", {"do": "echo"})  # the Python API does not wait
        assert t3.status == "succeeded"
        await journal.close()  # one more attempt, which fails: what is left is named
    holder.execute("ROLLBACK")
    holder.close()
    # a new failure is told again, and at close what it kept from being written
    assert len(errors) == 3 and errors[1].startswith(f"{refused}: new tasks are refused")
    assert errors[2] == (
        f"task journal {db_path}: the latest changes of 1 task could not be written before "
        f"shutdown ({t3.task_id}): the next daemon takes them as last recorded (queued ones "
        "run, running ones are retried or end lost)")
    assert rows(db_path) == {t.id: ("succeeded", json.dumps(
        {"do": "await", "path": str(gate)}, separators=(",", ":")).encode())
        for t, gate in ((t1, gate1), (t2, gate2))}


# -- through `corral daemon`: a full disk, as its file size limit ----------------------------
def test_a_journal_that_cannot_write_refuses_new_tasks_and_the_daemon_serves_on(
        tmp_path: Path) -> None:
    d = Daemon(tmp_path, worker("w", "max_concurrent_tasks = 1"))
    db = d.state / "corral.db"
    gate = tmp_path / "gate"
    try:
        d.start()
        assert d.proc is not None
        accepted = d.cli("run", "w", "--input", json.dumps({"do": "await", "path": str(gate)}),
                         "--detach").stdout.strip()
        wait_until(lambda: d.task(accepted)["status"] == "running", what="running")
        # every write to a file fails now (EFBIG), as on a full disk
        _, hard = resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE, (0, hard))
        refusal = (f"corral: task journal {db} cannot be written (disk I/O error); the task "
                   "was not accepted\n")
        for how in ([], ["--detach"]):
            r = d.cli("run", "w", "--input", '{"do": "echo"}', *how)
            assert (r.returncode, r.stdout, r.stderr) == (1, "", refusal)
        # the daemon serves on, and the accepted task runs on to its end
        assert d.status()["w#0"]["state"] == "busy"
        gate.touch()
        wait_until(lambda: d.task(accepted)["status"] == "succeeded",
                   what="the accepted task's end")
        assert rows(db)[accepted][0] == "running"  # not recorded yet
        resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
        # new tasks are taken again once the journal has written what it kept (its next
        # attempt, at most a second away)
        wait_until(lambda: rows(db)[accepted][0] == "succeeded", what="the catch-up")
        r = d.cli("run", "w", "--input", '{"do": "echo"}', "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["status"] == "succeeded"
        journaled = rows(db)
        # caught up; the first refused task (queued when its write failed) is there as
        # what it became, cancelled; the second was refused before it was submitted
        assert journaled[accepted][0] == "succeeded"
        assert sorted(s for s, _ in journaled.values()) == [
            "cancelled", "succeeded", "succeeded"]
        assert d.stop() == 0
        assert d.proc.stderr is not None
        err = d.proc.stderr.read().decode().splitlines()
    finally:
        d.close()
    told = [line for line in err if line.startswith("corral: task journal")]
    assert len(told) == 2, told
    assert told[0].startswith(f"corral: task journal {db} cannot be written (disk I/O "
                              "error): new tasks are refused until it can be written; the "
                              "changes of ")
    assert re.fullmatch(rf"corral: task journal {re.escape(str(db))} is written again: the "
                        rf"changes of \d+ tasks kept in memory since {STAMP} are recorded",
                        told[1])


def test_a_task_that_ended_before_its_write_failed_is_answered_and_the_next_refused(
        tmp_path: Path) -> None:
    # the journal learns it cannot write only when a write fails (here after SQLite's
    # busy timeout, a lock held by another process): a task on an idle agent has run by
    # then, and its outcome is the answer, not a refusal the client would retry; from
    # then on new tasks are refused at once, before they reach an agent
    d = Daemon(tmp_path, worker("w"))
    db = d.state / "corral.db"
    holder = None
    try:
        d.start()
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        r = d.cli("run", "w", "--input", '{"do": "echo", "n": 1}', "--json")
        assert r.returncode == 0, r.stderr
        ran = json.loads(r.stdout)
        assert ran["status"] == "succeeded"
        r = d.cli("run", "w", "--input", '{"do": "echo", "n": 2}')
        assert (r.returncode, r.stdout, r.stderr) == (
            1, "", f"corral: task journal {db} cannot be written (database is locked); "
                   "the task was not accepted\n")
        # the refused one never reached the engine, let alone an agent
        stats = d.json("stats")
        total = stats["tasks"]["total"]
        assert (total["accepted"], total["succeeded"], total["cancelled"]) == (1, 1, 0)
        assert stats["supervisor"]["task_journal_refusing"] == (
            f"task journal {db} cannot be written (database is locked)")
        holder.execute("ROLLBACK")
        wait_until(lambda: rows(db).get(ran["task_id"], ("", None))[0] == "succeeded",
                   what="the answered task recorded once the journal writes again")
        assert len(rows(db)) == 1
        assert d.json("stats")["supervisor"]["task_journal_refusing"] is None
        assert d.stop() == 0
    finally:
        if holder is not None:
            holder.close()
        d.close()
