"""The step journal's bounds a tenant's caller cannot lift (issue 52): an agent's
`max_step_bytes` is capped by its tenant's (`[tenants.NAME] max_step_bytes`) and a
tenant's caller may not give one 0 (no bound) or more than that ceiling, nor lift the
bounds of its sessions and spawn trees past their defaults; a tenant's
unfinished tasks together journal at most its `max_step_journal_bytes`. Each refusal
names its bound; the operator keeps every value."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
from collections.abc import Iterator
from typing import Any

import aiohttp
import msgspec
import pytest

from corral import jsonrpc
from corral.daemon.steps import KEEP_ENDED

from .conftest import ROOT
from .daemon_harness import PY, Daemon, free_port, running_daemon, shared_tmpdir

# steps of `size` bytes under names s0, s1, ... until one is refused ([kept, code,
# message]) or all are kept ([count]); with `wait`, it then waits for that file to exist
JOURNALER = '''
import os, time
from corral.worker import RequestError, run

def handle(task, ctx):
    kept = 0
    for i in range(task["count"]):
        try:
            ctx._call("step/put", {"task_id": ctx.task_id, "name": f"s{i}",
                                   "result": "x" * task["size"]})
        except RequestError as exc:
            return [kept, exc.code, exc.message]
        kept += 1
    if task.get("wait"):
        ctx.progress(kept, message="holding")
        ctx.emit("holding")  # (its steps answered: each is committed)
        while not os.path.exists(task["wait"]):
            ctx.check_cancelled()
            time.sleep(0.01)
    return [kept]

run(handle)
'''
STEP = 100_000 + 2 + 2  # a step's result ("x" * 100000 as JSON) and its name ("s0")
TENANT_STEP_BYTES = 300_000
JOURNAL_BYTES = 500_000


def agent(name: str, tenant: str, extra: str = "") -> str:
    return (f'[agents.{name}]\ncommand = ["{PY}", "journaler.py"]\n'
            f'env = {{ PYTHONPATH = "{ROOT}" }}\ntenant = "{tenant}"\nretries = 1\n{extra}')


@pytest.fixture
def daemon() -> Iterator[tuple[Daemon, str]]:
    tmp = shared_tmpdir()
    (tmp / "journaler.py").write_text(JOURNALER)
    port = free_port()
    with running_daemon(tmp, f"""
[tenants.acme]
max_step_bytes = {TENANT_STEP_BYTES}
max_step_journal_bytes = {JOURNAL_BYTES}

[tenants.globex]

{agent("capped", "acme", "max_step_bytes = 0")}
{agent("hold", "acme")}
{agent("fill", "acme")}
{agent("free", "globex")}
[http]
listen = "127.0.0.1:{port}"
""") as d:
        yield d, f"http://127.0.0.1:{port}/api/v1"


def run(d: Daemon, name: str, task: dict[str, Any]) -> tuple[str, list[Any]]:
    """A task to its end through the CLI: its id and its output."""
    done = d.json("run", name, "--input", json.dumps(task))
    assert done["status"] == "succeeded", done
    return done["task_id"], done["output"]


def use(d: Daemon, tenant: str) -> int:
    entry = next(t for t in d.json("tenants")["tenants"] if t["name"] == tenant)
    held: int = entry["use"]["step_journal_bytes"]
    return held


def test_a_tenants_max_step_bytes_caps_an_agent_the_operator_left_unbounded(
        daemon: tuple[Daemon, str]) -> None:
    d, _ = daemon
    task_id, out = run(d, "capped", {"count": 10, "size": 100_000})
    assert out == [3, jsonrpc.STEP_BUDGET_EXCEEDED, (
        f"step budget exceeded: task {task_id} has journaled {3 * STEP} bytes of step "
        f"results (tenant acme's max_step_bytes {TENANT_STEP_BYTES}); nothing more of it "
        "can be kept for a retry")]
    # a tenant without one: the agent's own (the default) is all there is
    assert run(d, "free", {"count": 10, "size": 100_000})[1] == [10]
    assert d.json("stats")["tasks"]["steps"]["refused"] == 1


async def test_a_tenants_unfinished_tasks_journal_at_most_its_bound_together(
        daemon: tuple[Daemon, str]) -> None:
    d, _ = daemon
    gate = d.dir / "let-go"
    held = await asyncio.to_thread(d.json, "submit", "hold", "--input", json.dumps(
        {"count": 3, "size": 100_000, "wait": str(gate)}))
    try:
        await asyncio.to_thread(holding, d, held["task_id"])
        assert await asyncio.to_thread(use, d, "acme") == 3 * STEP
        # another of acme's tasks: refused once acme's tasks hold the bound together
        task_id, out = await asyncio.to_thread(run, d, "fill", {"count": 10,
                                                                "size": 100_000})
        assert out == [2, jsonrpc.STEP_BUDGET_EXCEEDED, (
            f"step budget exceeded: tenant acme's unfinished tasks have journaled "
            f"{5 * STEP} bytes of step results (max_step_journal_bytes {JOURNAL_BYTES}); "
            f"nothing more of task {task_id} can be kept for a retry")]
        # its bytes leave the count as it ends; globex's tasks never were in it
        assert await asyncio.to_thread(use, d, "acme") == 3 * STEP
        assert (await asyncio.to_thread(run, d, "free", {"count": 8, "size": 100_000})
                )[1] == [8]
        assert await asyncio.to_thread(use, d, "globex") == 0
    finally:
        gate.touch()
    done = await asyncio.to_thread(d.json, "task", held["task_id"], "--wait")
    assert done["output"] == [3]
    assert await asyncio.to_thread(use, d, "acme") == 0
    assert (await asyncio.to_thread(run, d, "fill", {"count": 2, "size": 100_000}))[1] == [2]


async def tokens(d: Daemon) -> dict[str, str]:
    """acme's, globex's and the operator's tokens that add agents, by name."""
    secrets = {}
    for name, tenant in (("acme-ci", ["--tenant", "acme"]),
                         ("globex-ci", ["--tenant", "globex"]), ("ops", [])):
        made = await asyncio.to_thread(d.json, "token", "create", name, "--scope",
                                       "agents:write", "--scope", "agents:read", *tenant)
        secrets[name] = made["token"]
    return secrets


