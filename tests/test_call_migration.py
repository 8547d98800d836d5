"""Migration 23 (one durable engine): a state database of the schema before, with its
workflow runs and team calls (running and ended, their steps' rows and outputs), is
carried over whole into the calls' tables, read back as runs and calls as before, and a
running one is still one to resume."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import msgspec

from corral.daemon import storeschema
from corral.daemon.store import StateStore
from corral.daemon.teams.store import TeamCalls
from corral.daemon.workflows.runstore import RunStore
from corral.supervisor.durable import WHOLE
from corral.supervisor.teams import TeamSpec
from corral.supervisor.workflows import WorkflowSpec

BEFORE = 22  # the schema version before the calls' tables


def _old_database(path: Path, now: float) -> None:
    storeschema.prepare_state_dir(path.parent)
    db = sqlite3.connect(path, isolation_level=None)
    assert storeschema.migrate(db, storeschema.MIGRATIONS[:BEFORE]) == BEFORE
    wf = msgspec.convert({"steps": [{"name": "s", "agent": "a1"},
                                    {"name": "m", "agent": "a1", "map": "$input.xs"}]},
                         WorkflowSpec)
    db.execute("INSERT INTO runs (run_id, workflow, definition, input, status, created, "
               "ended, deadline, error, revision, agents, traceparent, tracestate, tenant) "
               "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
               ("r-run", "w", msgspec.json.encode(wf), b'{"xs": [1, 2]}', "running", now, None,
                now + 60, None, 3, b'["a1"]', "00-" + "1" * 32 + "-" + "2" * 16 + "-01",
                "k=v", "acme"))
    db.execute("INSERT INTO runs (run_id, workflow, definition, input, status, created, "
               "ended, error) VALUES (?,?,?,?,?,?,?,?)",
               ("r-old", "w", msgspec.json.encode(wf), b"null", "failed", now - 9, now - 8,
                "step s: task t failed"))
    db.executemany("INSERT INTO run_steps VALUES (?,?,?,?,?,?,?,?,?)", [
        ("r-run", "s", WHOLE, "t-s", "succeeded", now, now, b'{"ok": 1}', None),
        ("r-run", "m", WHOLE, None, "running", now, None, None, None),
        ("r-run", "m", 0, "t-m0", "succeeded", now, now, b"10", None),
        ("r-run", "m", 1, "t-m1", "running", now, None, None, None)])
    team = TeamSpec(mode="broadcast", members=["a1", "a2"])
    db.execute("INSERT INTO team_calls VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
               ("c-call", "crew", "acme", msgspec.json.encode(team), b'"hi"', "running",
                now, None, None, None, None, None))
    db.execute("INSERT INTO team_calls VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
               ("c-done", "crew", "", msgspec.json.encode(team), b'"yo"', "succeeded",
                now - 5, now - 4, b'{"a1": 1}', None, None, None))
    db.executemany("INSERT INTO team_steps VALUES (?,?,?,?,?,?,?,?)", [
        ("c-call", "member:a1", "t-a1", "succeeded", now, now, b'"one"', None),
        ("c-call", "member:a2", "t-a2", "running", now, None, None, None)])
    db.close()


def test_runs_and_team_calls_are_carried_into_the_calls_tables(tmp_path: Path) -> None:
    path = tmp_path / "state" / "corral.db"
    now = time.time()
    _old_database(path, now)
    store = StateStore(path)
    try:
        assert storeschema.schema_version(store.db) == storeschema.SCHEMA_VERSION
        tables = {n for (n,) in store.db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"calls", "call_steps"} <= tables
        assert not tables & {"runs", "run_steps", "team_calls", "team_steps"}

        runs = RunStore(store)
        run = runs.load("r-run")
        assert run is not None
        assert (run.workflow, run.status, run.input, run.revision, run.tenant,
                run.tracestate, run.deadline) == ("w", "running", {"xs": [1, 2]}, 3,
                                                   "acme", "k=v", now + 60)
        assert [s.name for s in run.wf.steps] == ["s", "m"]
        assert {k: (r.status, r.task_id) for k, r in run.rows.items()} == {
            ("s", WHOLE): ("succeeded", "t-s"), ("m", WHOLE): ("running", None),
            ("m", 0): ("succeeded", "t-m0"), ("m", 1): ("running", "t-m1")}
        assert runs.journal.output("r-run", "s", WHOLE) == {"ok": 1}
        assert runs.items_output("r-run", "m") == [10, None]
        assert [r.run_id for r in runs.unfinished()] == ["r-run"]
        old = runs.load("r-old")
        assert old is not None and (old.status, old.error, old.tenant) == (
            "failed", "step s: task t failed", "?")  # told whose at the next start
        page = runs.listing(None, None, None, 10, None, None)
        assert page is not None and [r.run_id for r in page] == ["r-run", "r-old"]

        teams = TeamCalls(store)
        call = teams.call("c-call")
        assert call is not None
        assert (call.team, call.tenant, call.input, call.spec.members) == (
            "crew", "acme", "hi", ["a1", "a2"])
        assert {k: (r.status, r.task_id) for k, r in call.rows.items()} == {
            ("member:a1", WHOLE): ("succeeded", "t-a1"),
            ("member:a2", WHOLE): ("running", "t-a2")}
        assert teams.output("c-call", "member:a1", WHOLE) == "one"
        assert [c.call_id for c in teams.unfinished_calls()] == ["c-call"]
        done = teams.call("c-done")
        assert done is not None and (done.status, done.output) == ("succeeded", {"a1": 1})
        assert [t.task_id for t in teams.listing("crew", None, None, None, 10)] == [
            "c-done", "c-call"]  # newest first, as their ids sort
        # a run is no team's call, nor a call a run
        assert teams.call("r-run") is None and runs.load("c-call") is None
    finally:
        store.close()


async def test_a_team_call_running_in_the_tables_before_is_resumed_by_the_daemon(
        tmp_path: Path) -> None:
    """A call the daemon before this one left running (one member's step ended, the
    other's id recorded but its task never in the journal: a SIGKILL between the two
    writes) is carried over and driven on at the next start: the ended member not run
    again, the other's task submitted under the recorded id, the call ended so."""
    from corral import methods as m

    from .daemon_harness import in_process
    from .test_teams import OPERATOR, agents_toml

    path = tmp_path / "state" / "corral.db"
    storeschema.prepare_state_dir(path.parent)
    db = sqlite3.connect(path, isolation_level=None)
    assert storeschema.migrate(db, storeschema.MIGRATIONS[:BEFORE]) == BEFORE
    team = TeamSpec(mode="broadcast", members=["a", "b"])
    now = time.time()
    call_id = "01a20000-0000-7000-8000-00000000ca11"
    b_task = "01a20000-0000-7000-8000-00000000b0b0"
    db.execute("INSERT INTO team_calls VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
               (call_id, "pair", "default", msgspec.json.encode(team), b'{"q": 1}',
                "running", now, None, None, None, None, None))
    db.executemany("INSERT INTO team_steps VALUES (?,?,?,?,?,?,?,?)", [
        (call_id, "member:a", "01a20000-0000-7000-8000-00000000a0a0", "succeeded", now,
         now, b'{"who": "a", "kept": true}', None),
        (call_id, "member:b", b_task, "running", now, None, None, None)])
    db.close()

    toml = '[teams.pair]\nmode = "broadcast"\nmembers = ["a", "b"]\n'
    async with in_process(tmp_path, agents_toml(tmp_path, "a b"), toml) as d:
        info = await d.dispatcher.call(OPERATOR, "calls.get", m.CallsGet(
            call_id=call_id, wait=True))
        assert info.status == "succeeded", info
        assert info.output["a"]["output"] == {"who": "a", "kept": True}  # not run again
        assert info.output["b"] == {"status": "succeeded", "task_id": b_task,
                                    "output": {"who": "b", "got": {"q": 1}}}
        listed = await d.dispatcher.call(OPERATOR, "tasks.list", m.TasksList(agent="a"))
        assert listed.tasks == []  # member a's task was never submitted again
