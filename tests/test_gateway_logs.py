"""A server's log messages during a tools/call reach the client that made it, on the
call's own stream (corral/mcp/logrelay.py): a 2026-07-28 request that carried a logLevel,
a 2025-11-25 session that set one, over HTTP and over stdio (`corral mcp serve`); a
message that could be of more than one caller's call stays in corral's own log, as does
a 2025-11-25 server's once another caller has used its session (decision 660)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from .conftest import ROOT
from .daemon_harness import PY, Daemon, running_daemon, shared_tmpdir
from .test_gateway_conformance import FIXTURE_SERVER
from .test_gateway_stdio import wait_until_async

mcp = pytest.importorskip("mcp")
from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402
from mcp.shared.exceptions import MCPDeprecationWarning  # noqa: E402

STATELESS = "2026-07-28"
LOG_LEVEL = "io.modelcontextprotocol/logLevel"
META = {"io.modelcontextprotocol/protocolVersion": STATELESS,
        "io.modelcontextprotocol/clientCapabilities": {}}
LOGGED = [{"level": "info", "data": d} for d in (
    "Tool execution started", "Tool processing data", "Tool execution completed")]


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with running_daemon(shared_tmpdir(), f"""
[mcp_servers.fx]
command = ["{PY}", "{FIXTURE_SERVER}"]
start_timeout = 30.0

[gateway]
listen = "127.0.0.1:0"
anonymous_tools = ["*"]
""") as d:
        yield d


def url(d: Daemon) -> str:
    return str(d.json("mcp", "status")["gateway"]["http"]["url"])


def in_flight(d: Daemon) -> int:
    st = {s["name"]: s for s in d.json("mcp", "status")["mcp_servers"]}
    n: int = st["fx"]["in_flight"]
    return n


async def call(d: Daemon, rid: int, tool: str, arguments: dict[str, Any],
               level: str | None = None, server: str = "fx", token: str | None = None
               ) -> list[dict[str, Any]]:
    """A 2026-07-28 tools/call at /mcp/SERVER (as `token`'s client, else anonymous):
    every message of its stream, its answer last."""
    meta = {**META, LOG_LEVEL: level} if level else META
    body = {"jsonrpc": "2.0", "id": rid, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments, "_meta": meta}}
    h = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": STATELESS,
         "Mcp-Method": "tools/call", "Mcp-Name": tool,
         **({"Authorization": f"Bearer {token}"} if token else {})}
    async with aiohttp.ClientSession() as http, \
            http.post(url(d) + f"/{server}", json=body, headers=h) as resp:
        assert resp.status == 200, await resp.text()
        if resp.content_type == "application/json":
            return [await resp.json()]
        return [json.loads(line[5:]) for line in (await resp.text()).splitlines()
                if line.startswith("data:") and line[5:].strip()]


def logs_of(stream: list[dict[str, Any]]) -> list[Any]:
    return [m["params"] for m in stream if m.get("method") == "notifications/message"]


async def test_a_calls_log_messages_reach_its_stream_at_its_level(daemon: Daemon) -> None:
    stream = await call(daemon, 1, "test_tool_with_logging", {}, "info")
    assert logs_of(stream) == LOGGED
    assert stream[-1]["id"] == 1
    assert stream[-1]["result"]["content"] == [
        {"type": "text", "text": "Tool with logging executed successfully"}]
    # a level above the messages', or none: not one is sent
    for rid, level in ((2, "warning"), (3, None)):
        stream = await call(daemon, rid, "test_tool_with_logging", {}, level)
        assert logs_of(stream) == [] and stream[-1]["id"] == rid, stream


async def test_a_message_that_could_be_of_two_calls_goes_to_neither(daemon: Daemon) -> None:
    """Over a pipe nothing ties a message to its request: one sent while two calls that
    asked for logs are in flight is in corral's log only, never given to a guess."""
    first = asyncio.ensure_future(call(daemon, 10, "gated_log", {"key": "a"}, "info"))
    second = asyncio.ensure_future(call(daemon, 11, "gated_log", {"key": "b"}, "info"))
    await wait_until_async(lambda: in_flight(daemon) == 2)
    assert logs_of(await call(daemon, 12, "open_gate", {"key": "a"})) == []
    stream = await first
    assert logs_of(stream) == [] and stream[-1]["result"]["content"] == [
        {"type": "text", "text": "gated a done"}]
    logs = await asyncio.to_thread(daemon.cli, "logs", "fx", "-n", "50")
    assert "log info: gated a" in logs.stdout, logs.stdout
    # the second is alone in flight now: its message is its own
    await call(daemon, 13, "open_gate", {"key": "b"})
    stream = await second
    assert logs_of(stream) == [{"level": "info", "data": "gated b"}]
    assert stream[-1]["result"]["content"] == [{"type": "text", "text": "gated b done"}]


async def test_a_2025_11_25_session_sets_a_level_of_the_ones_mcp_names(daemon: Daemon
                                                                       ) -> None:
    h = {"Accept": "application/json, text/event-stream"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url(daemon) + "/fx", headers=h, json={
                "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-11-25", "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"}}}) as resp:
            assert resp.status == 200, await resp.text()
            session = resp.headers["Mcp-Session-Id"]
        h = {**h, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}
        async with http.post(url(daemon) + "/fx", headers=h, json={
                "jsonrpc": "2.0", "method": "notifications/initialized"}) as resp:
            assert resp.status == 202, await resp.text()
        async with http.post(url(daemon) + "/fx", headers=h, json={
                "jsonrpc": "2.0", "id": 2, "method": "logging/setLevel",
                "params": {"level": "loud"}}) as resp:
            assert await resp.json(content_type=None) == {
                "jsonrpc": "2.0", "id": 2, "error": {
                    "code": -32602,
                    "message": "invalid params: logging/setLevel needs a level of debug, "
                               "info, notice, warning, error, critical, alert, emergency"}}