async def add(base: str, secret: str, name: str, tenant: str | None, **keys: Any
              ) -> tuple[int, dict[str, Any]]:
    table = {"command": [PY, "journaler.py"], **keys}
    if tenant is not None:
        table["tenant"] = tenant
    async with aiohttp.ClientSession() as http, http.post(
            f"{base}/agents", json={"agents": {name: table}},
            headers={"Authorization": f"Bearer {secret}"}) as r:
        return r.status, await r.json()


def refused(token: str, tenant: str, key: str, shown: str, theirs: str) -> str:
    return (f"forbidden: token {token} is a caller of tenant {tenant}: "
            f"agents.greedy.{key}: {shown} is past {theirs}; who runs what, where "
            "is the operator's (docs/tenants.md)")


async def test_a_tenants_caller_cannot_lift_max_step_bytes(
        daemon: tuple[Daemon, str]) -> None:
    d, base = daemon
    secrets = await tokens(d)
    for token, tenant, value, theirs in (
            ("globex-ci", "globex", 0, "the default 67108864 (tenant globex sets no "
                                       "max_step_bytes)"),
            ("globex-ci", "globex", 128 << 20, "the default 67108864 (tenant globex sets "
                                               "no max_step_bytes)"),
            ("acme-ci", "acme", 0, f"tenant acme's max_step_bytes {TENANT_STEP_BYTES}"),
            ("acme-ci", "acme", TENANT_STEP_BYTES + 1,
             f"tenant acme's max_step_bytes {TENANT_STEP_BYTES}")):
        status, body = await add(base, secrets[token], "greedy", tenant,
                                 max_step_bytes=value)
        shown = "0 (no bound)" if value == 0 else str(value)
        assert (status, body["detail"]) == (403, refused(token, tenant, "max_step_bytes",
                                                         shown, theirs)), body
    names = {a["name"] for a in (await asyncio.to_thread(d.json, "status"))["agents"]}
    assert "greedy" not in names  # nothing added
    # within the ceiling, or the default left as it is, passes; the operator sets anything
    assert (await add(base, secrets["acme-ci"], "within", "acme",
                      max_step_bytes=1000))[0] == 200
    assert (await add(base, secrets["acme-ci"], "plain", "acme"))[0] == 200
    assert (await add(base, secrets["globex-ci"], "plain-g", "globex"))[0] == 200
    assert (await add(base, secrets["ops"], "unbounded", "globex",
                      max_step_bytes=0))[0] == 200


