"""Workflow runs seen and kept like tasks (docs/workflows.md): each step's and each run's
events on the Stream and on the event bus (`corral events tail`, the HTTP event stream),
a limited caller sent only its own; runs listed, filtered and paged with a cursor as
tasks are, with the same messages; ended runs pruned with the task journal's retention,
never a running one, and the database's pages in use back where they were."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral.daemon.store import StateStore
from corral.daemon.workflows.runevents import (
    RunEnded,
    RunStarted,
    StepEnded,
    StepStarted,
    publish_runs,
)
from corral.daemon.workflows.runstore import Run, RunStore
from corral.supervisor.durable import WHOLE, StepRow
from corral.supervisor.events import EventBus
from corral.supervisor.stream import Stream
from corral.supervisor.tasks.ids import new_id
from corral.supervisor.workflows import WorkflowSpec, compile_workflow

from .conftest import ROOT
from .daemon_harness import Daemon, corral_popen, hello, in_process
from .test_gateway_stdio import wait_until_async
from .test_http_api import SOCKET, Api, sse_events

FLOWS = """
[workflows.webflow]
[[workflows.webflow.steps]]
name = "hi"
agent = "web-1"
[[workflows.webflow.steps]]
name = "maybe"
agent = "web-1"
when = { ref = "$input.more", op = "==", value = true }

[workflows.mixed]
[[workflows.mixed.steps]]
name = "hi"
agent = "web-1"
[[workflows.mixed.steps]]
name = "there"
agent = "db"

[workflows.broken]
[[workflows.broken.steps]]
name = "first"
agent = "web-1"
input = "$input.missing"
"""


async def _run(api: Api, name: str, inp: Any = None) -> Any:
    return await api.d.dispatcher.call(SOCKET, "workflows.run",
                                       {"name": name, "input": inp, "wait": 30})


@pytest.mark.deadline(120)
async def test_a_runs_answer_holds_its_last_steps_output_as_kept_not_read_back(
        tmp_path: Path) -> None:
    """workflows.run answers with the rows a runs.get reads back, its last step's output
    the one its end kept with the run's, not read from the database again."""
    async with in_process(tmp_path, hello("web-1") + hello("db"), FLOWS) as d:
        asked: list[str] = []
        d.services.store.db.set_trace_callback(asked.append)
        answer = await d.dispatcher.call(SOCKET, "workflows.run",
                                         {"name": "mixed", "input": {"x": 1}, "wait": 30})
        d.services.store.db.set_trace_callback(None)
        again = await d.dispatcher.call(SOCKET, "runs.get", {"run_id": answer.run_id})
        assert answer.status == "succeeded" and answer.output is not None, answer
        assert (answer.steps, answer.output, answer.output_bytes) == (
            again.steps, again.output, again.output_bytes)
        assert [s.step for s in answer.steps] == ["hi", "there"]
        read = [q for q in asked if "SELECT item, output FROM call_steps" in q]
        assert len(read) == 1 and "'hi'" in read[0], read


