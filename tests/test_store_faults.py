"""The state database when it cannot be written at run time (a full disk, an I/O error, a
lock held too long): an audit row never changes a command's answer — it is kept, bounded,
and written when the database can be, told once each way — and a command whose own change
must outlive the daemon (add, remove, scale, rollback) is refused before anything changes
(decision 61)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil
import pytest

from corral import jsonrpc
from corral.daemon import storeschema
from corral.daemon.caller import Caller
from corral.daemon.revisions import RevisionLog, forgetting_scaled, setting_scaled
from corral.daemon.store import StateStore
from corral.daemon.storeschema import StoreError
from corral.daemon.storewriter import StoreWriter
from corral.jsonrpc import RpcError
from corral.supervisor import State

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon, hello, in_process
from .test_daemon_cli import raw, wait_until

# minutes of this file: a parallel run starts it first (tests/conftest.py longest_first)
pytestmark = pytest.mark.long

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


# -- in-process: the real store, its writes failing on a lock another connection holds -----
@asynccontextmanager
async def lockable_store(db: Path, errors: list[str], notices: list[str]
                         ) -> AsyncIterator[tuple[StateStore, StoreWriter, sqlite3.Connection]]:
    """The store with its writer open (telling `errors` and `notices`), and another
    connection that makes every write of the writer's fail while it holds the lock."""
    store = StateStore(db)
    writer = store.open_writer(on_error=errors.append, on_notice=notices.append)
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        yield store, writer, holder
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
        await store.close_writer()
        store.close()


async def test_audit_rows_that_cannot_be_written_are_kept_bounded_and_caught_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storeschema, "BUSY_TIMEOUT_MS", 100)  # a lock fails an attempt fast
    db = tmp_path / "corral.db"
    errors: list[str] = []
    notices: list[str] = []
    async with lockable_store(db, errors, notices) as (store, writer, holder):
        writer.max_held = 4
        store.audit(0, 1, "agents.stop", {"names": ["a"]}, "ok")
        await writer.committed()
        holder.execute("BEGIN EXCLUSIVE")  # every write of the writer's fails now
        for n in range(1, 6):  # a replica's checkpoints replace each other while waiting
            store.save_state("w", 0, float(n), n)
        for i in range(2, 7):
            store.audit(0, i, "agents.stop", {"names": ["a"]}, "ok")
        await writer.committed()  # the attempt failed: four kept, two dropped
        assert errors == [
            f"state database {db} cannot be written (database is locked): 1 checkpoint and "
            "3 audit rows wait in memory and are written when it can (tried every 1 s; at "
            "most 4 are kept, newer ones are dropped and counted): free space on its file "
            f"system, or make it and its directory writable by uid {os.geteuid()}"]
        store.save_state("w", 0, 6.0, 6)  # replaces the kept one: nothing dropped
        store.audit(0, 7, "agents.start", {"names": ["a"]}, "ok")  # past the bound: dropped
        assert writer.pending() == {"checkpoint": 1, "audit row": 3}
        assert (writer.dropped, writer.lost) == ({"audit row": 3}, 3)
        assert [r[2] for r in store.audit_log()] == [1]  # reads still answer
        holder.execute("ROLLBACK")
        await writer.committed()  # the next attempt writes what was kept
        (notice,) = notices
        assert re.fullmatch(
            rf"state database {re.escape(str(db))} is written again: 1 checkpoint and 3 "
            rf"audit rows kept in memory since {STAMP} are recorded; 3 audit rows could not "
            "be kept and are lost", notice)
        assert store.states() == {("w", 0): (6.0, 6)}
        await writer.committed()  # the row that marks the gap, queued at the catch-up
        log = store.audit_log()
        assert [(r[2], r[3], r[5]) for r in log[:4]] == [
            (1, "agents.stop", "ok"), (2, "agents.stop", "ok"), (3, "agents.stop", "ok"),
            (4, "agents.stop", "ok")]
        (gap,) = log[4:]
        assert gap[1:4] == (os.geteuid(), os.getpid(), "audit.dropped")
        assert re.fullmatch(rf'\{{"rows":3,"since":"{STAMP}"\}}', gap[4])
        assert gap[5] == ("error: 3 audit rows could not be recorded: the state database "
                          "could not be written (database is locked)")
        assert len(errors) == 1  # told once
        # a shutdown while it still cannot write: one more attempt, then what is lost
        holder.execute("BEGIN EXCLUSIVE")
        store.audit(0, 8, "agents.stop", {"names": ["a"]}, "ok")
        await store.close_writer()
        assert errors[1].startswith(f"state database {db} cannot be written (database is "
                                    "locked): 1 audit row wait")
        assert errors[2:] == [f"state database {db}: not written before shutdown, lost: "
                              "1 audit row"]


