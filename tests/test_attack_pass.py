"""An attacker's pass over issue 52's merged result (decisions 470-474): each test holds
one hole a hostile client or tenant found, against a real daemon through its public
surface (the gateway's HTTP, the control socket, the CLI)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from .daemon_harness import Daemon
from .test_gateway_stateless import META, daemon, request, url

__all__ = ["daemon"]  # the gateway's module fixture, shared


async def test_a_2025_session_holds_no_listen_stream_not_even_in_a_batch(
        daemon: Daemon) -> None:
    """subscriptions/listen is a 2026-07-28 request, held as a session of its own: sent
    inside a 2025-11-25 session (Mcp-Session-Id) it was held there, past every bound on
    sessions, so one POST of a batch of 60,000 listens grew the daemon by 258 MB (decision
    470). It is refused at once, as a method of no such session, the session usable."""
    h = {"Accept": "application/json, text/event-stream",
         "MCP-Protocol-Version": "2025-11-25"}
    listen = {"_meta": META, "notifications": {"toolsListChanged": True}}
    refused: dict[str, Any] = {"code": -32601, "message":
                               "method not found: subscriptions/listen (2026-07-28 only)"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url(daemon), headers=h, json=request(1, "initialize", {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "old", "version": "1"}})) as resp:
            assert resp.status == 200
            h["Mcp-Session-Id"] = resp.headers["Mcp-Session-Id"]
        async with http.post(url(daemon), headers=h, json={
                "jsonrpc": "2.0", "method": "notifications/initialized"}) as resp:
            assert resp.status == 202
        batch = [request(i, "subscriptions/listen", listen) for i in range(2, 200)]
        async with asyncio.timeout(30), http.post(url(daemon), headers=h,
                                                  json=batch) as resp:
            assert resp.status == 200
            answers = await resp.json()
        assert answers == [{"jsonrpc": "2.0", "id": i, "error": refused}
                           for i in range(2, 200)]
        async with asyncio.timeout(30), http.post(url(daemon), headers=h, json=request(
                200, "subscriptions/listen", listen)) as resp:
            assert (await resp.json())["error"] == refused
        gateway = daemon.json("mcp", "status")["gateway"]["http"]
        assert (gateway["sessions"], gateway["busy"]) == (1, 0)
        async with http.post(url(daemon), headers=h, json=request(
                201, "tools/list", {})) as resp:
            assert "sc__echo" in [t["name"] for t in (await resp.json())["result"]["tools"]]