async def test_corral_mcp_serve_passes_a_calls_log_messages_on(daemon: Daemon) -> None:
    params = StdioServerParameters(
        command=PY, args=["-m", "corral", "--socket", str(daemon.sock), "mcp", "serve"],
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    seen: list[Any] = []

    async def on_log(params: Any) -> None:
        seen.append({"level": params.level, "data": params.data})

    async with stdio_client(params) as (r, w), \
            ClientSession(r, w, logging_callback=on_log) as s:
        await s.initialize()
        with pytest.warns(MCPDeprecationWarning):  # of 2026-07-28; this session is 2025-11-25
            await s.set_logging_level("info")
        result = await s.call_tool("fx__test_tool_with_logging", {})
        assert not result.is_error, result
    assert seen == LOGGED


@pytest.fixture(scope="module")
def legacy() -> Iterator[tuple[Daemon, dict[str, str]]]:
    """A 2025-11-25 server (which logs for its session, not a request) at /mcp/lg, and
    two clients' tokens."""
    with running_daemon(shared_tmpdir(), f"""
[mcp_servers.lg]
command = ["{PY}", "{FIXTURE_SERVER}", "--legacy"]
start_timeout = 30.0

[gateway]
listen = "127.0.0.1:0"
""") as d:
        yield d, {c: d.json("token", "create", f"mcp-{c}", "--scope", "mcp:call")["token"]
                  for c in "ab"}


async def test_a_log_of_work_another_client_left_running_never_reaches_a_caller(
        legacy: tuple[Daemon, dict[str, str]]) -> None:
    """The attacker's pass (decision 660): B's call is answered at once and its work goes
    on; it logs while A's call, which asked for logs, is the one request in flight. That
    message is B's: it stays in corral's log. A caller gets a 2025-11-25 server's messages
    only while every call made on the session was its own. Fails with the rule "the one
    request in flight" (A's stream carried "B's secret k")."""
    d, tokens = legacy
    a, b = tokens["a"], tokens["b"]
    own = await call(d, 1, "test_tool_with_logging", {}, "info", "lg", a)
    assert logs_of(own) == LOGGED, own  # the session has been A's alone so far
    answered = await call(d, 2, "b_work", {"key": "k"}, None, "lg", b)
    assert answered[-1]["result"]["content"] == [
        {"type": "text", "text": "b_work k answered"}], answered
    stream = await call(d, 3, "a_wait", {"key": "k"}, "debug", "lg", a)
    assert stream[-1]["result"]["content"] == [
        {"type": "text", "text": "a_wait k done"}], stream
    assert logs_of(stream) == [], stream
    logs = await asyncio.to_thread(d.cli, "logs", "lg", "-n", "50")
    assert "log info: B's secret k" in logs.stdout, logs.stdout
    # the session has carried B's call: none of its messages is a caller's any more
    again = await call(d, 4, "test_tool_with_logging", {}, "info", "lg", a)
    assert logs_of(again) == [] and again[-1]["id"] == 4, again
