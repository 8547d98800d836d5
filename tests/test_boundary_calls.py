"""Every policy at every door (issue 74, DESIGN section 27, docs/security.md#calls-of-no-task):
a replica's call that names no task it runs — on the worker link, at the MCP gateway's
/mcp and /mcp/NAME with the replica's own token while it runs two tasks — is its
replica's, under its agent's and tenant's policy in full: the agent's `approve` asks a
person (the ask listed by `corral approvals`, owned by the replica's incarnation) and the
call runs only once approved; its incarnation's calls of no task share one
max_tool_calls_per_task, whichever door they came by. At /mcp/corral a replica starts
only the tasks its agent's `spawns` admit, an API token only those its agent glob
admits, and a gateway client of no tenant is the default tenant's, not the operator.

Real processes: a daemon, agents of examples/misbehave.py (a `raw` task sends any worker
request: a `tools/call` with no task_id), the counting MCP server, the official MCP SDK's
client over Streamable HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import signal
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon, running_daemon, shared_tmpdir
from .test_daemon_cli import wait_until
from .test_gateway_stdio import wait_until_async

pytest.importorskip("mcp")
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

HERE = Path(__file__).parent
PLAIN = "plain-gateway-client-token"  # a tokens file's client: no tenant


def config(tmp: Path) -> str:
    agent = textwrap.dedent(f"""
        command = ["{PY}", "{EXAMPLES}/misbehave.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        max_concurrent_tasks = 2
        stop_timeout = 10.0
    """)
    # linked's allowlist admits corral's agents as tools: its `spawns` (none) bounds them
    return (f'[agents.linked]{agent}approve = ["counting__bump"]\n'
            'tools = ["counting__*", "corral__*"]\n\n'
            f"[agents.budgeted]{agent}max_tool_calls_per_task = 2\n"
            'tools = ["counting__*"]\n\n'
            f'[agents.theirs]{agent}tenant = "acme"\ntools = ["counting__*"]\n\n'
            f'[agents.shouty]{agent}tools = ["counting__*"]\napprove = ["counting__*"]\n\n'
            '[tenants.acme]\napprove = ["counting__big"]\n\n'
            f'[mcp_servers.counting]\ncommand = ["{PY}", "{HERE}/servers/counting_mcp.py", '
            f'"{tmp}/server-count"]\nshared = true\n\n'
            '[gateway]\nlisten = "127.0.0.1:0"\ntokens_file = "tokens.toml"\n')


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    tmp = shared_tmpdir()
    digest = hashlib.sha256(PLAIN.encode()).hexdigest()
    (tmp / "tokens.toml").write_text(f'[clients.plain]\ntoken_sha256 = "{digest}"\n')
    with running_daemon(tmp, config(tmp)) as d:
        yield d


def counted(d: Daemon) -> list[str]:
    path = d.dir / "server-count"
    return path.read_text().split() if path.exists() else []


def raw_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A task whose worker sends `tools/call` naming no task (misbehave's `raw`)."""
    return {"do": "raw", "method": "tools/call",
            "params": {"name": name, "arguments": arguments}}


def submit(d: Daemon, agent: str, task_input: dict[str, Any]) -> str:
    task_id: str = d.ask("tasks.submit", {"agent": agent, "input": task_input})["task_id"]
    return task_id


def finished(d: Daemon, task_id: str) -> dict[str, Any]:
    done: dict[str, Any] = d.ask("tasks.get", {"task_id": task_id, "wait": True})
    assert done["status"] == "succeeded", done
    return done


def asks_of(d: Daemon, agent: str) -> list[dict[str, Any]]:
    return [a for a in d.ask("approvals.list")["asks"] if a["agent"] == agent]


def replica_env(d: Daemon, agent: str) -> dict[str, str]:
    """The replica's own gateway address and token, as it was given them."""
    env: dict[str, str] = finished(d, submit(d, agent, {"do": "env"}))["output"]
    return env


@asynccontextmanager
async def session(url: str, token: str, at: str = "") -> AsyncIterator[ClientSession]:
    client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                timeout=httpx2.Timeout(30, read=60))
    async with client, streamable_http_client(url + at, http_client=client) as (r, w), \
            ClientSession(r, w) as s:
        await s.initialize()
        yield s


