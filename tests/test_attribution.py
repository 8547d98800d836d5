"""Gateway tool calls attributed to their task attempt (issue 54 item 1, decision 568,
corral/daemon/attribution.py): an agent that reaches its tools through corral's MCP gateway
with any MCP client, not corral's SDK, has each call made a step of its task — journaled,
answered from the journal on a retry (the MCP server not called again), counted once in
the task's tool budget, a span under the attempt. Calls that are no attempt's are made
as before and counted; an attempt's address opens nothing once the attempt has ended,
nor to another tenant's replica.

Real processes: the daemon in this loop with its HTTP gateway, a worker that makes its
calls with the official MCP SDK's client and SIGKILLs itself (tests/
gateway_durable_agent.py), and a stdio MCP server that counts its calls in a file
(tests/servers/counting_mcp.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral import methods as m
from corral.daemon.attribution import AttemptMark, mark_of
from corral.daemon.caller import Caller
from corral.taskoptions import TaskOptions

from .conftest import ROOT, SPARED
from .daemon_harness import PY, counting_fleet, in_process

HERE = Path(__file__).parent
OPERATOR = Caller(via="socket")
httpx2 = pytest.importorskip("httpx2")
pytest.importorskip("mcp")


def fleet(tmp: Path, agent_extra: str = "", more: str = "") -> str:
    return (counting_fleet(tmp, "gw", "gateway_durable_agent.py", agent_extra,
                           "shared = true") + textwrap.dedent(more))


GATEWAY = """
[gateway]
listen = "127.0.0.1:0"
"""
TRACED = GATEWAY + "[tracing]\nexport_interval = 0.05\n"
# a test whose worker is killed starts it again: the MCP SDK's client imported once, by a
# zygote, and each start a fork of it (decision 963), not ~0.8 s of CPU again
PRELOAD = 'preload = ["httpx2", "mcp", "mcp.client.streamable_http"]'


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def run_task(d: Any, task_input: dict[str, Any], agent: str = "gw") -> Any:
    return await d.sup.tasks.run(agent, task_input, TaskOptions(timeout=60))


async def gateway_status(d: Any) -> m.GatewayStats:
    # the engine's answer is its wire twin's dict (mcphandlers.gateway_status)
    return msgspec.convert(await d.dispatcher.call(OPERATOR, "gateway.status", {}),
                           m.GatewayStats)


async def cli(d: Any, *args: str) -> str:
    """`corral ARGS` against the daemon's socket: its stdout (the program is the test's
    own child, spared by the daemon's containment; waited for in a thread, as the daemon
    answering it runs on this loop)."""
    proc = subprocess.Popen([PY, "-m", "corral", "--socket",
                             str(d.services.socket_path), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    SPARED.add(proc.pid)
    out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, err
    return out


@pytest.mark.parametrize("via", ["attempt", "replica", "process"])
async def test_a_retry_after_a_kill_makes_no_gateway_call_twice(tmp_path: Path, via: str
                                                                ) -> None:
    """The worker SIGKILLs itself (and, via "process", the child that made the calls)
    after its 2nd of 4 calls: the retry's first two are answered from the journal, the
    server sees each call once, the task's tool budget counts each once, and every call
    is a span under its attempt."""
    async with in_process(tmp_path, fleet(tmp_path, PRELOAD), TRACED) as d:
        res = await run_task(d, {"calls": 4, "stop_after": 2, "via": via,
                                 "marker": str(tmp_path / "marker")})
        assert res.status == "succeeded", res
        assert res.output["results"] == [f"bumped {i}" for i in range(1, 5)]
        assert lines(tmp_path / "server-count") == ["1", "2", "3", "4"]
        first, second = res.attempts
        assert (first.outcome, second.outcome) == ("lost", "succeeded")
        assert second.replayed == 2
        info = await d.sup.tasks.info(res.task_id)
        assert info.tool_calls == 4
        gw = (await gateway_status(d)).clients["gw#0"]
        # two sessions' calls, each attributed: the first attempt's 2, the retry's 4
        assert (gw.attributed, gw.unattributed) == (6, 0)
        view = await d.dispatcher.call(OPERATOR, "traces.get", {"task_id": res.task_id})
        assert isinstance(view, m.TraceView)
        runs = {s.attributes["corral.attempt"]: s.span_id for s in view.spans
                if s.name == "task/run gw"}
        calls = [(s.attributes["corral.attempt"], bool(s.attributes.get(
            "corral.step.replayed")), s.parent_id == runs[s.attributes["corral.attempt"]])
                 for s in view.spans if s.name == "tools/call bump"]
        assert sorted(calls) == [(1, False, True), (1, False, True), (2, False, True),
                                 (2, False, True), (2, True, True), (2, True, True)]


async def test_a_task_with_more_slots_names_its_attempt_and_the_replicas_own_are_counted(
        tmp_path: Path) -> None:
    """An agent running two tasks at a time: a call at the replica's address is no
    task's (made, counted unattributed, in no task's budget); at the attempt's address
    it is the task's."""
    http = '[http]\nlisten = "127.0.0.1:0"\nmetrics_public = true\n'
    async with in_process(tmp_path, fleet(tmp_path, "max_concurrent_tasks = 2"),
                          GATEWAY + http) as d:
        plain = await run_task(d, {"calls": 2, "via": "replica"})
        assert plain.status == "succeeded", plain
        assert (await d.sup.tasks.info(plain.task_id)).tool_calls == 0
        named = await run_task(d, {"calls": 3, "via": "attempt"})
        assert named.status == "succeeded", named
        assert (await d.sup.tasks.info(named.task_id)).tool_calls == 3
        stats = await gateway_status(d)
        gw = stats.clients["gw#0"]
        assert (gw.attributed, gw.unattributed, gw.calls) == (3, 2, 5)
        assert (stats.attributed, stats.unattributed) == (3, 2)
        async with httpx2.AsyncClient() as client:
            scraped = (await client.get(f"{d.http_server.url}/metrics")).text
        assert 'corral_gateway_replica_calls_total{attribution="task"} 3.0' in scraped
        assert 'corral_gateway_replica_calls_total{attribution="none"} 2.0' in scraped
        shown = await cli(d, "mcp", "status")
        assert "agent replicas' calls: 3 a task's step, 2 of no task" in shown
        assert lines(tmp_path / "server-count") == ["1", "2", "1", "2", "3"]