async def test_answered_calls_rows_in_an_outage_are_kept_bounded_and_written_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent's answered model calls while the database cannot be written (call_row):
    their rows are held as any write is, at most max_held, the rest dropped and counted;
    each is one row once written (not one a retried write), and a write of them the held
    writes left no room for never stops those after it being written."""
    monkeypatch.setattr(storeschema, "BUSY_TIMEOUT_MS", 100)  # a lock fails an attempt fast
    db = tmp_path / "corral.db"
    errors: list[str] = []
    notices: list[str] = []

    def called(model: str) -> None:
        store.call_row("model.call", {"client": "a#0", "model": model}, "ok", "agent a#0",
                       None)

    async with lockable_store(db, errors, notices) as (store, writer, holder):
        writer.max_held = 6
        holder.execute("BEGIN EXCLUSIVE")  # every write of the writer's fails now
        for attempt in range(3):  # three tries, a call's rows taken by each
            for n in range(2):
                called(f"m{attempt}{n}")
            await writer.committed()
        for n in range(5):  # past the bound: dropped, counted
            called(f"late{n}")
        assert (writer.dropped, writer.lost) == ({"audit row": 5}, 5)
        holder.execute("ROLLBACK")
        await writer.committed()
        # (the catch-up's row of the dropped is the next batch's: on a loaded host its
        # commit on the writer thread comes after the caught-up batch's waiters go on)
        log = await store.audit_log_now(100)
        rows = [json.loads(r[4])["model"] for r in log if r[3] == "model.call"]
        assert rows == ["m00", "m01", "m10", "m11", "m20", "m21"]  # each once, in order
        (gap,) = [r for r in log if r[3] == "audit.dropped"]
        assert json.loads(gap[4])["rows"] == 5

        # the held writes fill the bound: the calls' own write is not kept, and later
        # calls' rows are still written once the database is
        holder.execute("BEGIN EXCLUSIVE")
        for i in range(6):
            store.audit(0, i, "agents.stop", {"names": ["a"]}, "ok")
        await writer.committed()
        called("crowded")
        holder.execute("ROLLBACK")
        await writer.committed()
        called("after")
        await writer.committed()
        rows = [json.loads(r[4])["model"] for r in store.audit_log(100)
                if r[3] == "model.call"]
        assert rows == ["m00", "m01", "m10", "m11", "m20", "m21", "crowded", "after"]


async def test_a_write_that_raises_is_dropped_alone_and_the_writer_thread_lives_on(
        tmp_path: Path) -> None:
    db = tmp_path / "corral.db"
    store = StateStore(db)
    errors: list[str] = []
    writer = store.open_writer(on_error=errors.append)
    try:
        writer.submit(lambda db: [][1], "broken write")  # a bug, not an outage
        store.audit(0, 1, "agents.stop", {"names": ["a"]}, "ok")
        # no SQLite result code (Python cannot bind it): wrong, never retried
        writer.submit(lambda db: db.execute("INSERT INTO audit (time, uid, pid, method, "
                                            "params, outcome) VALUES (?,?,?,?,?,?)",
                                            (object(), 0, 0, "m", "{}", "ok")), "odd row")
        await asyncio.wait_for(writer.committed(), 10)
        assert errors == [
            f"state database {db}: one broken write dropped, it failed (IndexError: list "
            "index out of range)",
            f"state database {db}: one odd row dropped, SQLite refused it (Error binding "
            "parameter 1: type 'object' is not supported)"]
        assert [r[2] for r in store.audit_log()] == [1]
        assert writer.stats() == {"failing_since": None, "waiting": {}, "lost": 0}
        # a command's record that raises is refused; the thread still serves the next one
        with pytest.raises(StoreError) as refused:
            await asyncio.wait_for(store.commit([lambda db: [][1]]), 10)
        assert str(refused.value) == (f"state database {db} cannot be written (IndexError: "
                                      "list index out of range)")
        await asyncio.wait_for(store.commit([setting_scaled("x", 2, 1)]), 10)
        assert RevisionLog(store.db).scaled() == {"x": (2, 1)}
        await asyncio.wait_for(store.close_writer(), 10)
    finally:
        await store.close_writer()
        store.close()


async def test_a_callback_that_raises_after_a_commit_holds_nothing_up(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = StateStore(tmp_path / "corral.db")
    writer = store.open_writer()
    ran: list[str] = []
    try:
        store.save_state("w", 0, 1.0, 1)
        writer.submit(lambda db: None, "spec revision", then=lambda: [][1])
        writer.submit(lambda db: None, "spec revision", then=lambda: ran.append("next"))
        await asyncio.wait_for(writer.committed(), 10)
        assert ran == ["next"]  # the callbacks after the one that raised still ran
        assert [r.getMessage() for r in caplog.records if r.name == "corral.store"] == [
            f"state database {store.path}: what follows the spec revision failed"]
        store.save_state("w", 0, 2.0, 2)  # and the writer goes on
        await asyncio.wait_for(writer.committed(), 10)
        assert store.states() == {("w", 0): (2.0, 2)}
    finally:
        await store.close_writer()
        store.close()


async def test_a_commands_record_is_committed_behind_the_writes_kept_before_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storeschema, "BUSY_TIMEOUT_MS", 100)
    db = tmp_path / "corral.db"
    async with lockable_store(db, [], []) as (store, writer, holder):
        await store.commit([setting_scaled("x", 2, 1)])  # `corral scale x 2`
        holder.execute("BEGIN EXCLUSIVE")
        writer.submit(forgetting_scaled("x"), "kept scale")  # a reload: the file wins
        await writer.committed()  # failed: kept
        assert writer.pending() == {"kept scale": 1}
        # while the kept write cannot be written, a command's record is refused
        with pytest.raises(StoreError) as refused:
            await store.commit([setting_scaled("x", 6, 1)])
        assert str(refused.value) == f"state database {db} cannot be written (database is locked)"
        holder.execute("ROLLBACK")  # the disk recovers; the kept write's retry is not due
        await store.commit([setting_scaled("x", 6, 1)])  # `corral scale x 6`
        assert writer.pending() == {} and not writer.outage.failing
        await writer.committed()
        assert RevisionLog(store.db).scaled() == {"x": (6, 1)}  # in the order made


# -- through `corral daemon`: a full disk, as its file size limit ----------------------------
@contextmanager
def disk_full(d: Daemon) -> Iterator[None]:
    """Every write of the daemon's to a file fails (EFBIG) while inside, as on a full disk.
    On the way out the limit is restored on the daemon and on every process it started
    meanwhile (they inherited 0), so nothing after the block runs under it."""
    assert d.proc is not None
    limit = resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE, (0, limit[1]))
    try:
        yield
    finally:
        resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE, limit)
        for child in psutil.Process(d.proc.pid).children(recursive=True):
            with suppress(psutil.Error, ProcessLookupError):
                if resource.prlimit(child.pid, resource.RLIMIT_FSIZE)[0] == 0:
                    resource.prlimit(child.pid, resource.RLIMIT_FSIZE, limit)


def daemon_lines(d: Daemon) -> str:
    """The daemon's own recent lines (from memory: its log file may be failing too)."""
    return d.cli("logs", "corral", "-n", "500").stdout