def text(result: Any) -> str:
    said: str = result.content[0].text
    return said


@asynccontextmanager
async def two_running(d: Daemon, agent: str) -> AsyncIterator[None]:
    """The agent's replica runs two tasks (each waiting for a file) meanwhile: no call
    at its replica's address can be taken for either's."""
    holds = [d.dir / f"{agent}-hold-{i}" for i in range(2)]
    ids = [submit(d, agent, {"do": "await", "path": str(p)}) for p in holds]
    await wait_until_async(lambda: all(d.task(t)["status"] == "running" for t in ids))
    try:
        yield
    finally:
        for p in holds:
            p.touch()
        for t in ids:
            await asyncio.to_thread(finished, d, t)


@pytest.mark.deadline(120)
def test_a_worker_link_call_of_no_task_asks_a_person_and_waits_for_the_decision(
        daemon: Daemon) -> None:
    d = daemon
    task_id = submit(d, "linked", raw_call("counting__bump", {"i": 1}))
    [ask] = wait_until(lambda: asks_of(d, "linked"), 30, "the replica's ask")
    # the replica's incarnation's ask, not the task's: the call named no task
    assert re.fullmatch(r"replica:linked#0:[0-9a-f]{8}", ask["task_id"]), ask
    assert (ask["kind"], ask["attempt"], ask["subject"]) == (
        "approval", 0, {"tool": "counting__bump", "arguments": {"i": 1}})
    listed = d.cli("approvals")
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if ask["id"] in line]
    assert 'approval of counting__bump {"i":1}' in row and ask["task_id"] in row
    # waiting: not made, its task still running
    assert d.task(task_id)["status"] == "running" and "1" not in counted(d)

    approved = d.cli("approvals", "approve", ask["id"])
    assert approved.returncode == 0, approved.stderr
    done = finished(d, task_id)
    assert done["output"]["result"]["content"][0]["text"] == "bumped 1", done
    assert counted(d).count("1") == 1

    # denied: the worker reads the tool's error, and nothing is made
    task_id = submit(d, "linked", raw_call("counting__bump", {"i": 2}))
    [ask] = wait_until(lambda: asks_of(d, "linked"), 30, "the second call's ask")
    assert d.cli("approvals", "deny", ask["id"], "--reason", "no").returncode == 0
    result = finished(d, task_id)["output"]["result"]
    assert result["isError"] is True
    assert re.fullmatch(rf"tool call counting__bump was denied by uid \d+ pid \d+ "
                        rf"\(ask {ask['id']}\): no", result["content"][0]["text"]), result
    assert "2" not in counted(d)


@pytest.mark.deadline(120)
async def test_a_gateway_call_of_no_task_asks_at_mcp_and_at_the_servers_own_path(
        daemon: Daemon) -> None:
    """The replica's own token while it runs two tasks: at /mcp approved, the call
    runs once; at /mcp/counting denied, the client reads the tool's error."""
    d = daemon
    env = await asyncio.to_thread(replica_env, d, "linked")
    url, token = env["CORRAL_MCP_URL"], env["CORRAL_MCP_TOKEN"]
    async with two_running(d, "linked"):
        for at, tool, i, decision in (("", "counting__bump", 11, "approve"),
                                      ("/counting", "bump", 12, "deny")):
            async with session(url, token, at) as s:
                call = asyncio.ensure_future(s.call_tool(tool, {"i": i}))
                await wait_until_async(lambda c=call: asks_of(d, "linked") or c.done())
                assert not call.done(), call.result()
                [ask] = asks_of(d, "linked")
                assert ask["task_id"].startswith("replica:linked#0:"), ask
                assert ask["subject"] == {"tool": "counting__bump", "arguments": {"i": i}}
                assert str(i) not in counted(d)
                said = await asyncio.to_thread(d.cli, "approvals", decision, ask["id"])
                assert said.returncode == 0, said.stderr
                result = await call
            if decision == "approve":
                assert (text(result), result.is_error) == (f"bumped {i}", False)
                assert counted(d).count(str(i)) == 1
            else:
                assert result.is_error and text(result).startswith(
                    "tool call counting__bump was denied by "), text(result)
                assert str(i) not in counted(d)


