"""What the daemon keeps of an agent, a session, a token or a stream is let go with it
(issue 90): churn under names never used again — the shape of a fleet whose agents are
made per job, which the soak's three reused names cannot show — grows no structure of
the daemon's by an entry a name.

The daemon runs in this process, its bounded stores small so that a few rounds fill
them; each round, through the control socket and the HTTP API as an operator and a
client use them, adds an agent under a new name, runs its tasks (one a turn of a new
session, one whose worker crashes so its replica is restarted), scales it to two and
back, makes a token and calls with it, opens an event stream and abandons it, revokes
the token and removes the agent. bench/soak_census.py counts every container an object
of corral's holds, by owner (`Class.attr`), and the live objects of each class, after
warm-up rounds and again after ROUNDS more: a map keyed by what churned and never
forgotten grows by one a round, and so does a class whose objects outlive their round.
"""

from __future__ import annotations

import gc
import re
import textwrap
from pathlib import Path
from types import FunctionType
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.web_protocol import RequestHandler

from bench.soak_census import take
from corral.supervisor.config import AgentSpec
from corral.supervisor.egressdoors import Door, Doors
from corral.supervisor.policy import CACHED, RuleBook
from corral.supervisor.tasks.counters import RETIRED_AGENTS, RetiredCounts
from corral.supervisor.tools import Tools

from .conftest import ROOT
from .daemon_harness import PY, free_port, in_process
from .sandboxprobe import sandbox_refusal
from .test_gateway_stdio import wait_until_async
from .test_http_api import SOCKET

AGENT = ROOT / "bench" / "soak_agent.py"
WARM = 3  # rounds that take the bounded stores below to their bound
ROUNDS = 6  # rounds after the first census: a map kept per name grows by this many
# every bound the rounds would otherwise still be filling, small
SUPERVISOR = "keep_tasks = 8\njournal_max_tasks = 8\nlog_tail_lines = 8\n"
HTTP = textwrap.dedent("""
    [http]
    listen = "127.0.0.1:0"
    rate_per_minute = 0
    event_ring = 16
    history_interval = 0.5
""")


async def call(d: Any, method: str, params: dict[str, Any]) -> Any:
    out = await d.dispatcher.call(SOCKET, method, msgspec.json.encode(params))
    return msgspec.json.decode(msgspec.json.encode(out))


async def one_round(d: Any, http: aiohttp.ClientSession, i: int) -> None:
    name = f"job{i}"
    made = await call(d, "tokens.create", {"name": f"client{i}", "scopes": [
        "tasks:run", "tasks:read", "events"]})
    head = {"Authorization": f"Bearer {made['token']}"}
    base = d.http_server.url + "/api/v1"
    # first: the round's events after it find it gone (a stream abandoned is let go at
    # the next event written to it, or its next keepalive)
    async with http.get(f"{base}/events/stream", headers=head) as r:
        assert r.status == 200  # and abandoned unread
    await call(d, "agents.add", {"agents": {name: {
        "command": [PY, str(AGENT)], "env": {"PYTHONPATH": str(ROOT)},
        "max_concurrent_tasks": 2, "stop_timeout": 5, "backoff_initial": 0.05,
        "spawns": [name]}}})
    for task_input, extra, status in (
            ({"do": "hello"}, {}, "succeeded"),
            ({"do": "spawn", "n": 1}, {}, "succeeded"),  # (its `spawns` names it)
            ({"do": "turn"}, {"session": f"session{i}"}, "succeeded"),
            ({"do": "crash"}, {}, "lost")):  # (its worker gone under it: no retry asked)
        done = await call(d, "tasks.run", {"agent": name, "input": {**task_input, "mark": "m"},
                                           **extra})
        assert done["status"] == status, done
    for replicas in (2, 1):
        await call(d, "agents.scale", {"name": name, "replicas": replicas})
    async with http.post(f"{base}/tasks?wait=30", headers=head, json={
            "agent": name, "input": {"do": "hello", "mark": "m"}}) as r:
        assert r.status == 200 and (await r.json())["status"] == "succeeded"
    await call(d, "tokens.revoke", {"name": f"client{i}"})
    await call(d, "agents.remove", {"names": [name]})


def closed_connections() -> int:
    """The HTTP server's connections alive in this process whose socket is closed: one
    a client left is let go a moment after its close, not at once."""
    gc.collect()
    return sum(isinstance(o, RequestHandler) and o.transport is None
               for o in gc.get_objects())


async def census(earlier: int) -> dict[str, Any]:
    """The census once the connections the rounds closed are gone (each round's stream's
    and the client's: live ones would count as kept), but one: the event ring's fan-out
    holds the last stream it wrote to until its next pass (sse.EventRing._write_out).
    `earlier`: those alive before the daemon started (an earlier test's in the worker, as
    a fresh clone's run once kept: not this daemon's to let go)."""
    await wait_until_async(lambda: closed_connections() <= earlier + 1, timeout=60)
    gc.collect()
    return {**take(), "patterns": sum(isinstance(o, re.Pattern) for o in gc.get_objects())}


