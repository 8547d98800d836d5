"""Issue 12 (the gateway) benchmark, side by side in one run.

    .venv/bin/python -m bench.bench_gateway [--quick]

tools/call per second made by the official MCP SDK's ClientSession, against the same
minimal stdio server (bench/min_mcp_server.py), at concurrency 1 and 8:
- direct: the SDK client talks to the server itself (stdio);
- corral mcp serve: through the gateway over stdio (bridged to /mcp on the daemon's local socket);
- corral HTTP gateway: through `[gateway] listen` (Streamable HTTP on loopback);
- mcp-proxy (PyPI, pinned 0.13.0, in its own venv at bench/.work because it needs mcp<2):
  the peer gateway fronting the same server over Streamable HTTP.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from .bench_mcp import run_concurrent
from .harness import ENV, PY, ROOT, CorralDaemon, free_port, median, report, workdir

QUICK = "--quick" in sys.argv
CALLS = 300 if QUICK else 1000
ROUNDS = 3 if QUICK else 5
SERVER = ROOT / "bench" / "min_mcp_server.py"
PROXY_VENV = ROOT / "bench" / ".work" / "mcp-proxy"
PROXY_PIN = "mcp-proxy==0.13.0"


async def measure(session: ClientSession, tool: str) -> dict[str, list[float]]:
    async def call(i: int) -> None:
        res = await session.call_tool(tool, {"text": str(i)})
        assert not res.is_error

    await run_concurrent(call, 50, 8)  # warm up
    out: dict[str, list[float]] = {"1": [], "8": []}
    for _ in range(ROUNDS):
        for c in (1, 8):
            out[str(c)].append(await run_concurrent(call, CALLS, c))
    return out


@asynccontextmanager
async def over_stdio(command: str, args: list[str]) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=command, args=args, env=dict(ENV))
    async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
        await s.initialize()
        yield s


@asynccontextmanager
async def over_http(url: str) -> AsyncIterator[ClientSession]:
    http = httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=60))
    async with http, streamable_http_client(url, http_client=http) as (r, w), \
            ClientSession(r, w) as s:
        await s.initialize()
        yield s


def proxy_bin() -> Path:
    exe = PROXY_VENV / "bin" / "mcp-proxy"
    if not exe.exists():
        subprocess.run([PY, "-m", "venv", str(PROXY_VENV)], check=True)
        subprocess.run([str(PROXY_VENV / "bin" / "pip"), "install", "-q", PROXY_PIN],
                       check=True)
    return exe


async def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with httpx2.AsyncClient() as c:
        while True:
            try:
                await c.get(url)
                return
            except httpx2.HTTPError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)


async def main() -> None:
    results: dict[str, dict[str, list[float]]] = {}
    async with over_stdio(PY, [str(SERVER)]) as s:
        results["direct"] = await measure(s, "echo")

    d = workdir("gateway")
    port = free_port()
    daemon = CorralDaemon(d, f"""
[mcp_servers.min]
command = ["{PY}", "{SERVER}"]
start = "eager"

[gateway]
listen = "127.0.0.1:{port}"
anonymous_tools = ["*"]
max_concurrent = 64
""")
    daemon.start()
    try:
        async with over_stdio(PY, ["-m", "corral", "--socket", str(daemon.sock), "mcp",
                                   "serve"]) as s:
            results["corral mcp serve (stdio)"] = await measure(s, "min__echo")
        async with over_http(f"http://127.0.0.1:{port}/mcp") as s:
            results["corral HTTP gateway"] = await measure(s, "min__echo")
    finally:
        daemon.stop()

    pport = free_port()
    proxy = subprocess.Popen(
        [str(proxy_bin()), "--port", str(pport), "--host", "127.0.0.1", "--log-level",
         "WARNING", PY, str(SERVER)], env={**os.environ},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_http(f"http://127.0.0.1:{pport}/status")
        async with over_http(f"http://127.0.0.1:{pport}/mcp") as s:
            results["mcp-proxy 0.13.0 (HTTP)"] = await measure(s, "echo")
    finally:
        proxy.terminate()
        proxy.wait(30)

    direct = {c: median(v) for c, v in results["direct"].items()}
    table = {}
    for name, rates in results.items():
        med = {c: median(v) for c, v in rates.items()}
        table[name] = {
            f"calls_per_s_c{c}": round(med[c]) for c in ("1", "8")} | {
            "latency_ms_c1": round(1000 / med["1"], 3),
            "latency_vs_direct_c1": round(direct["1"] / med["1"], 2),
            "throughput_vs_direct_c8": round(med["8"] / direct["8"], 2)}
    report("gateway", {"calls_per_round": CALLS, "rounds": ROUNDS,
                       "loadavg": Path("/proc/loadavg").read_text().split()[:3],
                       "results": table})


if __name__ == "__main__":
    asyncio.run(main())
