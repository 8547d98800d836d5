"""Stores that grow with use are bounded (issue 74; docs/operations.md#retention): an
agent's spec revisions past `keep_revisions` (or past `keep_revisions_mb` of specs) are
pruned, the newest kept; a removed agent's revisions and log files go once
`removed_retention` has passed since its removal, another agent's stay. The real daemon in
this loop, its agents real processes, the CLI over the control socket."""

from __future__ import annotations

import asyncio
import json
import shlex
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral import jsonrpc
from corral.daemon.daemon import Daemon
from corral.daemon.retention import RetentionBounds, sweep
from corral.daemon.revisions import RevisionBound
from corral.daemon.storeschema import migrate
from corral.jsonrpc import RpcError

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, in_process
from .test_http_api import SOCKET
from .test_tokens import cli


def speaking(name: str) -> list[str]:
    """An agent's command that says its name on stderr (a line of its log), then serves."""
    hello = shlex.quote(f"{EXAMPLES}/hello.py")  # (a checkout's path may hold a space)
    return ["/bin/sh", "-c", f'echo "{name} was here" >&2; exec {shlex.quote(PY)} {hello}']


def toml(name: str) -> str:
    return (f'[agents.{name}]\ncommand = {json.dumps(speaking(name))}\n'
            f'env = {{ PYTHONPATH = "{ROOT}" }}\n')


async def add(d: Daemon, name: str) -> None:
    await d.dispatcher.call(SOCKET, "agents.add", {"agents": {name: {
        "command": speaking(name), "env": {"PYTHONPATH": str(ROOT)}}}})


async def remove(d: Daemon, name: str) -> None:
    """`corral remove NAME`'s call, made in-process: a CLI's start is ~0.3 s of CPU, and
    the test of many removals made thirty-two."""
    await d.dispatcher.call(SOCKET, "agents.remove", {"names": [name]})


async def change(d: Daemon, name: str, n: int, pad: int = 0) -> None:
    """A change of the agent's spec: a revision."""
    await d.dispatcher.call(SOCKET, "agents.update", {"name": name, "set": {
        "env": {"PYTHONPATH": str(ROOT), "N": f"{n:0{pad}d}"}}})


async def revisions(d: Daemon, name: str) -> list[int]:
    got = await d.dispatcher.call(SOCKET, "agents.history", {"name": name})
    return [r.revision for r in got.revisions]


