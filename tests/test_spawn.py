"""Code-first orchestration (issue 40 item 3; docs/workflows.md#spawn): a running task
spawns tasks of other agents (`task/spawn`) and waits for them (`task/wait`), journaled
as steps so that a resumed orchestrator spawns no child twice.

Real processes: the daemon in this loop (its SQLite journals) and SDK workers
(tests/orchestrator_agent.py) as orchestrator and leaves; the leaves count their runs in
a file, and the orchestrator SIGKILLs itself mid-way."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc
from corral.taskoptions import TaskOptions
from corral.workerproto import MAX_KEY_CHARS

from .conftest import ROOT
from .daemon_harness import PY, in_process

HERE = Path(__file__).parent


def fleet(orch_extra: str = "", env: str = "") -> str:
    return textwrap.dedent(f"""
        [agents.orch]
        command = ["{PY}", "{HERE}/orchestrator_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}"{env} }}
        retries = 1
        max_concurrent_tasks = 4
        spawns = ["leaf", "orch"]
        {orch_extra}

        [agents.leaf]
        command = ["{PY}", "{HERE}/orchestrator_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        max_concurrent_tasks = 8

        [agents.other]
        command = ["{PY}", "{HERE}/orchestrator_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
    """)


def counted(path: Path) -> list[int]:
    return sorted(int(x) for x in path.read_text().split()) if path.exists() else []


async def run(d: Any, task_input: dict[str, Any]) -> Any:
    return await d.sup.tasks.run("orch", task_input, TaskOptions(timeout=120))


async def test_an_orchestrator_spawns_50_children_and_gets_their_outputs(
        tmp_path: Path) -> None:
    count = tmp_path / "count"
    async with in_process(tmp_path, fleet()) as d:
        res = await run(d, {"children": 50, "count": str(count)})
        assert res.status == "succeeded", res
        assert res.output == [i * 2 for i in range(50)]
        assert counted(count) == list(range(50))
        assert d.sup.tasks.spawns.stats() == {"spawned": 50, "replayed": 0}


async def test_an_orchestrator_killed_after_20_spawns_spawns_none_twice(
        tmp_path: Path) -> None:
    count = tmp_path / "count"
    async with in_process(tmp_path, fleet()) as d:
        res = await run(d, {"children": 50, "count": str(count), "stop_after": 20,
                            "marker": str(tmp_path / "marker")})
        assert res.status == "succeeded", res
        assert [a.outcome for a in res.attempts] == ["lost", "succeeded"]
        assert res.output == [i * 2 for i in range(50)]
        # 50 children in all, each run once: the retry's first 20 came from the journal
        assert counted(count) == list(range(50))
        assert d.sup.tasks.spawns.stats() == {"spawned": 50, "replayed": 20}
        db = sqlite3.connect(tmp_path / "state" / "corral.db")
        rows = db.execute("SELECT count(*) FROM call_steps WHERE call_id = ?",
                          (res.task_id,)).fetchone()
        # one row a child, however many attempts spawned it: the tree is one durable call
        assert rows == (50,)


async def test_a_coroutine_orchestrator_resumes_alike_and_maps(tmp_path: Path) -> None:
    count = tmp_path / "count"
    async with in_process(tmp_path, fleet(env=', ORCH_ASYNC = "1"')) as d:
        res = await run(d, {"children": 10, "count": str(count), "stop_after": 4,
                            "marker": str(tmp_path / "marker")})
        assert res.status == "succeeded", res
        assert res.output == [i * 2 for i in range(10)]
        assert counted(count) == list(range(10))
        res = await run(d, {"children": 0, "map": True, "count": str(count)})
        assert res.output == [200, 202, 204]


async def test_map_in_a_plain_handler(tmp_path: Path) -> None:
    count = tmp_path / "count"
    async with in_process(tmp_path, fleet()) as d:
        res = await run(d, {"children": 5, "map": True, "count": str(count)})
        assert res.output == [0, 2, 4, 6, 8]


async def test_refusals_say_why(tmp_path: Path) -> None:
    async with in_process(tmp_path, fleet("max_children = 2\nmax_spawn_depth = 2")) as d:
        res = await run(d, {"children": 1, "agent": "other", "count": "x", "catch": True})
        assert res.output == {"refused": "task/spawn: agent orch may not spawn tasks of "
                              "agent other (its spawns list: ['leaf', 'orch'])",
                              "code": jsonrpc.REFUSED}
        res = await run(d, {"children": 1, "agent": "ghost", "count": "x", "catch": True})
        assert res.output == {"refused": "no such agent: ghost", "code": jsonrpc.NOT_FOUND}
        res = await run(d, {"children": 3, "count": str(tmp_path / "c"), "catch": True})
        assert res.output == {"refused": f"task/spawn: fan-out exceeded: task "
                              f"{res.task_id} has spawned 2 children (max_children 2 of "
                              "agent orch)", "code": jsonrpc.REFUSED}
        # depth: orch -> orch (1) -> orch (2) -> a third level is refused
        res = await run(d, {"recurse": 3})
        deepest = res.output
        assert deepest["status"] == "failed", res
        assert deepest["error"] == (f"RequestError: task/spawn: spawn depth exceeded: a child "
                                    f"of task {deepest['task_id']} would be at depth 3 "
                                    "(max_spawn_depth 2 of agent orch)")
        res = await run(d, {"recurse": 2})
        assert res.output == 2
        other = await d.sup.tasks.run("leaf", {"leaf": True, "n": 1,
                                               "count": str(tmp_path / "c2")})
        res = await run(d, {"wait_for": other.task_id, "catch": True})
        assert res.output == {"refused": f"task/wait: task {other.task_id} is not a child "
                              f"of task {res.task_id}", "code": jsonrpc.INVALID_PARAMS}


@pytest.mark.deadline(120)
async def test_a_child_reaches_no_agent_its_roots_token_could_not(tmp_path: Path) -> None:
    await reach_walk(tmp_path)


async def reach_walk(tmp_path: Path, more: str = "") -> None:
    """A limited token's tree, its children and grandchildren held to its reach (`more`:
    the daemon's config beyond its agents and [http], a [cluster] table: tests/cluster)."""
    from .test_http_api import serving

    count = tmp_path / "count"
    agents = textwrap.dedent(f"""
        [agents.web-orch]
        command = ["{PY}", "{HERE}/orchestrator_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        retries = 1
        max_concurrent_tasks = 4  # a child of its own waits for a slot beside its parent
        spawns = ["web-*", "db"]

        [agents.web-leaf]
        command = ["{PY}", "{HERE}/orchestrator_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}

        [agents.db]
        command = ["{PY}", "{HERE}/orchestrator_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
    """)
    async with serving(tmp_path, agents, more) as api:
        await api.token("web", "tasks:run", "tasks:read", agents="web-*")
        await api.token("all", "tasks:run", "tasks:read")

        async def run_as(token: str, task_input: dict[str, Any]) -> Any:
            status, body, _ = await api.ask("POST", "/tasks?wait=60", token, body={
                "agent": "web-orch", "input": task_input})
            assert status == 200, body
            return body

        mine = {"children": 2, "agent": "web-leaf", "count": str(count), "catch": True}
        assert (await run_as("web", mine))["output"] == [0, 2]
        # db is in the orchestrator's spawns, but not within the web token's reach
        body = await run_as("web", {**mine, "agent": "db"})
        assert body["output"] == {
            "refused": "task/spawn: no agent db within the reach of token web, whose task "
                       "this one descends from (agents web-*)", "code": jsonrpc.NOT_FOUND}
        # a token that reaches every agent: the orchestrator's spawns list is the bound
        assert (await run_as("all", {**mine, "agent": "db"}))["output"] == [0, 2]
        # the reach is kept with the task: a grandchild is bound by it too
        then = {"children": 1, "agent": "db", "count": str(count)}
        body = await run_as("web", {"recurse": 1, "self": "web-orch", "then": then})
        assert body["output"] == {
            "refused": "task/spawn: no agent db within the reach of token web, whose task "
                       "this one descends from (agents web-*)", "code": jsonrpc.NOT_FOUND}
        body = await run_as("all", {"recurse": 1, "self": "web-orch", "then": then})
        assert body["output"] == [0]


async def test_a_spawn_key_past_its_bound_is_refused_and_nothing_spawned(
        tmp_path: Path) -> None:
    count = tmp_path / "count"
    async with in_process(tmp_path, fleet()) as d:
        res = await run(d, {"children": 1, "count": str(count), "catch": True,
                            "key": "k" * (MAX_KEY_CHARS + 1)})
        assert res.output == {
            "refused": f"task/spawn: key must be a non-empty string of at most "
                       f"MAX_KEY_CHARS ({MAX_KEY_CHARS}) characters",
            "code": jsonrpc.INVALID_PARAMS}
        assert [t.agent for t in d.sup.tasks.finished.values()] == ["orch"]
        assert counted(count) == []
        # at the bound, spawned as ever
        res = await run(d, {"children": 1, "count": str(count), "key": "k" * MAX_KEY_CHARS})
        assert res.output == [0] and counted(count) == [0]


async def test_another_tenants_agent_is_no_agent_to_a_spawn(tmp_path: Path) -> None:
    tenants = textwrap.dedent(f"""
        [tenants.a]
        [tenants.b]

        [agents.orch-a]
        command = ["{PY}", "{HERE}/orchestrator_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tenant = "a"
        spawns = ["*"]

        [agents.leaf-b]
        command = ["{PY}", "{HERE}/orchestrator_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tenant = "b"
    """)
    async with in_process(tmp_path, tenants) as d:
        res = await d.sup.tasks.run("orch-a", {"children": 1, "agent": "leaf-b",
                                               "count": "x", "catch": True},
                                                   TaskOptions(timeout=60))
        assert res.output == {"refused": "no such agent: leaf-b", "code": jsonrpc.NOT_FOUND}


async def test_a_worker_cannot_write_corrals_own_steps_nor_spawn_through_them(
        tmp_path: Path) -> None:
    """Attacker's pass: a worker that `step/put`s a spawn's step naming a child of its
    choosing (and a lineage of its own) is refused; its retry's spawn is then checked as
    any new spawn is, and no task of the forged id, nor of the agent it may not spawn,
    exists."""
    fleet_text = textwrap.dedent(f"""
        [agents.orch]
        command = ["{PY}", "{HERE}/forging_agent.py"]
        retries = 1
        spawns = ["leaf"]

        [agents.leaf]
        command = ["{PY}", "{HERE}/orchestrator_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}

        [agents.other]
        command = ["{PY}", "{HERE}/orchestrator_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
    """)
    out = tmp_path / "answers.json"
    async with in_process(tmp_path, fleet_text) as d:
        res = await d.sup.tasks.run("orch", {"out": str(out)}, TaskOptions(timeout=60))
        put_spawn, put_lineage = json.loads(out.read_text())
        assert put_spawn["error"] == {
            "code": jsonrpc.INVALID_PARAMS,
            "message": "step/put: the step name 'spawn:k' is reserved: names beginning "
                       "spawn: or corral/ are corral's own steps"}
        assert put_lineage["error"]["message"].startswith(
            "step/put: the step name 'corral/lineage' is reserved")
        assert res.status == "succeeded", res
        assert res.output == {"jsonrpc": "2.0", "id": 1001, "error": {
            "code": jsonrpc.REFUSED,
            "message": "task/spawn: agent orch may not spawn tasks of agent other (its "
                       "spawns list: ['leaf'])"}}
        with pytest.raises(jsonrpc.RpcError, match="no such task"):
            await d.sup.tasks.info("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
        assert [t for t in d.sup.tasks.finished.values() if t.agent == "other"] == []


async def test_a_tree_ends_with_its_tasks_and_is_pruned_by_the_next_daemon(
        tmp_path: Path) -> None:
    """The tree is one durable call: running while its root runs, ended with the root's
    status once every child has (its rows as their children ended), and gone at the
    next start (read by no one once ended: the task journal's pruning)."""
    count = tmp_path / "count"
    db_path = tmp_path / "state" / "corral.db"
    async with in_process(tmp_path, fleet()) as d:
        res = await run(d, {"children": 3, "count": str(count)})
        assert res.status == "succeeded", res
        await d.sup.tasks.spawns.node.close()  # the rows' ends kept
        db = sqlite3.connect(db_path)
        assert db.execute("SELECT kind, name, status FROM calls WHERE call_id = ?",
                          (res.task_id,)).fetchone() == ("spawn", "orch", "succeeded")
        assert db.execute("SELECT status, count(*) FROM call_steps WHERE call_id = ? "
                          "GROUP BY status", (res.task_id,)).fetchall() == [("succeeded", 3)]
        db.close()
    async with in_process(tmp_path, fleet()) as d:
        await d.sup.tasks.run("leaf", {"leaf": True, "n": 9, "count": str(count)})
        await d.sup.tasks.committed()  # (written after the start's pruning)
        db = sqlite3.connect(db_path)
        assert db.execute("SELECT count(*) FROM calls").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM call_steps").fetchone() == (0,)
        db.close()