# -- events --------------------------------------------------------------------------------
@pytest.mark.deadline(120)
async def test_each_step_and_run_is_an_event_on_the_stream_and_the_bus(tmp_path: Path
                                                                         ) -> None:
    async with in_process(tmp_path, hello("web-1") + hello("db"),
                          FLOWS + '\n[http]\nlisten = "127.0.0.1:0"\n') as d:
        import aiohttp
        async with aiohttp.ClientSession() as session:
            api = Api(d, session)
            await api.token("all", "events", "tasks:read")
            await api.token("web", "events", "tasks:read", agents="web-*")
            typed: list[Any] = []
            for t in (RunStarted, RunEnded, StepStarted, StepEnded):
                d.sup.stream.subscribe(typed.append, t)
            follower = d.sup.events.follow("corral.*")  # as `corral events tail` follows
            url = api.base + "/events/stream?pattern=corral.*"
            async with session.get(url, headers={
                    "Authorization": f"Bearer {api.tokens['all']}"}) as every, \
                    session.get(url, headers={
                        "Authorization": f"Bearer {api.tokens['web']}"}) as mine:
                await wait_until_async(lambda: len(d.sup.events.followers) >= 2)
                web = await _run(api, "webflow", {"more": False})
                mixed = await _run(api, "mixed", {})
                broken = await _run(api, "broken", {})
                assert (web.status, mixed.status, broken.status) == (
                    "succeeded", "succeeded", "failed")
                # the typed events: each after what it says was committed, in order
                assert [(type(e).__name__, e.run.run_id, getattr(e, "row", None) and
                         (e.row.step, e.row.status)) for e in typed] == [
                    ("RunStarted", web.run_id, None),
                    ("StepStarted", web.run_id, ("hi", "running")),
                    ("StepEnded", web.run_id, ("hi", "succeeded")),
                    ("StepEnded", web.run_id, ("maybe", "skipped")),
                    ("RunEnded", web.run_id, None),
                    ("RunStarted", mixed.run_id, None),
                    ("StepStarted", mixed.run_id, ("hi", "running")),
                    ("StepEnded", mixed.run_id, ("hi", "succeeded")),
                    ("StepStarted", mixed.run_id, ("there", "running")),
                    ("StepEnded", mixed.run_id, ("there", "succeeded")),
                    ("RunEnded", mixed.run_id, None),
                    ("RunStarted", broken.run_id, None),
                    ("StepEnded", broken.run_id, ("first", "failed")),
                    ("RunEnded", broken.run_id, None)]
                topics = [
                    "corral.run.started", "corral.step.started", "corral.step.succeeded",
                    "corral.step.skipped", "corral.run.succeeded",
                    "corral.run.started", "corral.step.started", "corral.step.succeeded",
                    "corral.step.started", "corral.step.succeeded", "corral.run.succeeded",
                    "corral.run.started", "corral.step.failed", "corral.run.failed"]
                # the bus: what `corral events tail 'corral.*'` prints
                got = [msgspec.json.decode(bytes(follower.pop())) for _ in topics]
                assert [g["topic"] for g in got] == topics
                assert got[2]["source"] == "corral"
                assert got[2]["data"] == {
                    "run_id": web.run_id, "workflow": "webflow", "agents": ["web-1"],
                    "step": "hi", "item": None, "status": "succeeded",
                    "started": got[2]["data"]["started"], "ended": got[2]["data"]["ended"],
                    "task_id": web.steps[0].task_id}
                assert got[12]["data"]["error"] == (
                    "$input.missing: no key missing")
                assert got[13]["data"]["error"] == (
                    "step first: $input.missing: no key missing")
                assert got[13]["data"]["status"] == "failed"
                # the HTTP stream: every run's for the operator's token; a token limited
                # to web-* is sent the runs all of whose agents it sees, as runs.get
                every_got = await sse_events(every, len(topics))
                assert [e["data"]["topic"] for e in every_got] == topics
                mine_got = await sse_events(mine, 8)
                assert [(e["data"]["topic"], e["data"]["data"]["run_id"])
                        for e in mine_got] == [
                    (t, web.run_id) for t in topics[:5]] + [
                    (t, broken.run_id) for t in topics[11:]]
            d.sup.events.unfollow(follower)


def test_a_runs_events_are_in_its_tenant_and_a_mixed_runs_are_operators_only() -> None:
    """In the part of the run's tenant (stamped as it started: WorkflowService.start),
    whoever holds its agents' names now; a run of no one tenant in no tenant's part."""
    stream = Stream()
    bus = EventBus(stream, {}, {})
    publish_runs(stream, bus)
    # nobody listening: nothing is delivered, and nothing counted as published
    spec = msgspec.json.decode(json.dumps({"steps": [
        {"name": "x", "agent": "a1"}, {"name": "y", "agent": "a2"},
        {"name": "z", "agent": "b1"}]}), type=WorkflowSpec)
    mixed = Run("r-mixed", "m", compile_workflow("m", spec), None, "running", time.time())
    acme = Run("r-acme", "a", compile_workflow("a", WorkflowSpec(steps=spec.steps[:2])),
               None, "running", time.time(), tenant="acme")
    gone = Run("r-gone", "g", compile_workflow("g", msgspec.json.decode(json.dumps(
        {"steps": [{"name": "x", "agent": "removed"}]}), type=WorkflowSpec)), None,
               "running", time.time())
    stream.emit(RunStarted(acme))
    assert bus.published == 0
    followers = {t: bus.follow("corral.*", t) for t in (None, "acme", "beta")}
    for run in (acme, mixed, gone):
        stream.emit(RunStarted(run))
    heard = {t: [msgspec.json.decode(bytes(f.pop()))["data"]["run_id"]
                 for _ in range(len(f.queue))] for t, f in followers.items()}
    assert heard == {None: ["r-acme", "r-mixed", "r-gone"], "acme": ["r-acme"],
                     "beta": []}


