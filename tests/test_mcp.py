"""The MCP client and pool against real servers: the official SDK's, the npm reference
server, and a scripted server per protocol revision and fault."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral import jsonrpc
from corral.jsonrpc import RpcError
from corral.supervisor import LogBatch, McpServerSpec, State, Supervisor
from corral.supervisor.launch import MAX_IN_FLIGHT
from corral.supervisor.mcpserver import McpServerReplica

from .chaos.procs import PeakRss
from .conftest import EXAMPLES, ROOT, agent, all_ready

PY = sys.executable
SCRIPTED = Path(__file__).with_name("scripted_mcp.py")
EVERYTHING_VERSION = "2026.8.31"
NPM_DIR = ROOT / ".npm-test"
EVERYTHING = NPM_DIR / "node_modules" / "@modelcontextprotocol" / "server-everything" / \
    "dist" / "index.js"


def scripted(name: str, modes: str, **kw: Any) -> McpServerSpec:
    args: dict[str, Any] = {"start_timeout": 5.0, "timeout": 5.0, "backoff_initial": 0.05,
                            "stop_timeout": 1.0}
    args.update(kw)
    return McpServerSpec(name=name, command=[PY, str(SCRIPTED)], args=[modes], **args)


async def up(sup: Supervisor, spec: McpServerSpec) -> McpServerReplica:
    sup.add_mcp_server(spec)
    entry = sup.mcp.server(spec.name)
    return await sup.mcp.instance(entry, None)


async def wait_mcp(sup: Supervisor, inst: McpServerReplica, state: str, timeout: float = 10
                   ) -> None:
    if inst.state.value == state:
        return
    await sup.wait_event(lambda e: e.kind == "mcp" and e.name == inst.name
                         and e.replica == inst.index and e.state == state, timeout)


# -- revisions ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,version", [
    ("v2024", "2024-11-05"), ("v2025-03", "2025-03-26"), ("v2025-06", "2025-06-18"),
    ("v2025-11", "2025-11-25"), ("stateless", "2026-07-28"), ("dual", "2026-07-28"),
])
async def test_each_revision_is_negotiated(sup: Supervisor, mode: str, version: str) -> None:
    inst = await up(sup, scripted("s", mode))
    assert inst.client.version == version
    assert inst.reason == f"initialized (MCP {version}, 5 tools)"
    res = await sup.mcp.call("s__echo", {"text": "hi"})
    assert res == {"content": [{"type": "text", "text": "hi"}],
                   "structuredContent": {"echo": "hi"}, "isError": False}


async def test_batches_are_accepted(sup: Supervisor) -> None:
    inst = await up(sup, scripted("b", "v2025-03,batch"))
    assert inst.client.version == "2025-03-26"
    assert (await sup.mcp.call("b__echo", {"text": "x"}))["content"][0]["text"] == "x"


async def test_silent_discover_falls_back_to_initialize(sup: Supervisor) -> None:
    # the probe has half the start timeout to itself, then initialize is tried
    inst = await up(sup, scripted("m", "v2025-06,mute-discover", start_timeout=4.0))
    assert inst.client.version == "2025-06-18"
    assert inst.client.peer is not None and inst.client.peer.in_flight == 0


async def test_unsupported_version_is_refused_clearly(sup: Supervisor) -> None:
    sup.add_mcp_server(scripted("old", "bad-version", restart="never"))
    entry = sup.mcp.server("old")
    with pytest.raises(RpcError) as err:
        await sup.mcp.instance(entry, None)
    inst = entry.instances[0]
    assert inst.last_exit == ("MCP handshake failed: MCP server old#0 answered initialize "
                              "with protocol version '1999-01-01', which corral does not "
                              "speak (2026-07-28, 2025-11-25, 2025-06-18, 2025-03-26, "
                              "2024-11-05)")
    assert err.value.code == jsonrpc.REFUSED


async def test_never_answers_initialize(sup: Supervisor) -> None:
    sup.add_mcp_server(scripted("mute", "no-init", start_timeout=0.6, restart="never"))
    with pytest.raises(RpcError):
        await sup.mcp.instance(sup.mcp.server("mute"), None)
    inst = sup.mcp.server("mute").instances[0]
    await wait_mcp(sup, inst, "terminated")
    assert inst.last_exit == "start timeout: no answer to the MCP handshake within 0.6 s"


async def test_pagination_and_bad_tool_names(sup: Supervisor) -> None:
    logs: list[str] = []
    sup.stream.subscribe(lambda e: logs.extend(x.decode() for x in e.lines), LogBatch)
    inst = await up(sup, scripted("p", "pages,bad-names"))
    assert [t["name"] for t in inst.client.tools] == ["echo", "slow", "die", "progress", "grow"]
    assert inst.client.rejected_tools == ["'bad__name'", "'has space'"]
    assert any("left out tools whose names break the MCP naming rule or contain '__': "
               "'bad__name', 'has space'" in x for x in logs)


async def test_list_changed_is_followed(sup: Supervisor) -> None:
    inst = await up(sup, scripted("g", "v2025-11"))
    await sup.mcp.call("g__grow", {})
    # the list_changed notification follows the result: the tools are listed again
    while not any(t["name"] == "extra" for t in inst.client.tools):
        await asyncio.sleep(0.01)


# -- faults ---------------------------------------------------------------------------------
async def test_timeout_sends_cancelled(sup: Supervisor) -> None:
    logs: list[str] = []
    sup.stream.subscribe(lambda e: logs.extend(x.decode() for x in e.lines), LogBatch)
    inst = await up(sup, scripted("t", "v2025-11", timeout=0.3))
    with pytest.raises(RpcError) as err:
        await sup.mcp.call("t__slow", {"seconds": 30})
    assert err.value.code == jsonrpc.REQUEST_TIMEOUT
    assert err.value.message == "tools/call: no answer from MCP server t#0 within 0.3 s"
    got = asyncio.get_running_loop().create_future()
    sup.stream.subscribe(lambda e: got.done() or (any(
        x.startswith(b"cancelled ") for x in e.lines) and got.set_result(True)), LogBatch)
    if not any(x.startswith("cancelled ") for x in logs):
        await asyncio.wait_for(got, 5)
    assert inst.client.errors == 1


async def test_a_call_cancelled_by_its_caller_is_no_timeout(sup: Supervisor) -> None:
    """The deadline's timer cancels the call it was set for only, and is told apart from
    a cancellation by the caller: that one stays a cancellation, counted as no error."""
    logs: list[str] = []
    sup.stream.subscribe(lambda e: logs.extend(x.decode() for x in e.lines), LogBatch)
    inst = await up(sup, scripted("tc", "v2025-11", timeout=0.3))
    assert (await sup.mcp.call("tc__echo", {"text": "a"}))["content"][0]["text"] == "a"
    call = asyncio.ensure_future(sup.mcp.call("tc__slow", {"seconds": 30}))
    while not inst.client.calls_in_flight:
        await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert (inst.client.errors, inst.client.calls_in_flight) == (0, 0)
    # past both calls' deadlines: neither's timer cancels this task, which made the first
    await asyncio.sleep(0.5)
    assert (await sup.mcp.call("tc__echo", {"text": "b"}))["content"][0]["text"] == "b"
    assert inst.client.errors == 0


async def test_progress_passes_through(sup: Supervisor) -> None:
    await up(sup, scripted("pr", "stateless"))
    seen: list[dict[str, Any]] = []
    res = await sup.mcp.call("pr__progress", {"steps": 3}, on_progress=seen.append)
    assert res["content"][0]["text"] == "done"
    assert seen == [{"progress": i, "total": 3, "message": f"step {i}"} for i in (1, 2, 3)]


async def test_server_exit_fails_in_flight_calls_and_restarts(sup: Supervisor) -> None:
    inst = await up(sup, scripted("d", "v2025-11"))
    pid = inst.pid
    slow = asyncio.ensure_future(sup.mcp.call("d__slow", {"seconds": 30}))
    assert inst.peer is not None
    while inst.peer.in_flight < 1:  # until the slow call is on the wire
        await asyncio.sleep(0)
    with pytest.raises(RpcError) as err:
        await sup.mcp.call("d__die", {})
    assert err.value.code == jsonrpc.PEER_CLOSED
    assert err.value.message == "MCP server d#0 exited: exited with status 5: dying mid-call"
    with pytest.raises(RpcError) as err2:
        await slow
    assert err2.value.message == "MCP server d#0 exited: exited with status 5: dying mid-call"
    await wait_mcp(sup, inst, "ready")
    assert inst.pid != pid and inst.restarts == 1
    assert (await sup.mcp.call("d__echo", {"text": "back"}))["content"][0]["text"] == "back"


async def test_garbage_huge_line_and_unknown_id(sup: Supervisor) -> None:
    inst = await up(sup, scripted("gz", "v2025-11,garbage,unknown-id"))
    assert inst.garbage_lines == 3  # the garbage line, the 20 MiB line, the unknown id
    assert (await sup.mcp.call("gz__echo", {"text": "ok"}))["content"][0]["text"] == "ok"


async def test_unknown_tools_and_servers(sup: Supervisor) -> None:
    await up(sup, scripted("u", "v2025-11"))
    with pytest.raises(RpcError) as err:
        await sup.mcp.call("u__nope", {})
    assert (err.value.code, err.value.message) == (
        jsonrpc.NOT_FOUND, "no such tool: u__nope (MCP server u has no tool nope)")
    with pytest.raises(RpcError) as err:
        await sup.mcp.call("zz__echo", {})
    assert err.value.message == "no such tool: zz__echo (no MCP server zz)"
    with pytest.raises(RpcError) as err:
        await sup.mcp.call("noseparator", {})
    assert err.value.message == "no such tool: noseparator (tools are named SERVER__TOOL)"


# -- routing through agents -----------------------------------------------------------------
async def test_agents_call_through_allowlist_and_budget(sup: Supervisor) -> None:
    sup.add_mcp_server(scripted("notes", "v2025-11"))
    sup.add(agent("user", "misbehave.py", tools=["notes__echo", "notes__progress"],
                  max_tool_calls_per_task=2))
    await sup.wait_state("user", State.READY)
    res = await sup.tasks.run("user", {"do": "tools", "tool": "notes__echo",
                                       "arguments": {"text": "a"}, "times": 3})
    assert res.output[0]["content"][0]["text"] == "a"
    assert res.output[2]["error"] == jsonrpc.TOOL_BUDGET_EXCEEDED
    res = await sup.tasks.run("user", {"do": "tools", "tool": "notes__slow", "times": 1})
    assert res.output[0]["error"] == jsonrpc.TOOL_NOT_ALLOWED
    res = await sup.tasks.run("user", {"do": "tools", "tool": "notes__echo",
                                       "arguments": [1, 2], "times": 1})
    assert res.output[0]["message"] == "tools/call: arguments must be an object"
    # progress from the tool server reaches the task
    task = sup.tasks.submit("user", {"do": "tools", "tool": "notes__progress",
                                     "arguments": {"steps": 2}, "times": 1})
    await task.done
    assert task.progress == {"progress": 2, "total": 2, "message": "step 2",
                             "tool": "notes__progress"}


async def test_least_outstanding_requests_over_instances(sup: Supervisor) -> None:
    sup.add_mcp_server(scripted("lo", "v2025-11", instances=2, start="eager"))
    entry = sup.mcp.server("lo")
    for inst in entry.instances:
        await wait_mcp(sup, inst, "ready")
    calls = [asyncio.ensure_future(sup.mcp.call("lo__slow", {"seconds": 2}))
             for _ in range(4)]
    while sum(i.peer.in_flight for i in entry.instances if i.peer) < 4:
        await asyncio.sleep(0)  # until all four are on the wire
    assert sorted(i.peer.in_flight for i in entry.instances if i.peer) == [2, 2]
    await asyncio.gather(*calls)
    assert [i.client.calls for i in entry.instances] == [2, 2]


async def test_per_agent_scope_gives_each_replica_its_own_server(sup: Supervisor) -> None:
    sup.add_mcp_server(scripted("own", "v2025-11", scope="per-agent"))
    sup.add(agent("pa", "misbehave.py", replicas=2, tools=["own__*"]))
    await all_ready(sup, "pa")
    await asyncio.gather(*(sup.tasks.run("pa", {"do": "tools", "tool": "own__slow",
                                                "arguments": {"seconds": 0.2}})
                           for _ in range(2)))
    entry = sup.mcp.server("own")
    assert sorted(entry.per_agent) == ["pa#0", "pa#1"]
    assert len({i.pid for i in entry.per_agent.values()}) == 2


# -- servers no one here wrote --------------------------------------------------------------
async def test_official_sdk_server(sup: Supervisor) -> None:
    # the SDK's import takes ~0.7 s, ten times that on a loaded machine: the probe's share
    # of the start timeout (half) must cover it, or initialize goes out beside it (the
    # SDK's rule) and the revision depends on which answer the server sends first
    inst = await up(sup, McpServerSpec(name="notes", start_timeout=30.0,
                                       command=[PY, str(EXAMPLES / "notes_server.py")]))
    assert inst.client.version == "2026-07-28"
    assert [t["name"] for t in inst.client.tools] == ["add", "get", "search"]
    res = await sup.mcp.call("notes__add", {"title": "t", "text": "some words"})
    assert res["content"] == [{"type": "text", "text": "stored t"}] and res["isError"] is False
    res = await sup.mcp.call("notes__search", {"word": "words"})
    assert res["structuredContent"] == {"result": ["t"]}
    res = await sup.mcp.call("notes__add", {"title": 5})
    assert res["isError"] is True  # the server's own validation error, kept as sent


def everything_reason() -> str | None:
    if not EVERYTHING.exists():
        return (f"@modelcontextprotocol/server-everything@{EVERYTHING_VERSION} is not "
                f"installed in {NPM_DIR} (test.sh installs it)")
    if shutil.which("node") is None:
        return "node is not installed"
    return None


@pytest.mark.skipif(everything_reason() is not None, reason=everything_reason() or "")
async def test_npm_reference_server(sup: Supervisor) -> None:
    # each request's bound: well past what the calls below take on a loaded host (the 0.6 s
    # operation's among them), and well short of the long one that is to time out
    inst = await up(sup, McpServerSpec(name="ev", command=["node", str(EVERYTHING), "stdio"],
                                       timeout=5.0))
    assert inst.client.version == "2025-11-25"  # -32601 on server/discover: the fallback
    names = {t["name"] for t in inst.client.tools}
    assert {"echo", "get-sum", "trigger-long-running-operation"} <= names
    res = await sup.mcp.call("ev__echo", {"message": "hello"})
    assert res["content"][0]["text"] == "Echo: hello"
    res = await sup.mcp.call("ev__get-sum", {"a": 2, "b": 40})
    assert "42" in res["content"][0]["text"]
    seen: list[dict[str, Any]] = []
    res = await sup.mcp.call("ev__trigger-long-running-operation",
                             {"duration": 0.6, "steps": 3}, on_progress=seen.append)
    assert [p["progress"] for p in seen] == [1, 2, 3]
    assert res.get("isError") is not True
    # time it out, and see notifications/cancelled go to the server
    sent: list[Any] = []
    assert inst.peer is not None
    original = inst.peer._send
    inst.peer._send = lambda data: (sent.append(msgspec.json.decode(data)),  # type: ignore[method-assign]
                                    original(data))[1]
    with pytest.raises(RpcError) as err:
        await sup.mcp.call("ev__trigger-long-running-operation", {"duration": 30, "steps": 5})
    assert err.value.code == jsonrpc.REQUEST_TIMEOUT
    call_id = next(m["id"] for m in sent if m.get("method") == "tools/call")
    assert {"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": call_id, "reason": "timed out or cancelled by corral"}
            } in sent
    assert (await sup.mcp.call("ev__echo", {"message": "still"}))["content"][0]["text"] == \
        "Echo: still"


def test_mcp_servers_file(tmp_path: Path) -> None:
    from corral.supervisor.config import ConfigError
    from corral.supervisor.configload import load_config

    (tmp_path / "mcp.json").write_text('{"mcpServers": {"files": {"command": "npx", "args": '
                                       '["-y", "x"], "env": {"A": "1"}, "disabled": false}}}')
    (tmp_path / "c.toml").write_text('[supervisor]\nmcp_servers_file = "mcp.json"\n')
    cfg = load_config(tmp_path / "c.toml")
    s = cfg.mcp_servers["files"]
    assert (s.argv(), s.env, s.scope) == (["npx", "-y", "x"], {"A": "1"}, "shared")
    (tmp_path / "mcp.json").write_text('{"mcpServers": {"bad__name": {"command": "x"}}}')
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.toml")
    assert str(err.value) == (f"{tmp_path}/mcp.json: mcpServers.bad__name: a server name may "
                              "not contain '__' (it separates server and tool in SERVER__TOOL)")
    (tmp_path / "mcp.json").write_text('{"mcpServers": {"x": {"args": []}}}')
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.toml")
    assert str(err.value) == (f"{tmp_path}/mcp.json: mcpServers.x: give either command (a "
                              "local server) or url (a remote one)")


async def test_legacy_server_that_stops_answering_pings_is_restarted(sup: Supervisor) -> None:
    import os
    import signal

    inst = await up(sup, scripted("hb", "v2025-11"))
    assert inst.pings and inst.pid is not None
    pid = inst.pid
    os.kill(pid, signal.SIGSTOP)
    await wait_mcp(sup, inst, "backoff")
    assert inst.last_exit == "hung: no heartbeat for 2 s"
    await wait_mcp(sup, inst, "ready")
    assert inst.pid != pid


async def test_a_server_that_floods_and_never_reads_is_bounded_and_restarted(
        sup: Supervisor) -> None:
    # the same pipe writer as a worker's (process.py): past its budget corral stops
    # reading the server, and a server whose stdin stays full for the heartbeat timeout is
    # hung; the call in flight fails with that reason
    inst = await up(sup, scripted("fl", "v2025-11,flood", timeout=30.0))
    pid = inst.pid
    with PeakRss() as peak, pytest.raises(RpcError) as err:
        await sup.mcp.call("fl__flood", {"n": 1000000})
    assert re.fullmatch(r"hung: \d+ bytes sent to it unread for 2 s", str(inst.last_exit)), \
        inst.last_exit
    assert err.value.code == jsonrpc.PEER_CLOSED
    assert err.value.message == f"MCP server fl#0 exited: {inst.last_exit}"
    # measured: a few MiB; without the budget, every ping's answer queued (+300 MiB)
    assert peak.peak - peak.base < 64 * 1024 * 1024, (peak.base, peak.peak)
    await wait_mcp(sup, inst, "ready")
    assert inst.pid != pid and inst.restarts == 1
    assert sup.runtime_stats().restarts_by_cause == {"unread": 1}
    assert (await sup.mcp.call("fl__echo", {"text": "after"}))["content"][0]["text"] == "after"


async def test_a_worker_has_at_most_max_in_flight_requests_worked_on(sup: Supervisor) -> None:
    # a worker (that reads its stdin) sends more tool calls at once than corral takes:
    # the rest wait in its pipe, unread, and it is not taken for hung meanwhile
    sup.add_mcp_server(scripted("s", "v2025-11"))
    n = MAX_IN_FLIGHT + 150
    sup.add(agent("many", command=[PY, str(ROOT / "tests" / "flood_worker.py")],
                  tools=["s__slow"], env={
                      "FLOOD_READS": "1", "FLOOD_REQUESTS": str(n), "FLOOD_METHOD": "tools/call",
                      "FLOOD_PARAMS": '{"name":"s__slow","arguments":{"seconds":0.005}}'}))
    r = await sup.wait_state("many", State.READY)
    most, total = 0, 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:  # every turn of the loop, until every call is answered
        peer = r.peer
        assert peer is not None and r.restarts == 0
        most = max(most, peer.handling)
        total = sup.mcp.server("s").instances[0].client.calls
        if total == n and peer.handling == 0:
            break
        assert loop.time() < deadline, f"{total} of {n} calls made, at most {most} at once"
        await asyncio.sleep(0)
    assert most == MAX_IN_FLIGHT
    assert r.state == State.READY and r.restarts == 0


async def test_stateless_server_is_not_pinged(sup: Supervisor) -> None:
    inst = await up(sup, scripted("nop", "stateless"))
    assert inst.client.stateless and not inst.pings