async def until(what: str, done: Any) -> None:
    """Until `await done()` is true (30 s at most)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not await done():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.05)


def logs_of(d: Daemon, name: str) -> list[str]:
    log_dir = d.services.hub.log_dir
    assert log_dir is not None
    return sorted(p.name for p in log_dir.iterdir() if p.name.startswith(f"{name}.log"))


def rows(d: Daemon, sql: str) -> list[Any]:
    return list(d.services.store.db.execute(sql))


@pytest.mark.deadline(180)
async def test_revisions_past_their_bound_are_pruned_the_newest_kept(
        tmp_path: Path) -> None:
    unbounded = "keep_revisions = 0\nkeep_revisions_mb = 0"
    async with in_process(tmp_path, "", supervisor=unbounded) as d:
        await add(d, "chat")
        for n in range(1, 6):
            await change(d, "chat", n)
        assert await revisions(d, "chat") == [1, 2, 3, 4, 5, 6]
    # a lower bound since: the sweep just after start-up prunes to it, the newest kept
    async with in_process(tmp_path, "", supervisor="keep_revisions = 3") as d:
        async def three() -> bool:
            return await revisions(d, "chat") == [4, 5, 6]
        await until("revisions pruned to 3", three)
        # each change prunes its agent's at once, numbered on
        await change(d, "chat", 6)
        assert await revisions(d, "chat") == [5, 6, 7]
        history = await d.dispatcher.call(SOCKET, "agents.history", {"name": "chat"})
        assert history.revisions[-1].change == "env.N changed"
        # a pruned one is not there to roll back to
        with pytest.raises(RpcError) as refused:
            await d.dispatcher.call(SOCKET, "agents.rollback", {"name": "chat",
                                                                "revision": 2})
        assert (refused.value.code, refused.value.message) == (
            jsonrpc.NOT_FOUND, "no revision 2 of chat (its revisions kept: 5..7; see "
                               "`corral history chat`)")
    # by bytes: a spec with a 1000-digit N is over 1 KB; 1.5 KiB holds it and a small one,
    # not two of it, but the newest two are kept whatever their size (the one before is
    # what a failed change goes back to, and `corral rollback` too)
    async with in_process(tmp_path, "", supervisor="keep_revisions = 0\n"
                                                   "keep_revisions_mb = 0.0015") as d:
        await change(d, "chat", 7, pad=1000)
        assert await revisions(d, "chat") == [7, 8]
        await change(d, "chat", 8, pad=1000)
        assert await revisions(d, "chat") == [8, 9]
        await change(d, "chat", 9)
        assert await revisions(d, "chat") == [9, 10]


@pytest.mark.deadline(180)
async def test_a_removed_agents_revisions_and_logs_go_after_their_retention(
        tmp_path: Path) -> None:
    async with in_process(tmp_path, toml("keep"), supervisor="removed_retention = 0") as d:
        await add(d, "chat")
        await change(d, "chat", 1)

        async def spoken() -> bool:
            return bool(logs_of(d, "chat")) and bool(logs_of(d, "keep"))
        await until("both agents logged", spoken)
        assert await revisions(d, "chat") == [1, 2]
        rc, _, err = await cli(d, "remove", "chat")
        assert rc == 0, err

        async def gone() -> bool:
            return (not logs_of(d, "chat") and not rows(
                d, "SELECT * FROM revisions WHERE agent = 'chat'") and not rows(
                d, "SELECT * FROM removed_agents"))
        await until("chat's revisions and logs deleted", gone)
        # another agent's stay
        assert logs_of(d, "keep") == ["keep.log"]
        assert await revisions(d, "keep") == [1]
        # a chat added again starts anew
        await add(d, "chat")
        assert await revisions(d, "chat") == [1]


async def test_a_finished_task_past_journal_max_age_is_pruned_from_the_journal(
        tmp_path: Path) -> None:
    """[supervisor] journal_max_age 1: a task finished more than a second before a start
    is gone from the journal then (the journal prunes at start and every minute); one
    finished since is kept."""
    async def run(d: Daemon) -> tuple[str, float]:
        r = await d.dispatcher.call(SOCKET, "tasks.run", msgspec.json.encode(
            {"agent": "keep", "input": {}}))
        assert r.status == "succeeded"
        return r.task_id, time.time()  # (at or after its finish)

    async def status(d: Daemon, task_id: str) -> str:
        try:
            return str((await d.dispatcher.call(SOCKET, "tasks.get",
                                                {"task_id": task_id})).status)
        except RpcError as exc:
            return exc.message

    async with in_process(tmp_path, toml("keep"), supervisor="journal_max_age = 1") as d:
        old, finished = await run(d)
    await until("a second since it finished", lambda: asyncio.sleep(
        0.05, time.time() > finished + 1))
    async with in_process(tmp_path, toml("keep"), supervisor="journal_max_age = 1") as d:
        new, _ = await run(d)
        assert (await status(d, old)).startswith(f"no such task: {old}")
        assert await status(d, new) == "succeeded"


async def test_outputs_past_tasks_kept_mb_leave_memory(tmp_path: Path) -> None:
    """[supervisor] keep_tasks_mb (0.0002: ~200 bytes) with no journal to read them back
    from: the older finished task's output is dropped, said so, the newest kept."""
    async with in_process(tmp_path, toml("keep"), supervisor=(
            "task_journal = false\nkeep_tasks_mb = 0.0002")) as d:
        ids = [(await d.dispatcher.call(SOCKET, "tasks.run", msgspec.json.encode({
            "agent": "keep", "input": {"name": str(i) * 100}}))).task_id for i in range(2)]
        got = [await d.dispatcher.call(SOCKET, "tasks.get", {"task_id": t}) for t in ids]
        assert [(g.output_dropped, g.output is None) for g in got] == [
            (True, True), (False, False)]
        rc, out, err = await cli(d, "task", ids[0])
        assert rc == 0, err
        assert "(dropped from memory: the daemon keeps keep_tasks_mb of outputs)" in out


@pytest.mark.deadline(180)
async def test_an_agent_the_file_dropped_while_the_daemon_was_down_is_counted_from_then(
        tmp_path: Path) -> None:
    """No removal was heard: the start-up's sweep finds `gone` gone and counts its
    retention from then (its records stay at that sweep, even with removed_retention 0);
    a later sweep (the one a removal brings) deletes them."""
    async with in_process(tmp_path, toml("gone") + toml("keep")) as d:
        await add(d, "tmp")
        rc, _, err = await cli(d, "scale", "gone", "2")  # (a scale kept across restarts)
        assert rc == 0, err

        async def spoken() -> bool:
            return bool(logs_of(d, "gone"))
        await until("gone logged", spoken)
    async with in_process(tmp_path, toml("keep"), supervisor="removed_retention = 0") as d:
        async def noticed() -> bool:
            return rows(d, "SELECT agent, tenant FROM removed_agents") == [
                ("gone", "default")]
        await until("gone found gone", noticed)
        assert logs_of(d, "gone") == ["gone.log"]
        assert rows(d, "SELECT revision FROM revisions WHERE agent = 'gone'") == [(1,), (2,)]
        assert rows(d, "SELECT agent, replicas FROM scaled") == [("gone", 2)]
        rc, _, err = await cli(d, "remove", "tmp")
        assert rc == 0, err

        async def deleted() -> bool:
            return not logs_of(d, "gone") and not logs_of(d, "tmp") and not rows(
                d, "SELECT * FROM revisions WHERE agent IN ('gone', 'tmp')")
        await until("gone's and tmp's records deleted", deleted)
        assert logs_of(d, "keep") == ["keep.log"]
        assert rows(d, "SELECT * FROM removed_agents") == []
        assert rows(d, "SELECT * FROM scaled") == []