def audit(d: Daemon) -> list[tuple[str, Any, str]]:
    return [(e["method"], e["params"], e["outcome"]) for e in d.json("audit")["entries"]]


def state_writes(d: Daemon) -> dict[str, Any]:
    return d.json("stats")["supervisor"]["state_writes"]  # type: ignore[no-any-return]


def caught_up(d: Daemon) -> None:
    wait_until(lambda: "is written again" in daemon_lines(d), what="the catch-up")


def told(err: str, db: Path) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith(f"corral: state database {db}")]


def test_a_command_that_took_effect_says_so_when_its_audit_row_cannot_be_written(
        tmp_path: Path) -> None:
    # no task journal: its own failure is test_journal_faults' subject
    d = Daemon(tmp_path, hello("w"), extra="task_journal = false")
    db = d.state / "corral.db"
    try:
        d.start()
        with disk_full(d):
            r = d.cli("stop", "w")
            assert (r.returncode, r.stdout, r.stderr) == (0, "stopped: w\n", "")
            assert d.status()["w#0"]["state"] == "terminated"
            wait_until(lambda: "cannot be written" in daemon_lines(d), what="the failure")
            r = d.cli("start", "w")
            assert (r.returncode, r.stdout, r.stderr) == (0, "started: w\n", "")
            wait_until(lambda: d.status()["w#0"]["state"] == "ready", what="w ready")
            assert audit(d) == []  # not written yet; `corral audit` still answers
            during = state_writes(d)
            assert re.fullmatch(STAMP, during["failing_since"])
            assert (during["waiting"]["audit row"], during["lost"]) == (2, 0)
        # w, started inside the block, writes files again like the rest
        limit = resource.prlimit(d.status()["w#0"]["pid"], resource.RLIMIT_FSIZE)
        assert limit == resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE)
        caught_up(d)
        assert state_writes(d) == {"failing_since": None, "waiting": {}, "lost": 0}
        assert audit(d) == [("agents.stop", {"names": ["w"], "all": False}, "ok"),
                            ("agents.start", {"names": ["w"], "all": False}, "ok")]
        assert d.stop() == 0
        assert d.proc is not None and d.proc.stderr is not None
        err = d.proc.stderr.read().decode()
    finally:
        d.close()
    failure, back = told(err, db)  # once each way
    assert re.fullmatch(
        rf"corral: state database {re.escape(str(db))} cannot be written \(disk I/O error\): "
        r"(\d+ [a-z ]+?s?(, | and ))*\d+ [a-z ]+ wait in memory and are written when it can "
        r"\(tried every 1 s; at most 10000 are kept, newer ones are dropped and counted\): "
        "free space on its file system, or make it and its directory writable by uid "
        f"{os.geteuid()}", failure)
    assert re.fullmatch(
        rf"corral: state database {re.escape(str(db))} is written again: .*2 audit rows.* "
        rf"kept in memory since {STAMP} are recorded", back)