async def test_a_tenants_caller_cannot_lift_what_its_agent_makes_the_daemon_keep(
        daemon: tuple[Daemon, str]) -> None:
    """Sessions (their count and state), live output and spawn trees (fan-out and depth)
    are bounded by keys of the agent's: a tenant's caller may lower each, never lift one
    past its default (0 is no bound for the sessions' and the output's keys, none at all
    for a spawn's)."""
    d, base = daemon
    secrets = await tokens(d)
    for key, value, theirs in (
            ("max_sessions", 0, "the default 10000 (tenant globex sets no max_sessions)"),
            ("max_sessions", 10_001, "the default 10000 (tenant globex sets no "
                                     "max_sessions)"),
            ("max_session_bytes", 0, "the default 1073741824 (tenant globex sets no "
                                     "max_session_bytes)"),
            ("max_stream_bytes", 0, "the default 16777216 (tenant globex sets no "
                                    "max_stream_bytes)"),
            ("max_stream_bytes", 16777217, "the default 16777216 (tenant globex sets no "
                                           "max_stream_bytes)"),
            ("max_children", 1001, "the default 1000"),
            ("max_spawn_depth", 4, "the default 3")):
        status, body = await add(base, secrets["globex-ci"], "greedy", "globex",
                                 **{key: value})
        shown = "0 (no bound)" if value == 0 else str(value)
        assert (status, body["detail"]) == (403, refused("globex-ci", "globex", key, shown,
                                                         theirs)), body
    names = {a["name"] for a in (await asyncio.to_thread(d.json, "status"))["agents"]}
    assert "greedy" not in names
    # lowered passes (0 children: it may spawn none), and the operator lifts any
    assert (await add(base, secrets["globex-ci"], "lean", "globex", max_sessions=5,
                      max_session_bytes=1000, max_children=0, max_spawn_depth=0))[0] == 200
    assert (await add(base, secrets["ops"], "wide", "globex", max_sessions=0,
                      max_children=100_000, max_spawn_depth=10))[0] == 200


def holding(d: Daemon, task_id: str) -> None:
    """Until the held task's worker says it holds (its live output's "holding", read from
    `tasks.stream` on the control socket as it comes): its steps were answered, so kept."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(d.sock))
        s.settimeout(60)  # a limit, not a wait: the chunk ends it
        s.sendall(msgspec.json.encode({"jsonrpc": "2.0", "id": 1, "method": "tasks.stream",
                                       "params": {"task_id": task_id}}) + b"\n")
        buf = b""
        while True:
            *lines, buf = buf.split(b"\n")
            for line in lines:
                msg = msgspec.json.decode(line)
                if msg.get("method") == "tasks.output" and msg["params"]["data"] == (
                        "holding"):
                    return
                assert msg.get("id") != 1, f"the stream ended first: {msg}"
            got = s.recv(65536)
            assert got, "the daemon hung up"
            buf += got


def rows(d: Daemon, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(d.state / "corral.db")
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def test_an_ended_tasks_steps_leave_the_journal_and_an_unfinished_ones_stay() -> None:
    """No attempt follows an end: a task's steps go at the task journal's pruning once it
    has ended KEEP_ENDED seconds before (they stayed until the task itself was pruned,
    up to journal_max_tasks of them), while a task the next daemon runs again keeps
    its own."""
    tmp = shared_tmpdir()
    (tmp / "journaler.py").write_text(JOURNALER)
    gate = tmp / "let-go"
    with running_daemon(tmp, agent("w", "default", "drain_timeout = 0.2\n")) as d:
        ended, out = run(d, "w", {"count": 2, "size": 300_000})  # results are files too
        assert out == [2]
        held = d.json("submit", "w", "--input", json.dumps(
            {"count": 2, "size": 1000, "wait": str(gate)}))["task_id"]
        holding(d, held)
        # the daemon stops (the held task handed to the next one, unfinished): the step
        # log is in the database, the ended task's steps kept a while after its end
        assert d.stop() == 0
        steps = "SELECT task_id, count(*) FROM steps GROUP BY task_id ORDER BY task_id"
        assert rows(d, steps) == sorted([(ended, 2), (held, 2)])
        assert len(list((d.state / "step-results").iterdir())) == 1  # one result, stored once
        # and the ended task's end is made older than KEEP_ENDED
        db = sqlite3.connect(d.state / "corral.db")
        with db:
            db.execute("UPDATE tasks SET finished = finished - ? WHERE id = ?",
                       (KEEP_ENDED + 1, ended))
        db.close()
        d.start()
        gate.touch()
        assert d.json("task", held, "--wait")["output"] == [2]  # run again, to its end
        assert rows(d, steps) == [(held, 2)]
        assert rows(d, "SELECT count(*) FROM step_results WHERE size >= 300000") == [(0,)]
        assert list((d.state / "step-results").iterdir()) == []
