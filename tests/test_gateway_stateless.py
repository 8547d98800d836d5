"""The gateway as a 2026-07-28 server (SEP-2575), over Streamable HTTP and over stdio
(`corral mcp serve`): a request's envelope refused with its own id and the revision's
status, the removed methods refused to a 2026-07-28 request while a 2025-11-25 session
keeps them, `subscriptions/listen` (its acknowledgement, subscription id and filter, held
as one of the client's sessions), the caching hints of `resources/read`."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from .conftest import ROOT
from .daemon_harness import PY, Daemon, running_daemon, shared_tmpdir
from .test_gateway_stdio import SCRIPTED

STATELESS = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": STATELESS,
        "io.modelcontextprotocol/clientCapabilities": {}}


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with running_daemon(shared_tmpdir(), f"""
[mcp_servers.sc]
command = ["{PY}", "{SCRIPTED}", "v2025-11,resources"]
start_timeout = 30.0
backoff_initial = 0.05

[gateway]
listen = "127.0.0.1:0"
anonymous_tools = ["*"]
max_sessions_per_client = 1
""") as d:
        yield d


def url(d: Daemon) -> str:
    return str(d.json("mcp", "status")["gateway"]["http"]["url"])


def headers(method: str, name: str | None = None, version: str = STATELESS
            ) -> dict[str, str]:
    h = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": version,
         "Mcp-Method": method}
    if name is not None:
        h["Mcp-Name"] = name
    return h


async def post(d: Daemon, body: dict[str, Any], h: dict[str, str]
               ) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.post(url(d), json=body,
                                                          headers=h) as resp:
        return resp.status, await resp.json(content_type=None)


def request(rid: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}


async def test_a_requests_envelope_is_refused_with_its_id_and_status(daemon: Daemon) -> None:
    cases = [  # (params, headers, status, code, message)
        ({}, headers("tools/list"), 400, -32602,
         "invalid params: a 2026-07-28 request carries _meta with "
         "io.modelcontextprotocol/protocolVersion and "
         "io.modelcontextprotocol/clientCapabilities (a 2025-11-25 client sends initialize "
         "first)"),
        ({"_meta": {"io.modelcontextprotocol/protocolVersion": STATELESS}},
         headers("tools/list"), 400, -32602,
         "invalid params: _meta has no io.modelcontextprotocol/clientCapabilities object"),
        ({"_meta": {**META, "io.modelcontextprotocol/protocolVersion": "v9"}},
         headers("tools/list"), 400, -32020,
         "header mismatch: MCP-Protocol-Version is '2026-07-28', _meta says 'v9'"),
        ({"_meta": META}, headers("prompts/list"), 400, -32020,
         "header mismatch: Mcp-Method is 'prompts/list', the body's method 'tools/list'"),
        ({"_meta": META}, {"MCP-Protocol-Version": STATELESS}, 400, -32020,
         "header mismatch: no Mcp-Method header"),
    ]
    for rid, (params, h, status, code, message) in enumerate(cases, start=300):
        got = await post(daemon, request(rid, "tools/list", params), h)
        assert got == (status, {"jsonrpc": "2.0", "id": rid,
                                "error": {"code": code, "message": message}}), rid
    # a version corral does not speak: the versions it does, and the one asked
    status, body = await post(daemon, request(
        301, "server/discover", {"_meta": {**META, "io.modelcontextprotocol/protocolVersion":
                                           "v999"}}), headers("server/discover", None, "v999"))
    assert status == 400 and body["id"] == 301 and body["error"]["code"] == -32022
    assert body["error"]["data"] == {"requested": "v999", "supported": [
        "2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"]}
    # a tools/call's Mcp-Name says the tool the body names
    status, body = await post(daemon, request(
        302, "tools/call", {"name": "sc__echo", "arguments": {"text": "x"}, "_meta": META}),
        headers("tools/call", "sc__other"))
    assert (status, body["id"], body["error"]["code"]) == (400, 302, -32020)


async def test_an_escaped_meta_key_is_read_as_meta(daemon: Daemon) -> None:
    """`\\u005fmeta` is `_meta` to JSON (the envelope's look for it skips no such body): a
    ping carrying it is a 2026-07-28 request (the removed method's 404), not a 2025-11-25
    one of no session (a 400)."""
    body = json.dumps(request(310, "ping", {"_meta": META})).replace('"_meta"',
                                                                     '"\\u005fmeta"')
    h = {"Accept": "application/json, text/event-stream", "Mcp-Method": "ping",
         "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http, http.post(url(daemon), data=body,
                                                          headers=h) as resp:
        got = resp.status, await resp.json(content_type=None)
    assert got == (404, {"jsonrpc": "2.0", "id": 310, "error": {
        "code": -32601, "message": "method not found: ping (not in 2026-07-28)"}})


async def test_removed_methods_are_404_to_a_2026_request_and_kept_for_a_session(
        daemon: Daemon) -> None:
    for rid, method in enumerate(["initialize", "ping", "logging/setLevel",
                                  "resources/subscribe", "resources/unsubscribe",
                                  "no/such/method"], start=500):
        status, body = await post(daemon, request(rid, method, {"_meta": META}),
                                  headers(method))
        assert status == 404 and body["id"] == rid and body["error"]["code"] == -32601, \
            (method, body)
    # a 2025-11-25 client: initialize, then ping in its session
    async with aiohttp.ClientSession() as http:
        h = {"Accept": "application/json, text/event-stream"}
        async with http.post(url(daemon), headers=h, json=request(1, "initialize", {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "old", "version": "1"}})) as resp:
            assert resp.status == 200
            sid = resp.headers["Mcp-Session-Id"]
        h |= {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
        async with http.post(url(daemon), headers=h, json=request(2, "ping", {})) as resp:
            assert resp.status == 200 and (await resp.json())["result"] == {}
        async with http.delete(url(daemon), headers=h) as resp:
            assert resp.status == 200


async def test_resources_read_carries_the_caching_hints(daemon: Daemon) -> None:
    status, body = await post(daemon, request(7, "resources/list", {"_meta": META}),
                              headers("resources/list"))
    uri = body["result"]["resources"][0]["uri"]
    status, body = await post(daemon, request(8, "resources/read", {"uri": uri,
                                                                    "_meta": META}),
                              headers("resources/read", uri))
    assert status == 200
    assert {k: body["result"][k] for k in ("ttlMs", "cacheScope", "resultType")} == \
        {"ttlMs": 0, "cacheScope": "private", "resultType": "complete"}


async def events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    async for line in resp.content:
        if line.startswith(b"data:"):
            yield json.loads(line[5:])


async def test_subscriptions_listen_acks_tags_filters_and_is_a_session(
        daemon: Daemon) -> None:
    h = headers("subscriptions/listen")
    async with aiohttp.ClientSession() as http, http.post(url(daemon), headers=h, json=request(
            42, "subscriptions/listen", {"_meta": META, "notifications": {
                "resourcesListChanged": True, "promptsListChanged": False}})) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        got = events(resp)
        assert await anext(got) == {
            "jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
            "params": {"notifications": {"resourcesListChanged": True},
                       "_meta": {"io.modelcontextprotocol/subscriptionId": 42}}}
        # the stream is one of the client's sessions (max_sessions_per_client = 1), busy:
        # a second is refused naming the bound
        assert daemon.json("mcp", "status")["gateway"]["http"]["sessions"] == 1
        async with http.post(url(daemon), headers=h, json=request(
                43, "subscriptions/listen", {"_meta": META, "notifications": {}})) as second:
            assert second.status == 503
            assert "max_sessions_per_client 1" in (await second.json())["error"]["message"]
        r = await asyncio.to_thread(daemon.cli, "mcp", "restart", "sc")
        assert r.returncode == 0, r.stderr
        # tools and prompts changed too: only what it asked for comes
        assert await asyncio.wait_for(anext(got), 30) == {
            "jsonrpc": "2.0", "method": "notifications/resources/list_changed",
            "params": {"_meta": {"io.modelcontextprotocol/subscriptionId": 42}}}
    # its end (the client went away) ends its session
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while daemon.ask("mcp.status")["gateway"]["http"]["sessions"]:
        assert loop.time() < deadline
        await asyncio.sleep(0.05)


@asynccontextmanager
async def serve(d: Daemon) -> AsyncIterator[tuple[asyncio.StreamWriter, asyncio.StreamReader]]:
    proc = await asyncio.create_subprocess_exec(
        PY, "-m", "corral", "--socket", str(d.sock), "mcp", "serve",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdin is not None and proc.stdout is not None
    try:
        yield proc.stdin, proc.stdout  # type: ignore[misc]
    finally:
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 30)


async def exchange(w: Any, r: asyncio.StreamReader, msg: dict[str, Any]) -> dict[str, Any]:
    w.write(json.dumps(msg).encode() + b"\n")
    line = await asyncio.wait_for(r.readline(), 30)
    out: dict[str, Any] = json.loads(line)
    return out


async def test_over_stdio_the_envelope_is_checked_and_listen_is_served(
        daemon: Daemon) -> None:
    async with serve(daemon) as (w, r):
        assert await exchange(w, r, request(1, "tools/list", {})) == {
            "jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": (
                "invalid params: a 2026-07-28 request carries _meta with "
                "io.modelcontextprotocol/protocolVersion and "
                "io.modelcontextprotocol/clientCapabilities (a 2025-11-25 client sends "
                "initialize first)")}}
        got = await exchange(w, r, request(2, "ping", {"_meta": META}))
        assert (got["id"], got["error"]["code"]) == (2, -32601)
        got = await exchange(w, r, request(3, "tools/list", {"_meta": META}))
        assert got["id"] == 3 and "sc__echo" in [t["name"] for t in got["result"]["tools"]]
        ack = await exchange(w, r, request(4, "subscriptions/listen", {
            "_meta": META, "notifications": {"toolsListChanged": True}}))
        assert ack["params"] == {"notifications": {"toolsListChanged": True},
                                 "_meta": {"io.modelcontextprotocol/subscriptionId": 4}}
        # the client cancels its stream: no answer to it, and the channel goes on
        w.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled",
                            "params": {"requestId": 4}}).encode() + b"\n")
        got = await exchange(w, r, request(5, "server/discover", {"_meta": META}))
        assert got["id"] == 5 and STATELESS in got["result"]["supportedVersions"]
    async with serve(daemon) as (w, r):  # a 2025-11-25 client still pings
        got = await exchange(w, r, request(1, "initialize", {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "old", "version": "1"}}))
        assert got["result"]["protocolVersion"] == "2025-11-25"
        assert await exchange(w, r, request(2, "ping", {})) == {
            "jsonrpc": "2.0", "id": 2, "result": {}}


def test_corrals_client_speaks_2026_07_28_to_a_gateway_that_requires_its_headers(
        daemon: Daemon) -> None:
    """Another corral with this gateway as a remote server: its client sends Mcp-Method
    and Mcp-Name (the gateway refuses a 2026-07-28 request without them)."""
    r = daemon.cli("tools", "call", "sc__echo", "--args", '{"text": "up"}')
    assert r.returncode == 0, r.stderr  # sc serving: the gateway lists its tools at once
    with running_daemon(shared_tmpdir(), f"""
[mcp_servers.up]
url = "{url(daemon)}"
start_timeout = 30.0
""") as other:
        other.json("tools")  # starts it
        st = {s["name"]: s for s in other.json("mcp", "status")["mcp_servers"]}
        assert (st["up"]["state"], st["up"]["protocol_version"]) == ("ready", STATELESS), \
            st["up"]
        # its tools/list came through: what corral takes of a server's names it said (a
        # gateway's SERVER__TOOL is not a tool name corral calls through a server)
        assert "'sc__echo'" in st["up"]["rejected_tools"]