# -- listing and paging ------------------------------------------------------------------------
@pytest.mark.deadline(180)
async def test_runs_are_filtered_and_paged_like_tasks(tmp_path: Path) -> None:
    async with in_process(tmp_path, hello("web-1") + hello("db"),
                          FLOWS + '\n[http]\nlisten = "127.0.0.1:0"\n') as d:
        import aiohttp
        async with aiohttp.ClientSession() as session:
            api = Api(d, session)
            await api.token("all", "tasks:read")
            await api.token("web", "tasks:read", agents="web-*")
            made: list[tuple[str, str]] = []
            for i in range(7):
                name = "mixed" if i % 3 == 2 else "webflow"
                made.append(((await _run(api, name, {"more": False})).run_id, name))
            failed = (await _run(api, "broken", {})).run_id
            newest_first = [r for r, _ in reversed(made)]

            async def pages(token: str, query: str) -> tuple[list[list[str]], list[str]]:
                got, links, path = [], [], f"/runs?{query}"
                while True:
                    status, body, r = await api.ask("GET", path, token)
                    assert status == 200, body
                    got.append([x["run_id"] for x in body["runs"]])
                    if "next" not in body:
                        assert "Link" not in r.headers
                        return got, links
                    links.append(r.headers["Link"])
                    path = f"/runs?{query}&before={body['next']}"
                    assert r.headers["Link"] == f'</api/v1{path}>; rel="next"'

            # every run once, newest first, three at a time
            got, _ = await pages("all", "workflow=webflow&limit=2")
            webs = [r for r, n in reversed(made) if n == "webflow"]
            assert got == [webs[0:2], webs[2:4], webs[4:]]
            got, _ = await pages("all", "status=succeeded&limit=3")
            assert got == [newest_first[0:3], newest_first[3:6], newest_first[6:]]
            # a limited caller pages through its own only: whole pages
            got, _ = await pages("web", "limit=2&status=succeeded")
            assert [r for p in got for r in p] == webs and all(len(p) == 2 for p in got[:-1])
            status, body, _ = await api.ask("GET", "/runs?status=failed", "all")
            assert [x["run_id"] for x in body["runs"]] == [failed]
            status, body, _ = await api.ask("GET", "/runs?since=3600&limit=1", "all")
            assert [x["run_id"] for x in body["runs"]] == [failed]
            status, body, _ = await api.ask("GET", "/runs?since=0.000001", "all")
            assert (status, body) == (200, {"runs": []})
            status, body, _ = await api.ask("GET", "/runs?limit=0", "all")
            assert (status, body) == (200, {"runs": []})

            # the refusals, worded as tasks.list's
            status, body, _ = await api.ask("GET", "/runs?status=done", "all")
            assert (status, body["detail"]) == (400, (
                "no such status: done (one of cancelled, failed, running, succeeded, "
                "timed_out)"))
            status, body, _ = await api.ask("GET", "/runs?before=nope", "all")
            assert (status, body["detail"]) == (400, (
                "invalid params: before is a run id (the `next` of a page), not nope"))
            gone = new_id()
            status, body, _ = await api.ask("GET", f"/runs?before={gone}", "all")
            assert (status, body["detail"]) == (404, (
                f"no such run: {gone} (the cursor `before` names no run kept: pruned, or "
                "never started; list again from the newest)"))
            mixed_one = next(r for r, n in made if n == "mixed")
            status, body, _ = await api.ask("GET", f"/runs?before={mixed_one}", "web")
            assert (status, body["detail"]) == (404, (
                f"no such run: {mixed_one} (the cursor `before` names no run kept: pruned, "
                "or never started; list again from the newest)"))


# -- retention ---------------------------------------------------------------------------------
SPEC = msgspec.json.decode(json.dumps({"steps": [
    {"name": "a", "agent": "x"},
    {"name": "many", "agent": "x", "map": "$steps.a.output"},
    {"name": "sub", "workflow": "child"}]}), type=WorkflowSpec)


