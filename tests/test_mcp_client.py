"""The MCP client's revision rules, hang rule, line limit, resources, prompts, roots,
logging and outputSchema, against the scripted server (tests/scripted_mcp.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc
from corral.jsonrpc import LineBlock, RpcError
from corral.supervisor import ListChanged, LogBatch, Supervisor
from corral.supervisor.replica import Replica

from .test_mcp import scripted, up, wait_mcp


def capture_logs(sup: Supervisor, name: str) -> list[str]:
    lines: list[str] = []

    def listen(r: Replica, stream: str, block: LineBlock) -> None:
        if r.name == name:
            lines.extend(b.decode() for b in block)

    sup.stream.subscribe(lambda e: listen(*e), LogBatch)
    return lines


# -- the revision rules (the official SDK's probe) ------------------------------------------
async def test_a_late_discover_answer_is_honoured(sup: Supervisor) -> None:
    # silent until initialize comes too: the probe's own share of the start timeout (2 s)
    # runs out first, initialize goes out, and the server's late answer to discover still
    # wins (the start timeout is the bound on the server's start, however loaded)
    logs = capture_logs(sup, "late")
    inst = await up(sup, scripted("late", "slow-start", start_timeout=4.0))
    assert inst.client.version == "2026-07-28"
    assert inst.reason == "initialized (MCP 2026-07-28, 5 tools)"
    assert inst.restarts == 0 and inst.garbage_lines == 0
    assert not [line for line in logs if "unknown request id" in line]
    res = await sup.mcp.call("late__echo", {"text": "hi"})
    assert res["content"] == [{"type": "text", "text": "hi"}]


async def test_a_refused_initialize_waits_for_the_late_probe_answer(sup: Supervisor) -> None:
    # a modern-only server that handles requests concurrently refuses initialize (-32601)
    # before its slow answer to the probe: the probe's answer decides
    inst = await up(sup, scripted("ooo", "slow-discover", start_timeout=4.0))
    assert inst.client.version == "2026-07-28" and inst.restarts == 0


async def test_minus_32022_on_initialize_leads_to_one_reprobe(sup: Supervisor) -> None:
    inst = await up(sup, scripted("locked", "drop-discover", start_timeout=4.0))
    assert inst.client.version == "2026-07-28" and inst.restarts == 0


# -- hang rule, line limit ------------------------------------------------------------------
async def test_a_server_blocked_in_a_call_is_not_hung_within_the_call_timeout(
        sup: Supervisor) -> None:
    # the fixture's heartbeat_timeout is 2 s; the call blocks the server's reader for 3 s
    inst = await up(sup, scripted("blk", "v2025-06,resources", timeout=10.0))
    pid = inst.pid
    res = await sup.mcp.call("blk__block", {"seconds": 3})
    assert res["content"][0]["text"] == "unblocked"
    assert (inst.state.value, inst.pid, inst.restarts) == ("ready", pid, 0)


async def test_silence_while_idle_is_still_a_hang(sup: Supervisor) -> None:
    import os
    import signal

    inst = await up(sup, scripted("idle", "v2025-06,resources"))
    assert inst.pid is not None
    os.kill(inst.pid, signal.SIGSTOP)
    await wait_mcp(sup, inst, "backoff")
    assert inst.last_exit == "hung: no heartbeat for 2 s"


async def test_an_oversized_answer_fails_its_own_request_at_once(sup: Supervisor) -> None:
    inst = await up(sup, scripted("big", "v2025-06,resources", timeout=30.0,
                                  max_message_mb=1))
    assert inst.max_line == 1048576
    started = time.monotonic()
    with pytest.raises(RpcError) as err:
        await sup.mcp.call("big__big", {"mb": 2})
    assert time.monotonic() - started < 10  # not the call's 30 s timeout
    assert err.value.code == jsonrpc.MESSAGE_TOO_LARGE
    size = 2 * 1048576 + len('{"jsonrpc": "2.0", "id": 4, "result": {"content": [{"type": '
                             '"text", "text": ""}]}}')
    assert err.value.message == (
        f"the answer from MCP server big#0 is {size} bytes, over the line limit of 1048576 "
        "bytes (1 MiB); it was discarded")
    assert (await sup.mcp.call("big__echo", {"text": "after"}))["content"][0]["text"] == "after"
    assert inst.state.value == "ready"


async def test_the_mcp_line_limit_defaults_above_the_workers(sup: Supervisor) -> None:
    inst = await up(sup, scripted("lim", "v2025-06"))
    assert inst.max_line == 64 * 1048576 > sup.max_line


# -- outputSchema ---------------------------------------------------------------------------
async def test_structured_content_is_checked_against_the_output_schema(
        sup: Supervisor) -> None:
    await up(sup, scripted("ty", "v2025-11,resources"))
    ok = await sup.mcp.call("ty__typed", {"n": 3})
    assert ok == {"content": [{"type": "text", "text": "typed"}], "structuredContent": {"n": 3}}
    bad = await sup.mcp.call("ty__typed", {"n": "three"})
    assert bad["isError"] is True and bad["structuredContent"] == {"n": "three"}
    assert bad["content"][-1]["text"] == (
        "MCP server ty#0: tool typed returned structuredContent that does not match its "
        "outputSchema: at n: 'three' is not of type 'integer'")


# -- resources, prompts, completion ---------------------------------------------------------
async def test_resources_prompts_and_completion(sup: Supervisor) -> None:
    await up(sup, scripted("docs", "v2025-11,resources"))
    res = await sup.mcp.list_resources()
    assert [(r["server"], r["uri"]) for r in res] == [
        ("docs", "mem://doc/0"), ("docs", "mem://doc/1"), ("docs", "mem://doc/2")]
    templates = await sup.mcp.list_resource_templates()
    assert templates == [{"uriTemplate": "mem://doc/{id}", "name": "doc", "server": "docs"}]
    read = await sup.mcp.read_resource("docs", "mem://doc/1")
    assert read == {"contents": [{"uri": "mem://doc/1", "mimeType": "text/plain",
                                  "text": "contents of mem://doc/1"}]}
    with pytest.raises(RpcError) as err:
        await sup.mcp.read_resource("docs", "mem://nope")
    assert (err.value.code, err.value.message) == (-32002, "Resource not found: mem://nope")
    prompts = await sup.mcp.list_prompts()
    assert [p["name"] for p in prompts] == ["docs__greet"]
    got = await sup.mcp.get_prompt("docs__greet", {"who": "Ada"})
    assert got["messages"][0]["content"]["text"] == "Say hello to Ada"
    done = await sup.mcp.complete("docs", {"type": "ref/prompt", "name": "greet"},
                                  {"name": "who", "value": "al"})
    assert done["completion"]["values"] == ["alice", "albert"]


async def test_the_allowlist_applies_to_resources_and_prompts(sup: Supervisor) -> None:
    await up(sup, scripted("docs", "v2025-11,resources"))
    allow = ["docs__mem://doc/1", "docs__echo"]
    assert [r["uri"] for r in await sup.mcp.list_resources(allow=allow)] == ["mem://doc/1"]
    assert await sup.mcp.list_prompts(allow=allow) == []
    with pytest.raises(RpcError) as err:
        await sup.mcp.read_resource("docs", "mem://doc/2", allow=allow)
    assert (err.value.code, err.value.message) == (
        jsonrpc.TOOL_NOT_ALLOWED,
        "resource docs__mem://doc/2 is not allowed (allowlist: "
        "['docs__mem://doc/1', 'docs__echo'])")
    with pytest.raises(RpcError) as err:
        await sup.mcp.get_prompt("docs__greet", {"who": "x"}, allow=allow)
    assert err.value.code == jsonrpc.TOOL_NOT_ALLOWED


async def test_resource_updates_reach_subscribers(sup: Supervisor) -> None:
    await up(sup, scripted("sub", "v2025-11,resources"))
    seen: list[tuple[str, str]] = []
    await sup.mcp.subscribe("sub", "mem://doc/0", "me", lambda s, u, p: seen.append((s, u)))
    await sup.mcp.call("sub__touch", {"uri": "mem://doc/0"})
    await sup.mcp.call("sub__touch", {"uri": "mem://doc/2"})  # nobody subscribed
    assert seen == [("sub", "mem://doc/0")]
    await sup.mcp.unsubscribe("sub", "mem://doc/0", "me")
    await sup.mcp.call("sub__touch", {"uri": "mem://doc/0"})
    assert seen == [("sub", "mem://doc/0")] and sup.mcp.subscriptions == {}


# -- roots, logging, sampling, stop ---------------------------------------------------------
async def test_roots_are_offered_and_changes_are_told(sup: Supervisor, tmp_path: Path) -> None:
    logs = capture_logs(sup, "rt")
    spec = scripted("rt", "v2025-11,resources", roots=[str(tmp_path)])
    inst = await up(sup, spec)
    assert inst.client.client_capabilities() == {"roots": {"listChanged": True}}
    res = await sup.mcp.call("rt__roots", {})
    answer: dict[str, Any] = __import__("json").loads(res["content"][0]["text"])
    assert answer["result"] == {"roots": [{"uri": tmp_path.as_uri(), "name": tmp_path.name}]}
    import msgspec

    assert sup.mcp.retune(msgspec.structs.replace(spec, roots=["/srv"]))
    await sup.mcp.call("rt__echo", {"text": "sync"})  # the notification went before it
    assert "roots changed" in logs and inst.client.roots == ["file:///srv"]
    assert not sup.mcp.retune(msgspec.structs.replace(spec, timeout=9.0))


async def test_log_level_is_set_and_server_logs_reach_its_log(sup: Supervisor) -> None:
    logs = capture_logs(sup, "lg")
    await up(sup, scripted("lg", "v2025-11,resources", log_level="debug"))
    await sup.mcp.call("lg__echo", {"text": "sync"})
    assert "log level debug" in logs  # the server's stderr
    assert 'log info [scripted]: {"level":"debug"}' in logs  # notifications/message


async def test_sampling_and_elicitation_are_declined_clearly(sup: Supervisor) -> None:
    inst = await up(sup, scripted("dec", "v2025-11"))
    for method, what in (("sampling/createMessage", "sampling"),
                         ("elicitation/create", "elicitation")):
        with pytest.raises(RpcError) as err:
            inst.client.on_request(method, b"{}", inst.client.peer)  # type: ignore[arg-type]
        assert (err.value.code, err.value.message) == (
            jsonrpc.METHOD_NOT_FOUND,
            f"{method}: corral does not offer {what} (it runs unattended; see "
            "docs/decisions.md)")


async def test_mcp_servers_are_stopped_the_mcp_way_without_shutdown(sup: Supervisor) -> None:
    logs = capture_logs(sup, "bye")
    inst = await up(sup, scripted("bye", "v2025-11"))
    await inst.stop("stopped")
    assert inst.last_exit == "stopped" and "got shutdown" not in logs


# -- agents ---------------------------------------------------------------------------------
async def test_an_agent_reads_resources_gets_prompts_and_hears_updates(
        sup: Supervisor) -> None:
    from corral.supervisor import State

    from .conftest import agent

    await up(sup, scripted("docs", "v2025-11,resources"))
    sup.add(agent("lib", "librarian.py", tools=["docs__mem://doc/*", "docs__greet",
                                                "docs__touch"]))
    await sup.wait_state("lib", State.READY)
    res = await sup.tasks.run("lib", {"server": "docs", "uri": "mem://doc/1",
                                      "prompt": "docs__greet", "arguments": {"who": "Ada"},
                                      "watch": True})
    assert res.status == "succeeded", res.error
    assert res.output == {
        "resources": ["mem://doc/0", "mem://doc/1", "mem://doc/2"],
        "prompts": ["docs__greet"], "read": "contents of mem://doc/1",
        "prompt": "Say hello to Ada", "updated": [["docs", "mem://doc/1"]]}
    assert list(sup.mcp.subscriptions) == [("docs", "mem://doc/1")]
    await sup.stop("lib")
    assert sup.mcp.subscriptions[("docs", "mem://doc/1")] == {}


async def test_an_agent_is_refused_what_its_allowlist_does_not_admit(sup: Supervisor) -> None:
    from corral.supervisor import State

    from .conftest import agent

    await up(sup, scripted("docs", "v2025-11,resources"))
    sup.add(agent("nosy", "misbehave.py", tools=["docs__echo"]))
    await sup.wait_state("nosy", State.READY)
    res = await sup.tasks.run("nosy", {"do": "raw", "method": "resources/read",
                                       "params": {"server": "docs", "uri": "mem://doc/0"}})
    assert res.output == {"error": jsonrpc.TOOL_NOT_ALLOWED, "message": (
        "resource docs__mem://doc/0 is not allowed (allowlist: ['docs__echo'])")}
    res = await sup.tasks.run("nosy", {"do": "raw", "method": "resources/list",
                                       "params": {}})
    assert res.output == {"result": {"resources": []}}
    res = await sup.tasks.run("nosy", {"do": "raw", "method": "prompts/get",
                                       "params": {"name": "docs__greet", "arguments": [1]}})
    assert res.output == {"error": jsonrpc.INVALID_PARAMS,
                          "message": "prompts/get: arguments must be an object of strings"}


async def test_list_changes_are_told_to_listeners(sup: Supervisor) -> None:
    import asyncio

    await up(sup, scripted("gr", "v2025-11"))
    told: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    sup.stream.subscribe(lambda e: told.put_nowait((e.server, e.kind)), ListChanged)
    await sup.mcp.call("gr__grow", {})
    assert await asyncio.wait_for(told.get(), 10) == ("gr", "tools")
    assert any(t["name"] == "gr__extra" for t in await sup.mcp.list_tools())


async def test_task_augmented_tools_are_polled_to_their_result_and_cancelled_on_timeout(
        sup: Supervisor) -> None:
    import asyncio

    cancelled = asyncio.get_running_loop().create_future()

    def listen(r: Replica, stream: str, block: LineBlock) -> None:
        if r.name == "tk" and b"task t2 cancelled" in block.block and not cancelled.done():
            cancelled.set_result(True)

    sup.stream.subscribe(lambda e: listen(*e), LogBatch)
    await up(sup, scripted("tk", "v2025-11,tasks", timeout=1.0))
    assert await sup.mcp.call("tk__quick", {}) == {
        "content": [{"type": "text", "text": "done after 2 polls"}]}
    with pytest.raises(RpcError) as err:
        await sup.mcp.call("tk__endless", {})
    assert (err.value.code, err.value.message) == (
        jsonrpc.REQUEST_TIMEOUT, "tools/call: no answer from MCP server tk#0 within 1 s")
    # tasks/cancel went to the server, which says so on stderr
    assert await asyncio.wait_for(cancelled, 10)
