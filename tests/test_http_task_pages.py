"""`GET /api/v1/tasks` a page at a time (tasks.list's `before` cursor and `next`), over
real HTTP against a real daemon, with the task journal (pages keyed by its `arrival`
order) and without it (the engine's own order); and `corral tasks --before`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from corral import jsonrpc
from corral.supervisor.tasks import new_id

from .conftest import ROOT
from .daemon_harness import hello, in_process, problem
from .test_http_api import PROBLEM, SOCKET, Api

TASKS = 23  # more than three pages of PAGE
PAGE = 7


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, journal: bool) -> AsyncIterator[Api]:
    async with in_process(
            tmp_path, hello("web-1") + hello("db"),
            '\n[http]\nlisten = "127.0.0.1:0"\nrate_per_minute = 0\n',
            supervisor="" if journal else "task_journal = false") as d, \
            aiohttp.ClientSession() as session:
        assert (d.services.journal is not None) is journal
        yield Api(d, session)


async def run_tasks(api: Api) -> list[tuple[str, str]]:
    """TASKS tasks run to their end over HTTP, one after another (so the order they were
    accepted in is known), on web-1 and db in turn: (task id, agent) in that order."""
    made = []
    for i in range(TASKS):
        agent = "db" if i % 3 == 2 else "web-1"
        status, body, _ = await api.ask("POST", "/tasks?wait=30", "runner",
                                        {"agent": agent, "input": {"name": str(i)}})
        assert (status, body["status"]) == (200, "succeeded"), body
        made.append((body["task_id"], agent))
    return made


async def pages(api: Api, token: str, query: str) -> list[dict[str, Any]]:
    """Every page of `GET /tasks?{query}`, following each answer's Link rel=next; each
    page's `next` checked against its Link."""
    got: list[dict[str, Any]] = []
    path = f"/api/v1/tasks?{query}"
    while True:
        status, body, r = await api.ask("GET", path.removeprefix("/api/v1"), token)
        assert status == 200, body
        got.append(body)
        if "next" not in body:
            assert "Link" not in r.headers
            return got
        # the same request, with the cursor of the next page
        assert body["next"] == body["tasks"][0]["task_id"]
        path = f"/api/v1/tasks?{query}&before={body['next']}"
        assert r.headers["Link"] == f'<{path}>; rel="next"'
        assert len(got) <= TASKS, "the pages never end"


def seen(got: list[dict[str, Any]]) -> list[str]:
    """The ids of every page, oldest first: pages go from the newest back, each page is
    newest last."""
    return [t["task_id"] for body in reversed(got) for t in body["tasks"]]