async def test_an_attributed_call_past_the_tool_budget_is_refused_naming_it(
        tmp_path: Path) -> None:
    async with in_process(tmp_path, fleet(tmp_path, "max_tool_calls_per_task = 2"),
                          GATEWAY) as d:
        res = await run_task(d, {"calls": 3})
        assert res.status == "succeeded", res
        assert res.output["results"] == ["bumped 1", "bumped 2"]
        assert res.output["refused"] == (f"tool budget exceeded: task {res.task_id} has "
                                         "made 2 tool calls (max_tool_calls_per_task 2)")
        assert lines(tmp_path / "server-count") == ["1", "2"]


async def test_an_attempts_address_opens_nothing_once_the_attempt_has_ended(
        tmp_path: Path) -> None:
    async with in_process(tmp_path, fleet(tmp_path), GATEWAY) as d:
        first = await run_task(d, {"calls": 1})
        assert first.status == "succeeded", first
        late = await run_task(d, {"calls": 1, "via": first.output["url"]})
        assert late.status == "succeeded", late
        assert late.output["refused"] == (
            f"attempt 1 of task {first.task_id} is not running on gw#0: a call at its "
            "address is not made (it ended, or is not this replica's)")
        assert lines(tmp_path / "server-count") == ["1"]
        assert (await d.sup.tasks.info(late.task_id)).tool_calls == 0


async def test_another_tenants_replica_cannot_use_an_attempts_address(tmp_path: Path
                                                                      ) -> None:
    """Tenant beta's replica, handed a running attempt of tenant alpha's agent, is
    refused as for an ended attempt (one text: nothing told of alpha's task), and the
    attempt's own calls go on."""
    other = f"""
        [agents.other]
        command = ["{PY}", "{HERE}/gateway_durable_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tenant = "beta"
        tools = ["counting__*"]

        [tenants.alpha]
        [tenants.beta]
    """
    async with in_process(tmp_path, fleet(tmp_path, 'tenant = "alpha"', other),
                          GATEWAY) as d:
        hold = tmp_path / "hold"
        held = asyncio.ensure_future(run_task(d, {"calls": 1, "hold": str(hold)}))
        while not hold.exists():  # the attempt is running, its address written
            await asyncio.sleep(0.01)
        address = hold.read_text()
        stolen = await run_task(d, {"calls": 1, "via": address}, agent="other")
        assert stolen.status == "succeeded", stolen
        task_id = mark_of(dict(httpx2.URL(address).params))
        assert task_id is not None
        assert stolen.output["refused"] == (
            f"attempt 1 of task {task_id.task_id} is not running on other#0: a call at "
            "its address is not made (it ended, or is not this replica's)")
        assert lines(tmp_path / "server-count") == []
        hold.unlink()
        res = await held
        assert res.status == "succeeded", res
        assert res.output["results"] == ["bumped 1"]
        assert (await d.sup.tasks.info(res.task_id)).tool_calls == 1


async def test_an_attempts_address_is_for_a_replicas_token_alone(tmp_path: Path) -> None:
    """A gateway client that is no agent replica (a tokens_file client) naming an
    attempt is refused before anything: 400, saying why."""
    token = "attrib-client-token"
    (tmp_path / "tokens.toml").write_text(
        f'[clients.ops]\ntoken_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n')
    async with in_process(tmp_path, fleet(tmp_path),
                          GATEWAY + 'tokens_file = "tokens.toml"\n') as d:
        url = (await gateway_status(d)).url
        assert url is not None
        async with httpx2.AsyncClient() as http:
            r = await http.post(f"{url}?task=0123456789ab&attempt=1", json={
                "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-11-25", "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"}}},
                headers={"Authorization": f"Bearer {token}",
                         "Accept": "application/json, text/event-stream"})
        assert r.status_code == 400
        assert r.json()["error"]["message"] == (
            "gateway client ops is no agent replica: an attempt's address is for the "
            "token of the replica that runs it")


def test_an_attempts_mark_is_read_from_the_query_or_refused_saying_why() -> None:
    assert mark_of({}) is None
    assert mark_of({"task": "abc", "attempt": "2"}) == AttemptMark("abc", 2)
    for query, why in (
            ({"task": "abc"}, "an attempt's address names both task and attempt "
                              "(?task=ID&attempt=N)"),
            ({"attempt": "1"}, "an attempt's address names both task and attempt "
                               "(?task=ID&attempt=N)"),
            ({"task": "abc", "attempt": "0"}, "attempt '0' is not an attempt's number "
                                              "(1, 2, ...)"),
            ({"task": "abc", "attempt": "x"}, "attempt 'x' is not an attempt's number "
                                              "(1, 2, ...)")):
        with pytest.raises(ValueError) as exc:
            mark_of(query)
        assert str(exc.value) == why
