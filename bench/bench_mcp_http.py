"""Issue 11 (remote MCP servers): tools/call per second over Streamable HTTP, side by side.

    .venv/bin/python -m bench.bench_mcp_http [--quick]

One server process (tests/http_mcp_server.py: the official SDK's Streamable HTTP server),
answering with SSE streams (the SDK's default) and, in a second run, with JSON; against
it corral's McpClient over corral's HTTP transport (aiohttp, uvloop) and the official
SDK's ClientSession over its streamable_http_client (httpx, asyncio's default loop, as
its users run it), at concurrency 1 and 8. Medians of the rounds; the ratio is corral's
rate over the SDK's.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import uvloop

from corral.mcp.client import McpClient
from corral.mcp.http import HttpTransport

from .bench_mcp import rates
from .harness import PY, ROOT, report

QUICK = "--quick" in sys.argv
CALLS = 300 if QUICK else 1000
ROUNDS = 3
SERVER = ROOT / "tests" / "http_mcp_server.py"


async def corral_rates(url: str) -> dict[str, list[float]]:
    client = McpClient("bench")
    transport = HttpTransport("bench", url, feed=lambda b: peer.feed_line(b),
                              on_lost=lambda why: None, param_headers=client.param_headers)
    peer = client.make_peer(transport.send)
    try:
        await client.connect(30)
        await client.list_tools(30)

        async def call(i: int) -> None:
            await client.call_tool("echo", {"text": str(i)}, timeout=30)

        return await rates(call, CALLS, ROUNDS)
    finally:
        await transport.close()


async def sdk_rates(url: str) -> dict[str, list[float]]:
    from mcp.client import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with streamable_http_client(url) as streams, \
            ClientSession(streams[0], streams[1]) as session:
        await session.initialize()

        async def call(i: int) -> None:
            await session.call_tool("echo", {"text": str(i)})

        return await rates(call, CALLS, ROUNDS)


def serve(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    p = subprocess.Popen([PY, str(SERVER), "streamable-http", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    assert p.stdout is not None
    port = int(p.stdout.readline().split()[1])
    return p, f"http://127.0.0.1:{port}/mcp"


def main() -> None:
    results: dict[str, Any] = {"calls_per_round": CALLS, "rounds": ROUNDS,
                               "load_before": Path("/proc/loadavg").read_text().split()[:3]}
    for mode, args in (("sse_responses", ()), ("json_responses", ("--json",))):
        proc, url = serve(*args)
        try:
            corral = uvloop.run(corral_rates(url))
            sdk = asyncio.run(sdk_rates(url))
        finally:
            proc.kill()
            proc.wait()
        results[mode] = {}
        for k in ("1", "8"):
            c, s = statistics.median(corral[k]), statistics.median(sdk[k])
            results[mode][f"concurrency_{k}"] = {"corral": round(c), "official_sdk": round(s),
                                                 "ratio": round(c / s, 2)}
    results["load_after"] = Path("/proc/loadavg").read_text().split()[:3]
    report("mcp_http", results)


if __name__ == "__main__":
    main()