def _pages_in_use(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        (count,), (free,) = (db.execute("PRAGMA page_count").fetchone(),
                             db.execute("PRAGMA freelist_count").fetchone())
        return int(count - free)
    finally:
        db.close()


async def _made(rows: RunStore, status: str, ended: float | None, items: int = 20,
                child: str | None = None) -> str:
    run = Run(new_id(), "w", compile_workflow("w", SPEC), {"text": "x" * 500}, status,
              time.time(), ended=ended)
    await rows.calls.save_call(run.record())
    now = time.time()
    await rows.calls.save_steps(run.run_id, [
        StepRow("a", WHOLE, "succeeded", new_id(), now, now, list(range(items))),
        *(StepRow("many", i, "succeeded", new_id(), now, now, {"out": "y" * 300})
          for i in range(items)),
        StepRow("sub", WHOLE, "running" if ended is None else "succeeded",
                child or new_id(), now, None)])
    return run.run_id


async def test_ended_runs_are_pruned_and_the_database_shrinks_back(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "corral.db")
    store.open_writer()
    try:
        rows = RunStore(store)
        path = tmp_path / "corral.db"
        before = _pages_in_use(path)
        now = time.time()
        # a running run whose nested step's run has ended: both kept, whatever their age
        child = await _made(rows, "succeeded", now - 10 * 86400)
        running = await _made(rows, "running", None, child=child)
        old = [await _made(rows, "failed", now - 8 * 86400) for _ in range(50)]
        recent = [await _made(rows, "succeeded", now - 60 - i) for i in range(150)]
        grown = _pages_in_use(path)
        assert grown > before + 100, (before, grown)

        # the age: a week, as journal_max_age's default
        assert await rows.prune(7 * 86400, 100_000) == len(old)
        left = {r for (r,) in store.db.execute("SELECT call_id FROM calls")}
        assert left == {child, running, *recent}
        # the count: the newest ended ones (those a running run needs not counted)
        assert await rows.prune(0, 10) == len(recent) - 10
        left = {r for (r,) in store.db.execute("SELECT call_id FROM calls")}
        assert left == {child, running, *recent[:10]}
        assert await rows.prune(0, 0) == 10
        assert {r for (r,) in store.db.execute("SELECT call_id FROM calls")} == {
            child, running}
        # their steps' rows went with them
        assert {r for (r,) in store.db.execute("SELECT DISTINCT call_id FROM call_steps")
                } == {child, running}
        assert rows.load(running) is not None and rows.load(old[0]) is None
        # the pages they held are free again: the database back within a few pages of
        # where it began (the two runs kept)
        assert _pages_in_use(path) <= before + 10, (before, grown, _pages_in_use(path))
        # once the running run has ended, its nested one may go too
        run = rows.load(running)
        assert run is not None
        run.status, run.ended = "succeeded", time.time()
        await rows.calls.save_call(run.record())
        assert await rows.prune(0, 0) == 2
    finally:
        await store.close_writer()
        store.close()


@pytest.mark.deadline(180)
def test_a_daemon_prunes_runs_with_the_task_journals_retention(tmp_path: Path) -> None:
    d = Daemon(tmp_path, hello("web-1") + hello("db") + FLOWS)
    tail: subprocess.Popen[str] | None = None
    try:
        d.start()
        # `corral events tail` hears each run start and end
        tail = corral_popen(
            ["--socket", str(d.sock), "events", "tail", "corral.run.*",
             "--json"], stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 30
        while not d.ask("stats.get")["events"]["followers"]:
            assert time.monotonic() < deadline
        ids = []
        for _ in range(4):
            r = d.cli("workflows", "run", "webflow", "--input", '{"more": false}',
                      "--wait", "30", "--json")
            assert r.returncode == 0, r.stderr
            ids.append(json.loads(r.stdout)["run_id"])
        assert tail.stdout is not None
        heard = [json.loads(tail.stdout.readline()) for _ in range(8)]
        assert [(e["topic"], e["data"]["run_id"]) for e in heard] == [
            (t, i) for i in ids for t in ("corral.run.started", "corral.run.succeeded")]
        tail.kill()
        tail.wait()
        # the CLI pages as `corral tasks` does
        r = d.cli("runs", "-n", "3")
        assert r.returncode == 0, r.stderr
        assert [ln.split()[0] for ln in r.stdout.splitlines()[1:]] == ids[:0:-1]
        assert r.stderr == f"older runs: the same with --before {ids[1]}\n"
        assert [x["run_id"] for x in d.json("runs", "--before", ids[1])["runs"]] == [
            ids[0]]
        assert d.stop() == 0
        # a daemon that keeps two finished tasks keeps the two newest ended runs
        d.config.write_text(d.config.read_text().replace(
            "[supervisor]", "[supervisor]\njournal_max_tasks = 2", 1))
        d.start()
        # pruned once the runs are recovered (then every minute)
        deadline = time.monotonic() + 30
        while [x["run_id"] for x in d.json("runs")["runs"]] != ids[:1:-1]:
            assert time.monotonic() < deadline, d.json("runs")
        r = d.cli("run-status", ids[0])
        assert r.returncode != 0 and f"no such run: {ids[0]}" in r.stderr
    finally:
        if tail is not None and tail.poll() is None:
            tail.kill()
            tail.wait()
        d.close()
