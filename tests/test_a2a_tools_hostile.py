"""An attacker's pass over remote A2A agents as tools (issue 88): what a hostile remote
makes corral's `a2a` server (corral/mcp/a2atool.py, a real process on its stdio) do. An
answer of another shape than A2A's left the call unanswered (an exception in the call's
task: the agent waited out its tool's timeout, nothing said), and an answer of any size
was read whole into the server's memory."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from .conftest import ROOT
from .daemon_harness import free_port

Answer = Callable[[dict[str, Any]], web.StreamResponse]


@asynccontextmanager
async def hostile(answer: Answer) -> AsyncIterator[str]:
    """A remote whose card is A2A's and whose JSON-RPC answers are `answer(request)`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/a2a/x"

    async def card(request: web.Request) -> web.Response:
        return web.json_response({"name": "x", "supportedInterfaces": [
            {"url": url, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}]})

    async def rpc(request: web.Request) -> web.StreamResponse:
        return answer(await request.json())

    app = web.Application()
    app.add_routes([web.get("/a2a/x/.well-known/agent-card.json", card),
                    web.post("/a2a/x", rpc)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield url
    finally:
        await runner.cleanup()


# the remote's timeout, far past the test's patience: a call answered within PATIENCE is
# answered at once, not at its timeout (a bound of 10 s against a timeout of 60 told the
# two apart, and at load 40 the tool's start and the huge answer's read outlasted 10 s)
REMOTE_TIMEOUT = 3600
PATIENCE = 60.0


async def call(url: str) -> dict[str, Any]:
    """One tools/call of a2a__x through a real `python -m corral.mcp.a2atool`: its result."""
    table = json.dumps({"x": {"url": url, "timeout": REMOTE_TIMEOUT}})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral.mcp.a2atool", table, cwd=ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 26)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        for message in ({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                            "protocolVersion": "2025-11-25", "capabilities": {},
                            "clientInfo": {"name": "test", "version": "0"}}},
                        {"jsonrpc": "2.0", "method": "notifications/initialized"},
                        {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                         "params": {"name": "x", "arguments": {"message": "hi"}}}):
            proc.stdin.write(json.dumps(message).encode() + b"\n")
        await proc.stdin.drain()
        await asyncio.wait_for(proc.stdout.readline(), PATIENCE)  # (initialize's answer)
        line = await asyncio.wait_for(proc.stdout.readline(), PATIENCE)
        answer: dict[str, Any] = json.loads(line)
        return answer["result"]  # type: ignore[no-any-return]
    finally:
        proc.kill()
        await proc.wait()


def rpc_result(result: Any) -> Answer:
    return lambda req: web.json_response({"jsonrpc": "2.0", "id": req["id"],
                                          "result": result})


@pytest.mark.deadline(2 * PATIENCE + 30)
@pytest.mark.parametrize("result", [
    {"task": {"id": "t", "status": "working"}},       # a status that is no object
    {"task": {"status": {"state": "TASK_STATE_WORKING"}}},  # a task of no id, polled
    {"message": "hello"},                             # a message that is no object
    {"task": {"id": "t", "status": {"state": "TASK_STATE_COMPLETED"},
              "artifacts": ["text"]}},                # an artifact that is no object
    ["a", "list"],                                    # no object at all
], ids=["status", "no-id", "message", "artifact", "list"])
async def test_a_remote_answer_of_another_shape_is_the_calls_error_at_once(
        result: Any) -> None:
    async with hostile(rpc_result(result)) as url:
        got = await call(url)
    assert got["isError"] is True, got
    [said] = got["content"]
    assert said["text"].startswith("x: it answered what A2A does not ("), said


@pytest.mark.deadline(2 * PATIENCE + 30)
async def test_a_remote_answer_past_its_bound_is_refused_unread() -> None:
    """16 MiB at most (the gateway's bound on a server's line): more is the call's
    error, not the server's memory."""
    huge = {"task": {"id": "t", "status": {"state": "TASK_STATE_COMPLETED"}, "artifacts": [
        {"artifactId": "a", "parts": [{"text": "x" * (17 << 20)}]}]}}
    async with hostile(rpc_result(huge)) as url:
        got = await call(url)
    assert got == {"content": [{"type": "text", "text": (
        "x: SendMessage answered more than 16777216 bytes")}], "isError": True}