@pytest.mark.deadline(120)
@pytest.mark.parametrize("journal", [True, False], ids=["journal", "memory"])
async def test_tasks_are_listed_a_page_at_a_time(tmp_path: Path, journal: bool) -> None:
    async with serving(tmp_path, journal) as api:
        await api.token("runner", "tasks:run", "tasks:read")
        await api.token("web", "tasks:read", agents="web-*")
        made = await run_tasks(api)
        ids = [t for t, _ in made]

        # every task once, in the order accepted; every page full but the last
        got = await pages(api, "runner", f"limit={PAGE}")
        assert seen(got) == ids
        assert [len(b["tasks"]) for b in got] == [PAGE, PAGE, PAGE, TASKS - 3 * PAGE]
        # a page that ends exactly at the oldest task has no next
        whole = await pages(api, "runner", f"limit={TASKS}")
        assert len(whole) == 1 and seen(whole) == ids
        # a limit past SQLite's integers is all of them, not an overflow
        whole = await pages(api, "runner", f"limit={1 << 63}")
        assert len(whole) == 1 and seen(whole) == ids

        # filters with the cursor: each page holds only what the filters admit
        db = [t for t, a in made if a == "db"]
        got = await pages(api, "runner", "agent=db&limit=3")
        assert seen(got) == db and [len(b["tasks"]) for b in got] == [3, 3, 1]
        web = [t for t, a in made if a == "web-1"]
        got = await pages(api, "runner", "agent=web-1&status=succeeded&since=3600&limit=5")
        assert seen(got) == web and all(
            t["status"] == "succeeded" for b in got for t in b["tasks"])
        got = await pages(api, "runner", "status=failed&limit=5")
        assert got == [{"tasks": []}]

        # a token limited to web-*: whole pages of its own tasks, db's never in them
        got = await pages(api, "web", "limit=5")
        assert len(web) == 16
        assert seen(got) == web and [len(b["tasks"]) for b in got] == [5, 5, 5, 1]

        # no page asked for: none, and no cursor (schemathesis found this one failing)
        for limit in (0, -15):
            status, body, r = await api.ask("GET", f"/tasks?limit={limit}&before={ids[3]}",
                                            "runner")
            assert (status, body, r.headers.get("Link")) == (200, {"tasks": []}, None)

        # the socket's callers page the same way
        first = await api.d.dispatcher.call(SOCKET, "tasks.list", {"limit": PAGE})
        assert [t.task_id for t in first.tasks] == ids[-PAGE:] and first.next == ids[-PAGE]

        # a cursor that is not a task id: 400; one that names no task: 404, and a task of
        # an agent the token may not see reads as one that does not exist
        for bad in ("nonsense", "0" * 13, ids[0].upper(), ""):
            status, body, r = await api.ask("GET", f"/tasks?before={bad}", "runner")
            assert (status, r.content_type, body) == (400, PROBLEM, problem(
                400, "bad request", "invalid params: before is a task id (the `next` "
                f"of a page), not {bad or repr(bad)}", jsonrpc.INVALID_PARAMS)), bad
        gone = new_id()
        unknown = ("no such task: {} (the cursor `before` names no task kept: pruned, "
                   "or never accepted; list again from the newest)")
        for token, cursor in (("runner", gone), ("web", db[-1])):
            status, body, r = await api.ask("GET", f"/tasks?before={cursor}", token)
            assert (status, r.content_type, body) == (404, PROBLEM, problem(
                404, "not found", unknown.format(cursor), jsonrpc.NOT_FOUND)), token
        # ... and a page of the cursor's own agent still works for the unlimited token
        status, body, _ = await api.ask("GET", f"/tasks?before={db[-1]}&limit=2", "runner")
        assert [t["task_id"] for t in body["tasks"]] == ids[ids.index(db[-1]) - 2:
                                                            ids.index(db[-1])]


async def cli(sock: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral", "--socket", str(sock), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.deadline(120)
async def test_corral_tasks_pages_with_before(tmp_path: Path) -> None:
    async with serving(tmp_path, journal=True) as api:
        await api.token("runner", "tasks:run", "tasks:read")
        ids = [t for t, _ in await run_tasks(api)]
        sock = api.d.services.socket_path
        rc, out, err = await cli(sock, "tasks", "-n", "20", "--json")
        assert rc == 0, err
        first = json.loads(out)
        assert [t["task_id"] for t in first["tasks"]] == ids[-20:]
        assert first["next"] == ids[-20]
        rc, out, err = await cli(sock, "tasks", "-n", "20", "--before", first["next"])
        assert rc == 0, err
        rows = out.splitlines()
        assert rows[0].split() == ["TASK", "AGENT", "STATUS", "PRIORITY", "ATTEMPTS",
                                   "CREATED"]
        assert [r.split()[0] for r in rows[1:]] == ids[:-20]
        assert err == ""  # the last page: nothing older to point at
        rc, out, err = await cli(sock, "tasks", "-n", "2", "--before", ids[5])
        assert rc == 0 and [r.split()[0] for r in out.splitlines()[1:]] == ids[3:5]
        assert err == f"older tasks: the same with --before {ids[3]}\n"
        rc, out, err = await cli(sock, "tasks", "--before", "nonsense")
        assert rc != 0 and "before is a task id (the `next` of a page), not nonsense" \
            in err