def test_a_removed_agents_records_stay_until_its_retention_has_passed(
        tmp_path: Path) -> None:
    """The sweep's rule, on a state database: an agent removed an hour ago with a day's
    retention keeps its revisions; past the day they go (and only then); an agent of that
    name and tenant added again keeps them whatever its removal's age."""
    db = sqlite3.connect(tmp_path / "corral.db", isolation_level=None)
    migrate(db)
    spec = json.dumps({"command": ["x"]})
    db.executemany("INSERT INTO revisions (agent, tenant, revision, time, who, change, "
                   "spec) VALUES (?, 'default', 1, 0, 'test', 'created', ?)",
                   [("old", spec), ("back", spec)])
    now = 1_000_000.0
    db.executemany("INSERT INTO removed_agents VALUES (?, 'default', ?)",
                   [("old", now - 3600), ("back", now - 2 * 86400)])
    day = RetentionBounds(RevisionBound(0, 0), 86400)
    out: list[tuple[str, str]] = []
    sweep(db, day, {("back", "default")}, now, out)
    assert out == []
    assert list(db.execute("SELECT agent FROM revisions ORDER BY agent")) == [
        ("back",), ("old",)]
    assert list(db.execute("SELECT agent FROM removed_agents")) == [("old",)]
    sweep(db, day, set(), now + 86400 - 3601, out)
    assert out == [] and db.execute("SELECT count(*) FROM revisions").fetchone() == (2,)
    sweep(db, day, set(), now + 86400 - 3600, out)
    assert out == [("old", "default")]
    assert list(db.execute("SELECT agent FROM revisions")) == [("back",)]
    # `back` is no agent now: counted from this sweep on, not from its old removal
    assert list(db.execute("SELECT agent, removed FROM removed_agents")) == [
        ("back", now + 86400 - 3601)]
    db.close()


@pytest.mark.deadline(120)
async def test_a_change_that_fails_goes_back_to_the_revision_before_whatever_the_bound(
        tmp_path: Path) -> None:
    """keep_revisions = 1 keeps the newest two: a change whose new process does not come
    up takes its revision back, and the agent's current one is still there (its history
    never empty, its current revision the one it runs)."""
    async with in_process(tmp_path, "", supervisor="keep_revisions = 1") as d:
        await add(d, "chat")
        await change(d, "chat", 1)
        await change(d, "chat", 2)
        assert await revisions(d, "chat") == [2, 3]
        with pytest.raises(RpcError) as refused:
            await d.dispatcher.call(SOCKET, "agents.update", {"name": "chat", "set": {
                "command": [PY, "-c", "raise SystemExit(3)"]}})
        assert "did not become ready" in refused.value.message
        got = await d.dispatcher.call(SOCKET, "agents.history", {"name": "chat"})
        assert ([r.revision for r in got.revisions], got.current) == ([3], 3)


def timers_due_after(seconds: float) -> int:
    """The timers of this loop not yet cancelled and due more than `seconds` from now,
    counted among the live objects (the loop's kind of timer, asyncio's or uvloop's)."""
    import gc

    loop = asyncio.get_running_loop()
    probe = loop.call_later(seconds + 1e6, lambda: None)
    kind = type(probe)
    probe.cancel()
    later = loop.time() + seconds
    return sum(1 for o in gc.get_objects()
               if type(o) is kind and not o.cancelled() and o.when() > later)


@pytest.mark.deadline(240)
async def test_removals_wait_on_one_timer_and_each_goes_at_its_due(tmp_path: Path) -> None:
    """A timer for each removal, held for the retention (a week by default), grew the
    daemon with every agent removed (issue 74's soak): thirty removals wait on one. Each
    still goes at its due: the sweep of the first finds the second next in the store and
    waits for it (the periodic sweep is ten minutes away)."""
    (tmp_path / "hour").mkdir()
    async with in_process(tmp_path / "hour", "", supervisor="removed_retention = 3600") as d:
        for i in range(30):
            await add(d, f"tmp{i}")
            await remove(d, f"tmp{i}")

        async def written() -> bool:  # (the store's writer writes each removal's row)
            return len(rows(d, "SELECT * FROM removed_agents")) == 30
        await until("thirty removals written", written)
        assert timers_due_after(3000) == 1
    (tmp_path / "short").mkdir()
    async with in_process(tmp_path / "short", "", supervisor="removed_retention = 1") as d:
        for name in ("one", "two"):
            await add(d, name)
        for name in ("one", "two"):
            await remove(d, name)

        async def both_gone() -> bool:
            return not rows(d, "SELECT * FROM revisions WHERE agent IN ('one', 'two')") \
                and not rows(d, "SELECT * FROM removed_agents")
        await until("both removed agents' records deleted", both_gone)