def test_changes_that_cannot_be_recorded_are_refused_before_anything_changes(
        tmp_path: Path) -> None:
    d = Daemon(tmp_path, extra="task_journal = false")
    db = d.state / "corral.db"
    more = tmp_path / "more.toml"
    more.write_text(hello("new"))
    uid = os.geteuid()

    def refusal(unchanged: str) -> str:
        return (f"corral: state database {db} cannot be written (disk I/O error): "
                f"{unchanged}; free space on its file system, or make it and its directory "
                f"writable by uid {uid}\n")

    try:
        d.start()
        extra = tmp_path / "extra.toml"
        extra.write_text(hello("extra"))
        assert d.cli("add", str(extra)).returncode == 0
        assert d.cli("scale", "extra", "2").returncode == 0
        wait_until(lambda: d.status().get("extra#1", {}).get("state") == "ready",
                   what="extra#1 ready")
        pids = {k: v["pid"] for k, v in d.status().items()}
        with disk_full(d):
            for argv, unchanged in ((["add", str(more)], "nothing was added"),
                                    (["scale", "extra", "3"], "extra was not scaled"),
                                    (["remove", "extra"], "nothing was removed"),
                                    (["rollback", "extra", "1"], "extra was not rolled back")):
                r = d.cli(*argv)
                assert (r.returncode, r.stdout, r.stderr) == (1, "", refusal(unchanged))
            # nothing changed: the same processes, no new agent
            assert {k: v["pid"] for k, v in d.status().items()} == pids
        caught_up(d)
        # the refusals are audited as such (their rows were kept meanwhile)
        assert [(m, o) for m, _, o in audit(d)[-4:]] == [
            ("agents.add", "error: " + refusal("nothing was added")[8:-1]),
            ("agents.scale", "error: " + refusal("extra was not scaled")[8:-1]),
            ("agents.remove", "error: " + refusal("nothing was removed")[8:-1]),
            ("agents.rollback", "error: " + refusal("extra was not rolled back")[8:-1])]
        # what a restarted daemon runs is what the answers said
        assert d.stop() == 0
        d.start()
        assert sorted(d.status()) == ["extra#0", "extra#1"]
        assert [(r["revision"], r["change"]) for r in
                d.json("history", "extra")["revisions"]] == [
            (1, "created"), (2, "replicas 1 -> 2")]
        # and once the database can be written, the same command simply works
        r = d.cli("add", str(more))
        assert (r.returncode, r.stdout, r.stderr) == (0, "added: new\n", "")
        assert d.stop() == 0
    finally:
        d.close()