@pytest.mark.deadline(300)
async def test_rounds_under_new_names_grow_no_structure_by_a_name(tmp_path: Path) -> None:
    earlier = closed_connections()
    async with in_process(tmp_path, "", HTTP, SUPERVISOR) as d, \
            aiohttp.ClientSession() as http:
        for i in range(WARM):
            await one_round(d, http, i)
        before = await census(earlier)
        for i in range(WARM, WARM + ROUNDS):
            await one_round(d, http, i)
        after = await census(earlier)
    # the longest container of each owner (a map of one object, keyed by what churned)
    # and the live objects of each class (an object kept for each thing gone)
    grew = {(part, k): (before[part].get(k, 0), n) for part in ("largest", "classes")
            for k, n in after[part].items() if n - before[part].get(k, 0) >= ROUNDS}
    # and no compiled pattern kept a name (fnmatch's cache, of a `spawns` list's names)
    patterns = after["patterns"] - before["patterns"]
    assert patterns < ROUNDS, patterns
    kept = grew.pop(("largest", f"{RetiredCounts.__module__}.RetiredCounts.by_name"), None)
    # (the removed agents' task counts, kept for RETIRED_AGENTS names: /metrics' counters
    # never go back)
    assert kept is None or kept[1] <= RETIRED_AGENTS
    # (the policy's verdicts by agent and tool, and the marks by tool, of a spawn (a call
    # of `agents__NAME`): caches of CACHED entries, emptied when full)
    for cache in ("largest", f"{RuleBook.__module__}.RuleBook._plans"), (
            "largest", f"{RuleBook.__module__}.RuleBook._marks"), (
            "classes", f"{RuleBook.__module__}._Plan"):
        assert grew.pop(cache, (0, 0))[1] <= CACHED
    assert grew == {}, grew