@pytest.mark.deadline(120)
async def test_calls_of_no_task_share_their_incarnations_tool_budget_at_every_door(
        daemon: Daemon) -> None:
    """max_tool_calls_per_task 2: one call on the worker link, one at /mcp, and the
    third — at /mcp/counting, or on the worker link — is refused naming the budget."""
    d = daemon
    made = finished(d, submit(d, "budgeted", raw_call("counting__bump", {"i": 21})))
    assert made["output"]["result"]["content"][0]["text"] == "bumped 21", made
    env = await asyncio.to_thread(replica_env, d, "budgeted")
    url, token = env["CORRAL_MCP_URL"], env["CORRAL_MCP_TOKEN"]
    refusal = ("tool budget exceeded: replica budgeted#0 has made 2 tool calls of no "
               "task (max_tool_calls_per_task 2, counted per incarnation for calls that "
               "name no task)")
    async with two_running(d, "budgeted"):
        async with session(url, token) as s:
            assert text(await s.call_tool("counting__bump", {"i": 22})) == "bumped 22"
        async with session(url, token, "/counting") as s:
            with pytest.raises(MCPError) as err:
                await s.call_tool("bump", {"i": 23})
            assert str(err.value) == refusal
    refused = finished(d, submit(d, "budgeted", raw_call("counting__bump", {"i": 24})))
    assert refused["output"] == {"error": jsonrpc.TOOL_BUDGET_EXCEEDED,
                                 "message": refusal}, refused
    assert [n for n in counted(d) if n.startswith("2")] == ["21", "22"]


@pytest.mark.deadline(120)
async def test_at_mcp_corral_spawns_globs_and_tenants_hold(daemon: Daemon) -> None:
    d = daemon
    env = await asyncio.to_thread(replica_env, d, "linked")
    url, token = env["CORRAL_MCP_URL"], env["CORRAL_MCP_TOKEN"]
    before = len(d.ask("tasks.list", {})["tasks"])

    # an agent with no `spawns` starts no task here, nor sees any agent as a tool
    async with session(url, token, "/corral") as s:
        assert (await s.list_tools()).tools == []
        with pytest.raises(MCPError) as err:
            await s.call_tool("budgeted", {"do": "echo"})
        assert str(err.value) == (  # (the chain's view link's one form: decision 1690)
            "tool corral__budgeted is not allowed for agent linked (its tools allowlist: "
            "['counting__*', 'corral__*']; its spawns list [] does not name agent "
            "budgeted)")

    # an API token limited to budg* runs those agents alone, as the API would
    made = d.cli("token", "create", "budg-only", "--scope", "mcp:call", "--agents", "budg*",
                 "--json")
    assert made.returncode == 0, made.stderr
    globbed = json.loads(made.stdout)["token"]
    async with session(url, globbed, "/corral") as s:
        assert [t.name for t in (await s.list_tools()).tools] == ["budgeted"]
        with pytest.raises(MCPError) as err:
            await s.call_tool("linked", {"do": "echo"})
        assert str(err.value) == ("tool corral__linked is not allowed for gateway client "
                                  "token budg-only (its tools allowlist: "
                                  "['corral__budg*'])")
        ran = await s.call_tool("budgeted", {"do": "echo", "n": 1})
        assert not ran.is_error and json.loads(text(ran)) == {"do": "echo", "n": 1}

    # a tokens file's client of no tenant is the default tenant's: acme's agent is none
    # of its own, unseen and not run
    async with session(url, PLAIN, "/corral") as s:
        names = [t.name for t in (await s.list_tools()).tools]
        assert sorted(names) == ["budgeted", "linked", "shouty"], names
        with pytest.raises(MCPError) as err:
            await s.call_tool("theirs", {"do": "echo"})
        assert str(err.value) == "no such agent: theirs (agents: budgeted, linked, shouty)"
    agents = [t["agent"] for t in d.ask("tasks.list", {})["tasks"]]
    # of every task started here, the token's one alone
    assert (len(agents) - before, agents.count("theirs")) == (1, 0), agents