def test_a_rollback_that_fails_takes_its_record_back(tmp_path: Path) -> None:
    d = Daemon(tmp_path, extra="task_journal = false")
    db = d.state / "corral.db"
    broken = tmp_path / "broken.toml"
    broken.write_text(f'[agents.r]\ncommand = ["{PY}", "-c", "raise SystemExit(3)"]\n'
                      'restart = "never"\n')
    good = tmp_path / "good.toml"
    good.write_text(hello("r"))

    def stored() -> dict[str, Any]:
        conn = sqlite3.connect(db)
        try:
            (spec,) = conn.execute("SELECT spec FROM runtime_agents WHERE name = 'r'"
                                   ).fetchone()
            return json.loads(spec)  # type: ignore[no-any-return]
        finally:
            conn.close()

    try:
        d.start()
        assert d.cli("add", str(broken)).returncode == 0  # revision 1: never ready
        assert d.cli("remove", "r").returncode == 0
        assert d.cli("add", str(good)).returncode == 0  # revision 2
        wait_until(lambda: d.status()["r#0"]["state"] == "ready", what="r ready")
        before = stored()
        r = d.cli("rollback", "r", "1")
        assert r.returncode == 1
        assert re.fullmatch(r"corral: rollout of r stopped at replica 0: the new process did "
                            r"not become ready: .*; the old one keeps running\n", r.stderr)
        assert [x["revision"] for x in d.json("history", "r")["revisions"]] == [1, 2]
        assert stored() == before
        assert d.status()["r#0"]["state"] == "ready"
        assert d.stop() == 0
    finally:
        d.close()


async def test_a_gateway_call_is_answered_when_its_audit_row_cannot_be_written(
        tmp_path: Path) -> None:
    pytest.importorskip("mcp")
    from .test_gateway_stdio import SCRIPTED, gateway, listed, text

    d = Daemon(tmp_path, f'[mcp_servers.sc]\ncommand = ["{PY}", "{SCRIPTED}", "v2025-11"]\n'
                         'start_timeout = 30.0\n', extra="task_journal = false")
    try:
        await asyncio.to_thread(d.start)
        async with gateway(d) as s:
            assert "sc__echo" in await listed(s, "sc__echo")
            with disk_full(d):
                assert text(await s.call_tool("sc__echo", {"text": "kept"})) == "kept"
                await asyncio.to_thread(wait_until, lambda: "cannot be written" in
                                        daemon_lines(d), what="the failure")
                assert [m for m, _, _ in audit(d)] == []
            await asyncio.to_thread(caught_up, d)
        assert audit(d) == [("gateway.call", {"client": "operator", "tool": "sc__echo"},
                             "ok")]
        assert await asyncio.to_thread(d.stop) == 0
    finally:
        d.close()


