"""An agent's call of an agent at /mcp/corral at its attempt's address is its task's
spawn (issue 74, DESIGN 27): the same bounds as `ctx.spawn` — `max_children`,
`max_spawn_depth`, cancelled with its parent — after the same tool path as its worker's
`tools/call` (policy, approvals, the task's tool budget), never counted in its replica's
window of calls of no task. A client of the tasks extension whose call waits for a
person is given its handle at once.

Real processes: a daemon, agents of examples/misbehave.py, the official MCP SDK's
client over Streamable HTTP."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon, running_daemon, shared_tmpdir
from .test_attacks_newest import stateless
from .test_daemon_cli import wait_until
from .test_gateway_stdio import wait_until_async
from .test_http_mcp import mcp_session as session

pytest.importorskip("mcp")
from mcp.shared.exceptions import MCPError


def config() -> str:
    agent = textwrap.dedent(f"""
        command = ["{PY}", "{EXAMPLES}/misbehave.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        max_concurrent_tasks = 3
        stop_timeout = 10.0
        tools = ["corral__*"]
    """)
    askers = "".join(f'[agents.{name}]{agent}spawns = ["minion"]\n'
                     'approve = ["corral__minion"]\nmax_tool_calls_per_task = 1\n\n'
                     for name in ("asker", "asker-mcp"))  # (asker-mcp: its budget at /mcp)
    return (f'[agents.boss]{agent}spawns = ["minion"]\nmax_children = 1\n\n'
            f'[agents.deep]{agent}spawns = ["minion"]\nmax_spawn_depth = 0\n\n{askers}'
            f"[agents.minion]{agent}\n"
            '[gateway]\nlisten = "127.0.0.1:0"\n')


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    tmp = shared_tmpdir()
    with running_daemon(tmp, config()) as d:
        yield d


def submit(d: Daemon, agent: str, task_input: dict[str, Any]) -> str:
    task_id: str = d.ask("tasks.submit", {"agent": agent, "input": task_input})["task_id"]
    return task_id


def replica_env(d: Daemon, agent: str) -> dict[str, str]:
    done = d.ask("tasks.get", {"task_id": submit(d, agent, {"do": "env"}), "wait": True})
    assert done["status"] == "succeeded", done
    env: dict[str, str] = done["output"]
    return env


def tasks_of(d: Daemon, agent: str) -> list[dict[str, Any]]:
    return [t for t in d.ask("tasks.list", {})["tasks"] if t["agent"] == agent]


def asks_of(d: Daemon, agent: str) -> list[dict[str, Any]]:
    return [a for a in d.ask("approvals.list")["asks"] if a["agent"] == agent]


@asynccontextmanager
async def holding(d: Daemon, agent: str) -> AsyncIterator[tuple[str, str, str]]:
    """A task of `agent` running (waiting for a file): (its id, its attempt's address at
    /mcp/corral, its replica's token)."""
    env = await asyncio.to_thread(replica_env, d, agent)
    hold = d.dir / f"{agent}-hold"
    hold.unlink(missing_ok=True)
    task_id = await asyncio.to_thread(submit, d, agent, {"do": "await", "path": str(hold)})
    await wait_until_async(lambda: d.task(task_id)["status"] == "running")
    try:
        yield (task_id, f"{env['CORRAL_MCP_URL']}/corral?task={task_id}&attempt=1",
               env["CORRAL_MCP_TOKEN"])
    finally:
        hold.touch()
        await asyncio.to_thread(d.ask, "tasks.get", {"task_id": task_id, "wait": True})


def text(result: Any) -> str:
    said: str = result.content[0].text
    return said


@pytest.mark.deadline(120)
async def test_an_attempts_call_of_an_agent_is_its_spawn_within_max_children_and_depth(
        daemon: Daemon) -> None:
    d = daemon
    before = {t["task_id"] for t in tasks_of(d, "minion")}  # (the module's other tests')
    async with holding(d, "boss") as (task_id, url, token), session(url, token) as s:
        ran = await s.call_tool("minion", {"do": "echo", "n": 1})
        assert not ran.is_error and json.loads(text(ran)) == {"do": "echo", "n": 1}
        child = (ran.meta or {})["corral/task"]
        assert [t["task_id"] for t in tasks_of(d, "minion")
                if t["task_id"] not in before] == [child]
        with pytest.raises(MCPError) as err:
            await s.call_tool("minion", {"do": "echo", "n": 2})
        assert str(err.value) == (f"task/spawn: fan-out exceeded: task {task_id} has "
                                  "spawned 1 child (max_children 1 of agent boss)")
    async with holding(d, "deep") as (task_id, url, token), session(url, token) as s:
        with pytest.raises(MCPError) as err:
            await s.call_tool("minion", {"do": "echo", "n": 3})
        assert str(err.value) == (f"task/spawn: spawn depth exceeded: a child of task "
                                  f"{task_id} would be at depth 1 (max_spawn_depth 0 of "
                                  "agent deep)")
    assert len(tasks_of(d, "minion")) == len(before) + 1  # the refused calls spawned nothing


@pytest.mark.deadline(120)
async def test_a_retrys_same_call_of_an_agent_is_answered_with_the_same_child(
        daemon: Daemon) -> None:
    """The spawn is journaled as its task's step: boss's worker killed (the attempt lost,
    retried), the next attempt's same call at its own address is answered with the
    child the first made, and no second child is spawned."""
    d = daemon
    env = await asyncio.to_thread(replica_env, d, "boss")
    hold = d.dir / "boss-retried"
    parent = await asyncio.to_thread(submit, d, "boss", {"do": "await", "path": str(hold)})
    await wait_until_async(lambda: d.task(parent)["status"] == "running")
    url = f"{env['CORRAL_MCP_URL']}/corral?task={parent}&attempt=1"
    async with session(url, env["CORRAL_MCP_TOKEN"]) as s:
        first = await s.call_tool("minion", {"do": "echo", "n": 6})
    assert not first.is_error, first
    child = (first.meta or {})["corral/task"]
    spawned = len(tasks_of(d, "minion"))
    killed = await asyncio.to_thread(d.ask, "agents.signal", {"names": ["boss"],
                                                              "signal": "KILL"})
    assert killed, killed
    await wait_until_async(lambda: len(d.task(parent)["attempts"]) == 2
                           and d.task(parent)["status"] == "running")
    env = await asyncio.to_thread(replica_env, d, "boss")  # the new replica's token
    url = f"{env['CORRAL_MCP_URL']}/corral?task={parent}&attempt=2"
    async with session(url, env["CORRAL_MCP_TOKEN"]) as s:
        again = await s.call_tool("minion", {"do": "echo", "n": 6})
    assert (again.meta or {})["corral/task"] == child
    assert json.loads(text(again)) == {"do": "echo", "n": 6}
    assert len(tasks_of(d, "minion")) == spawned
    hold.touch()
    done = await asyncio.to_thread(d.ask, "tasks.get", {"task_id": parent, "wait": True})
    assert done["status"] == "succeeded", done


@pytest.mark.deadline(120)
async def test_an_attempts_call_of_an_agent_asks_for_the_task_and_spends_its_budget(
        daemon: Daemon) -> None:
    """asker's `approve` names corral__minion, its max_tool_calls_per_task is 1: the
    call waits for a person as its task's (the ask names the task, not the replica),
    and the task's second call is past its tool budget."""
    d = daemon
    async with holding(d, "asker") as (task_id, url, token), session(url, token) as s:
        call = asyncio.ensure_future(s.call_tool("minion", {"do": "echo", "n": 4}))
        await wait_until_async(lambda: asks_of(d, "asker") or call.done())
        assert not call.done(), call.result()
        [ask] = asks_of(d, "asker")
        assert (ask["task_id"], ask["subject"]) == (
            task_id, {"tool": "corral__minion", "arguments": {"do": "echo", "n": 4}}), ask
        said = await asyncio.to_thread(d.cli, "approvals", "approve", ask["id"])
        assert said.returncode == 0, said.stderr
        ran = await call
        assert not ran.is_error and json.loads(text(ran)) == {"do": "echo", "n": 4}
        with pytest.raises(MCPError) as err:
            await s.call_tool("minion", {"do": "echo", "n": 5})
        assert str(err.value) == (f"tool budget exceeded: task {task_id} has made 1 tool "
                                  "call (max_tool_calls_per_task 1)")


@pytest.mark.deadline(120)
@pytest.mark.parametrize("at", ["/corral", ""])
async def test_a_tasks_extension_clients_call_held_for_a_person_is_given_its_handle_at_once(
        daemon: Daemon, at: str) -> None:
    """asker's replica's call of no task at /mcp/corral (and at /mcp, as corral__minion:
    decision 1806), of a client of the tasks extension: the handle comes back while a
    person decides (it held the request until then), and reads the child's result once
    approved."""
    d = daemon
    n, asker = (7, "asker") if at else (9, "asker-mcp")  # (a replica's budget of its own)
    env = await asyncio.to_thread(replica_env, d, asker)
    url, token = env["CORRAL_MCP_URL"] + at, env["CORRAL_MCP_TOKEN"]
    handle = await asyncio.to_thread(stateless, url, token, "tools/call", {
        "name": "minion" if at else "corral__minion", "arguments": {"do": "echo", "n": n}})
    assert (handle["result"]["resultType"], handle["result"]["status"]) == (
        "task", "working"), handle
    [ask] = await asyncio.to_thread(wait_until, lambda: asks_of(d, asker) or None, 30,
                                    "the replica's ask")
    assert ask["task_id"].startswith(f"replica:{asker}#0:"), ask
    got = await asyncio.to_thread(stateless, url, token, "tasks/get",
                                  {"taskId": handle["result"]["taskId"]})
    assert got["result"]["status"] == "working", got
    said = await asyncio.to_thread(d.cli, "approvals", "approve", ask["id"])
    assert said.returncode == 0, said.stderr

    def ended() -> dict[str, Any] | None:
        now: dict[str, Any] = stateless(url, token, "tasks/get",
                                        {"taskId": handle["result"]["taskId"]})["result"]
        return now if now["status"] != "working" else None
    done = await asyncio.to_thread(wait_until, ended, 30, "the handle's end")
    assert done["status"] == "completed" and not done["result"]["isError"], done
    assert json.loads(done["result"]["content"][0]["text"]) == {"do": "echo", "n": n}


@pytest.mark.deadline(120)
def test_on_the_worker_link_a_tasks_call_of_an_agent_is_its_spawn_and_one_of_no_task_its_own(
        daemon: Daemon) -> None:
    """The same door from the worker: `ctx.call_tool("corral__minion")` spawns within
    boss's max_children 1; a `tools/call` of it naming no task (boss has three slots, so
    no task is the call's) is a task of its own, no spawn, beyond max_children: until
    decision 1830 it went on to the pool, "no such tool", and started nothing."""
    d = daemon
    spawned = len(tasks_of(d, "minion"))
    task_id = submit(d, "boss", {"do": "tools", "tool": "corral__minion", "times": 2,
                                 "arguments": {"do": "echo", "n": 8}})
    done = d.ask("tasks.get", {"task_id": task_id, "wait": True})
    assert done["status"] == "succeeded", done
    made, refused = done["output"]
    assert (made["isError"], made["structuredContent"]) == (False, {"do": "echo", "n": 8})
    assert refused["message"] == (f"task/spawn: fan-out exceeded: task {task_id} has "
                                  "spawned 1 child (max_children 1 of agent boss)"), refused
    raw = d.ask("tasks.get", {"task_id": submit(d, "boss", {
        "do": "raw", "method": "tools/call",
        "params": {"name": "corral__minion", "arguments": {"do": "echo", "n": 9}}}),
        "wait": True})
    result = raw["output"]["result"]
    assert (result["isError"], result["structuredContent"]) == (False, {"do": "echo", "n": 9})
    own = d.task(result["_meta"]["corral/task"])
    assert own["agent"] == "minion" and own["status"] == "succeeded", own
    assert len(tasks_of(d, "minion")) == spawned + 2