@pytest.mark.deadline(120)
def test_an_agents_newline_draws_no_row_of_its_own_in_corral_approvals(
        daemon: Daemon) -> None:
    """A tool name is the agent's to choose: a newline in it, and a terminal's escape,
    are shown escaped in the ask's one row, never as a row (or a sequence) of their
    own."""
    d = daemon
    forged = "counting__bump\nask-0000000000000000  approval  t-1  writer  \x1b[2J"
    task_id = submit(d, "shouty", raw_call(forged, {}))
    [ask] = wait_until(lambda: asks_of(d, "shouty"), 30, "the forged call's ask")
    for args in (("approvals",), ("approvals", "show", ask["id"])):
        shown = d.cli(*args)
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert "\x1b" not in shown.stdout, shown.stdout
        assert not any(line.startswith("ask-0000") for line in lines), lines
        [row] = [line for line in lines if ask["id"] in line]
        assert "counting__bump\\nask-0000000000000000  approval" in row, row
        assert "\\x1b[2J" in row, row
    assert d.cli("approvals", "deny", ask["id"]).returncode == 0
    finished(d, task_id)


@pytest.mark.deadline(120)
def test_a_replicas_ask_left_pending_by_a_killed_daemon_is_withdrawn_at_the_next_start(
        ) -> None:
    """The call that waited died with the daemon (SIGKILLed): the next daemon ends its
    ask withdrawn, and nothing is made."""
    tmp = shared_tmpdir()
    (tmp / "tokens.toml").write_text("")
    d = Daemon(tmp, config(tmp))
    try:
        d.start()
        submit(d, "linked", raw_call("counting__bump", {"i": 31}))
        [ask] = wait_until(lambda: asks_of(d, "linked"), 30, "the replica's ask")
        d.stop(signal.SIGKILL)
        d.start()
        # (its task's retry, if it runs, asks anew: as the new incarnation's)
        assert ask["id"] not in [a["id"] for a in asks_of(d, "linked")]
        ended = d.ask("approvals.get", {"id": ask["id"]})
        assert (ended["end"], ended["by"]) == ("withdrawn", "corral"), ended
        refused = d.cli("approvals", "approve", ask["id"])
        assert refused.returncode == 1
        assert f"ask {ask['id']} has ended: withdrawn by corral at " in refused.stderr
        assert "31" not in counted(d)
    finally:
        d.close()


@pytest.mark.deadline(120)
def test_a_tenants_approve_holds_a_call_of_no_task_whatever_its_agent_says(
        daemon: Daemon) -> None:
    """acme's `approve` names counting__big; its agent's table names nothing: the call
    of no task waits for a person all the same, the ask its tenant's."""
    d = daemon
    task_id = submit(d, "theirs", raw_call("counting__big", {"kb": 1}))
    [ask] = wait_until(lambda: asks_of(d, "theirs"), 30, "the tenant's ask")
    assert (ask["tenant"], ask["subject"]["tool"]) == ("acme", "counting__big"), ask
    assert ask["task_id"].startswith("replica:theirs#0:")
    assert d.task(task_id)["status"] == "running"
    assert d.cli("approvals", "approve", ask["id"]).returncode == 0
    result = finished(d, task_id)["output"]["result"]
    assert result["isError"] is False and len(result["content"][0]["text"]) == 1024