def test_a_scale_refused_for_the_fleet_bound_leaves_no_record(tmp_path: Path) -> None:
    d = Daemon(tmp_path, hello("a") + hello("b"), extra="max_replicas = 4\ntask_journal = false")
    db = d.state / "corral.db"

    def scaled() -> list[tuple[str, int]]:
        conn = sqlite3.connect(db)
        try:
            return list(conn.execute("SELECT agent, replicas FROM scaled ORDER BY agent"))
        finally:
            conn.close()

    try:
        d.start()
        # both in one read: each is checked (1 + 3 replicas, within the bound) before
        # either is applied; the turn is each agent's own, the bound the fleet's
        replies = raw(d, b'{"jsonrpc":"2.0","id":1,"method":"agents.scale","params":'
                         b'{"name":"a","replicas":3}}\n'
                         b'{"jsonrpc":"2.0","id":2,"method":"agents.scale","params":'
                         b'{"name":"b","replicas":3}}\n', n=2)
        by_id = {r["id"]: r for r in replies}
        assert by_id[1]["result"] == {"name": "a", "replicas": 3}
        assert by_id[2]["error"]["message"] == (
            "3 replicas of b would make 6 replicas in all, over max_replicas = 4 (a "
            "[supervisor] setting)")
        # what is recorded is what runs
        assert scaled() == [("a", 3)]
        assert [r["revision"] for r in d.json("history", "b")["revisions"]] == [1]
        assert d.stop() == 0
        d.start()
        assert sorted(d.status()) == ["a#0", "a#1", "a#2", "b#0"]
        assert "could not start" not in daemon_lines(d)
        assert d.stop() == 0
    finally:
        d.close()


def test_a_reload_waits_for_a_command_changing_the_same_agent(tmp_path: Path) -> None:
    d = Daemon(tmp_path, hello("x"), extra="task_journal = false")
    try:
        d.start()
        d.config.write_text(d.config.read_text().replace(hello("x"), hello("x", replicas=3)))
        # in one read: the scale records, and the reload comes while it does; it takes its
        # turn after the scale's, and the file's new count wins, as it would one after the
        # other
        replies = raw(d, b'{"jsonrpc":"2.0","id":1,"method":"agents.scale","params":'
                         b'{"name":"x","replicas":2}}\n'
                         b'{"jsonrpc":"2.0","id":2,"method":"config.reload"}\n', n=2)
        by_id = {r["id"]: r for r in replies}
        assert by_id[1]["result"] == {"name": "x", "replicas": 2}
        assert by_id[2]["result"]["changed"] == ["x"]
        # what runs is what a restarted daemon runs
        assert sorted(d.status()) == ["x#0", "x#1", "x#2"]
        assert d.stop() == 0
        d.start()
        assert sorted(d.status()) == ["x#0", "x#1", "x#2"]
        assert d.stop() == 0
    finally:
        d.close()


async def test_a_change_whose_undo_cannot_be_written_says_so(tmp_path: Path) -> None:
    """A change recorded, then failed, whose record cannot be taken back: the error says
    what the next daemon will do, the log says it as an error, and the failed change is
    undone in the running daemon all the same."""

    operator = Caller(via="socket")
    async with in_process(tmp_path, "", "") as d:
        call = d.dispatcher.call
        broken = {"command": [PY, "-c", "raise SystemExit(3)"], "restart": "never"}
        await call(operator, "agents.add", {"agents": {"r": broken}})  # revision 1
        await call(operator, "agents.remove", {"names": ["r"]})
        good = {"command": [PY, str(EXAMPLES / "hello.py")],
                "env": {"PYTHONPATH": str(ROOT)}}
        await call(operator, "agents.add", {"agents": {"r": good}})  # revision 2
        sup = d.sup
        await sup.wait_state("r", State.READY, timeout=20)
        pid = sup.agent("r").replicas[0].pid
        store = d.services.store
        commit, commits = store.commit, []

        async def undo_fails(writes: Any) -> None:
            commits.append(writes)
            if len(commits) == 2:  # the record went in; its undo does not
                raise StoreError("state database: disk I/O error")
            await commit(writes)

        store.commit = undo_fails  # type: ignore[method-assign]
        with pytest.raises(RpcError) as e:
            await call(operator, "agents.rollback", {"name": "r", "revision": 1})
        assert e.value.code == jsonrpc.REFUSED
        assert re.fullmatch(
            r"rollout of r stopped at replica 0: the new process did not become ready: "
            r".*; the old one keeps running; its record could not be taken back \(state "
            r"database: disk I/O error\): the next daemon starts what was recorded",
            e.value.message), e.value.message
        assert len(commits) == 2
        # what runs is unchanged: the old process serves on
        r = sup.agent("r").replicas[0]
        assert (r.state, r.pid) == (State.READY, pid)
        lines = await call(operator, "logs.tail", {"names": ["corral"], "lines": 50})
        assert any(ln.text.startswith("its record could not be taken back (state database: "
                                      "disk I/O error)") for ln in lines.lines)