async def wide_round(d: Any, http: aiohttp.ClientSession, i: int) -> None:
    """An agent under a new name as the soak's tenants use one past the first test's
    round: its task calls a tool through the gateway (its allowlist asked for at the
    call), a workflow and a team of it run, an A2A message is sent it; all three removed."""
    name = f"wide{i}"
    await call(d, "agents.add", {"agents": {name: {
        "command": [PY, str(AGENT)], "env": {"PYTHONPATH": str(ROOT)},
        "tools": ["notes__*"], "stop_timeout": 5}}})
    done = await call(d, "tasks.run", {"agent": name, "input": {
        "do": "tool", "title": f"note{i}", "mark": "m"}})
    assert done["status"] == "succeeded" and done["output"]["tool"] == {
        "ok": f"stored note{i}"}, done
    await call(d, "workflows.add", {"workflows": {f"wf-{name}": {"steps": [
        {"name": "each", "agent": name, "map": "$input.items",
         "input": {"do": "hello", "mark": "m", "item": "$item"}}]}}})
    run = await call(d, "workflows.run", {"name": f"wf-{name}", "input": {"items": [1, 2]},
                                          "wait": 30})
    assert run["status"] == "succeeded", run
    await call(d, "teams.add", {"teams": {f"team-{name}": {
        "mode": "broadcast", "members": [name]}}})
    done = await call(d, "tasks.run", {"agent": f"team-{name}", "input": {
        "do": "hello", "mark": "m"}})
    assert done["status"] == "succeeded", done
    made = await call(d, "tokens.create", {"name": f"client{i}", "scopes": [
        "tasks:run", "tasks:read"]})
    async with http.post(f"{d.http_server.url}/a2a/{name}", headers={
            "Authorization": f"Bearer {made['token']}", "A2A-Version": "1.0"}, json={
            "jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": {
                "messageId": f"message{i}", "role": "ROLE_USER",
                "parts": [{"data": {"do": "hello", "mark": "m"}}]}}}) as r:
        sent = await r.json()
    assert sent["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED", sent
    await call(d, "tokens.revoke", {"name": f"client{i}"})
    await call(d, "workflows.remove", {"names": [f"wf-{name}"]})
    await call(d, "teams.remove", {"names": [f"team-{name}"]})
    await call(d, "agents.remove", {"names": [name]})


@pytest.mark.deadline(300)
async def test_a_removed_agents_spec_is_let_go_by_all_it_touched(tmp_path: Path) -> None:
    """No part an agent's round went through keeps its spec once it is removed (the
    soak's fresh names kept one a round: the tools allowlist kept for the agent's next
    call, decision 2190): after rounds under new names, the live AgentSpecs are as many
    as before them."""
    tools = textwrap.dedent(f"""
        [gateway]
        listen = "127.0.0.1:{free_port()}"

        [mcp_servers.notes]
        command = ["{PY}", "{ROOT / 'examples' / 'notes_server.py'}"]
        start_timeout = 60
        shared = true
    """)
    async with in_process(tmp_path, "", HTTP + tools, SUPERVISOR) as d, \
            aiohttp.ClientSession() as http:
        for i in range(WARM):
            await wide_round(d, http, i)
        gc.collect()  # (a removed replica and its agent: a cycle)
        before = take()
        for i in range(WARM, WARM + ROUNDS):
            await wide_round(d, http, i)
        gc.collect()
        after = take()
    spec, allows = f"{AgentSpec.__module__}.AgentSpec", f"{Tools.__module__}.Tools._allows"
    assert (after["classes"].get(spec, 0), after["largest"].get(allows, 0)) == (
        before["classes"].get(spec, 0), before["largest"].get(allows, 0)), after


async def sandboxed_round(d: Any, home: Path, i: int) -> None:
    """An agent under a new name in the egress sandbox (a namespace and listeners of the
    daemon's a replica), scaled to two and back, and removed."""
    name = f"boxed{i}"
    await call(d, "agents.add", {"agents": {name: {
        "command": [PY, str(AGENT)], "env": {"PYTHONPATH": str(ROOT)}, "cwd": str(home),
        "egress": "gateways", "stop_timeout": 5, "start_timeout": 60}}})
    for replicas in (2, 1):
        await call(d, "agents.scale", {"name": name, "replicas": replicas})
    done = await call(d, "tasks.run", {"agent": name, "input": {"do": "hello", "mark": "m"}})
    assert done["status"] == "succeeded", done
    await call(d, "agents.remove", {"names": [name]})


@pytest.mark.skipif(sandbox_refusal(None) is not None,
                    reason=f"no sandbox here: {sandbox_refusal(None)}")
@pytest.mark.deadline(300)
async def test_a_scaled_down_replicas_sandbox_goes_with_it(tmp_path: Path) -> None:
    """A replica a scale-down took out is gone for good: its namespace, its listeners and
    their watch are let go then, not when a replica of its label comes again, which under
    new names never does (each was kept, an fd and a socket or two each)."""
    home = tmp_path / "home"
    home.mkdir()
    gateway = f'\n[gateway]\nlisten = "127.0.0.1:{free_port()}"\n'
    async with in_process(tmp_path, "", gateway, SUPERVISOR) as d:
        for i in range(WARM):
            await sandboxed_round(d, home, i)
        before = take()
        for i in range(WARM, WARM + ROUNDS):
            await sandboxed_round(d, home, i)
        after = take()
    doors = f"{Doors.__module__}.Doors.doors"
    assert (before["largest"].get(doors, 0), after["largest"].get(doors, 0)) == (0, 0)
    door = f"{Door.__module__}.Door"
    assert after["classes"].get(door, 0) - before["classes"].get(door, 0) < ROUNDS, after


@pytest.mark.deadline(300)
async def test_a_workflows_run_its_views_and_refusals_leave_nothing_to_the_collector(
        tmp_path: Path) -> None:
    """What a request made is freed when the request is done, not left in a reference
    cycle for the collector: the daemon's heap is frozen and its full passes are rare, and
    under load a request's cycles outlive the young passes and wait for one, so they set
    the level its heap climbs to (the soak's live objects fell by a third at each full
    pass). A workflow added, run and read through its run views, and ids that are no
    one's asked for (a refusal each), with every collected object kept: none is of
    corral's, no function nor object (a nested function that calls itself, holding all it
    saw: a compiled plan, an audit row's params), and no error (a frame that kept the error
    it raised, which holds the frame through its traceback)."""
    async with in_process(tmp_path, "", HTTP, SUPERVISOR) as d, \
            aiohttp.ClientSession() as http:
        made = await call(d, "tokens.create", {"name": "viewer", "scopes": [
            "agents:read", "agents:write", "tasks:run", "tasks:read"]})
        head = {"Authorization": f"Bearer {made['token']}"}
        base = d.http_server.url + "/api/v1"
        await call(d, "agents.add", {"agents": {"w": {
            "command": [PY, str(AGENT)], "env": {"PYTHONPATH": str(ROOT)}, "stop_timeout": 5}}})
        steps = [{"name": "first", "agent": "w", "input": {"do": "hello", "mark": "m"}},
                 {"name": "each", "agent": "w", "map": "$input.items",
                  "input": {"do": "hello", "mark": "m", "item": "$item"}}]
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            async with http.post(f"{base}/workflows", headers=head, json={"workflows": {
                    "wf": {"steps": steps}}}) as r:
                assert r.status == 200, await r.text()
            async with http.post(f"{base}/workflows/wf/runs?wait=30", headers=head,
                                 json={"input": {"items": [1, 2]}}) as r:
                run = await r.json()
            assert run["status"] == "succeeded", run
            for path in ("/runs?workflow=wf", f"/runs/{run['run_id']}", "/workflows/wf"):
                async with http.get(base + path, headers=head) as r:
                    assert r.status == 200, await r.text()
            for path in (f"/tasks/{run['run_id']}", "/agents/nobody"):
                async with http.get(base + path, headers=head) as r:
                    assert r.status == 404, await r.text()
            gc.collect()
            named = (o if isinstance(o, FunctionType) else type(o) for o in gc.garbage)
            kept = sorted({f"{n.__module__}.{n.__qualname__}" for n in named
                           if n.__module__.startswith("corral") or (
                               isinstance(n, type) and issubclass(n, BaseException))})
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    assert kept == [], kept