def test_a_tenant_change_that_cannot_be_recorded_is_refused_and_nothing_changes(
        tmp_path: Path) -> None:
    """`corral tenants add|set|remove` while the state database cannot be written: each is
    refused with the file, the reason and what stays, the daemon's tenants stay exactly as
    they were (in memory and in a restarted daemon), and nothing of them is recorded."""
    d = Daemon(tmp_path, hello("w"), extra="task_journal = false\n"
               "[tenants.acme]\nmax_replicas = 4\n")
    db = d.state / "corral.db"
    uid = os.geteuid()
    beta = tmp_path / "beta.toml"
    beta.write_text("[tenants.beta]\nmax_agents = 1\n")
    gamma = tmp_path / "gamma.toml"
    gamma.write_text("[tenants.gamma]\nmax_queue = 3\n")

    def refusal(unchanged: str) -> str:
        return (f"corral: state database {db} cannot be written (disk I/O error): "
                f"{unchanged}; free space on its file system, or make it and its directory "
                f"writable by uid {uid}\n")

    def tenants() -> list[dict[str, Any]]:
        return d.json("tenants")["tenants"]  # type: ignore[no-any-return]

    def revisions() -> list[tuple[str, int, str]]:
        with sqlite3.connect(db) as c:
            return c.execute("SELECT agent, revision, change FROM revisions WHERE agent "
                             "LIKE 'tenant:%' ORDER BY agent, revision").fetchall()

    try:
        d.start()
        assert d.cli("tenants", "add", str(beta)).returncode == 0
        before = tenants()
        assert [(t["name"], t["origin"], t["quotas"]) for t in before] == [
            ("acme", f"file {d.config}", {"max_replicas": 4}),
            ("beta", "runtime", {"max_agents": 1}), ("default", "default", {})]
        with disk_full(d):
            for argv, unchanged in (
                    (["tenants", "add", str(gamma)], "nothing was added"),
                    (["tenants", "set", "acme", "max_replicas=2"],
                     "tenant acme was not changed"),
                    (["tenants", "set", "beta", "max_agents=0", "max_queue=9"],
                     "tenant beta was not changed"),
                    (["tenants", "remove", "beta"], "nothing was removed")):
                r = d.cli(*argv)
                assert (r.returncode, r.stdout, r.stderr) == (1, "", refusal(unchanged))
                assert tenants() == before  # the running daemon's, as they were
        caught_up(d)
        assert tenants() == before
        assert revisions() == [("tenant:beta", 1, "created")]
        assert [(m, o) for m, _, o in audit(d) if m.startswith("tenants.")][-4:] == [
            ("tenants.add", "error: " + refusal("nothing was added")[8:-1]),
            ("tenants.set", "error: " + refusal("tenant acme was not changed")[8:-1]),
            ("tenants.set", "error: " + refusal("tenant beta was not changed")[8:-1]),
            ("tenants.remove", "error: " + refusal("nothing was removed")[8:-1])]
        # a restarted daemon has what the answers said
        assert d.stop() == 0
        d.start()
        assert tenants() == before
        # and once the database can be written, the same change simply works
        r = d.cli("tenants", "set", "acme", "max_replicas=2")
        assert (r.returncode, r.stdout, r.stderr) == (0, "tenant acme: max_replicas=2\n", "")
        assert d.stop() == 0
    finally:
        d.close()
