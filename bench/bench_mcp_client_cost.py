"""Does corral's own MCP client (corral/mcp/client.py, on corral's JSON-RPC layer) earn
its place against the official `mcp` SDK's ClientSession (issue 72)? Per tools/call, not
per second (bench_mcp.py's calls per second is the same race seen from the other side).

Both call `echo` of the same minimal stdio server (bench/min_mcp_server.py, a separate
process): corral's client as the daemon holds it (the pool's instance, its process
supervised), the SDK's over its own `stdio_client`. Each on uvloop (the daemon's loop),
the SDK also on asyncio's own loop (as its users run it). Per call, at concurrency 1 and
8, median of ROUNDS rounds of N calls: wall µs (latency at 1), and CPU µs of this process
(`time.process_time`: the client's share; the server's process is not counted).

    .venv/bin/python -m bench.bench_mcp_client_cost [--quick]  # -> results/mcp_client_cost.json
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

from corral.supervisor import McpServerSpec, Supervisor

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SERVER = ROOT / "bench" / "min_mcp_server.py"
QUICK = "--quick" in sys.argv
CALLS = 1000 if QUICK else 3000
ROUNDS = 3 if QUICK else 5

Call = Callable[[int], Awaitable[Any]]


async def run(call: Call, n: int, concurrency: int) -> dict[str, float]:
    left = iter(range(n))

    async def worker() -> None:
        for i in left:
            await call(i)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"wall_us": wall / n * 1e6, "cpu_us": cpu / n * 1e6}


async def rounds(call: Call) -> dict[str, dict[str, float]]:
    await run(call, 200, 8)  # warm
    got: dict[str, list[dict[str, float]]] = {"1": [], "8": []}
    for _ in range(ROUNDS):
        for c in (1, 8):
            got[str(c)].append(await run(call, CALLS, c))
    return {c: {k: round(statistics.median(r[k] for r in rs), 1) for k in ("wall_us", "cpu_us")}
            for c, rs in got.items()}


async def corral_client() -> dict[str, dict[str, float]]:
    async with Supervisor() as sup:
        sup.add_mcp_server(McpServerSpec(name="min", command=[PY, str(SERVER)]))
        inst = await sup.mcp.instance(sup.mcp.server("min"), None)
        client = inst.client

        async def call(i: int) -> Any:
            result = await client.call_tool("echo", {"text": str(i)}, timeout=30)
            assert result["content"][0]["text"] == str(i), result
            return result

        return await rounds(call)


async def sdk_client() -> dict[str, dict[str, float]]:
    from mcp.client import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=PY, args=[str(SERVER)])
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()

        async def call(i: int) -> Any:
            result = await session.call_tool("echo", {"text": str(i)})
            assert result.content[0].text == str(i), result  # type: ignore[union-attr]
            return result

        return await rounds(call)


def main() -> None:
    result: dict[str, Any] = {
        "corral_uvloop": uvloop.run(corral_client()),
        "sdk_uvloop": uvloop.run(sdk_client()),
        "sdk_asyncio": asyncio.run(sdk_client()),
        "calls_per_round": CALLS, "rounds": ROUNDS,
    }
    for c in ("1", "8"):
        result[f"sdk_uvloop_over_corral_{c}"] = {
            k: round(result["sdk_uvloop"][c][k] / result["corral_uvloop"][c][k], 2)
            for k in ("wall_us", "cpu_us")}
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "mcp_client_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
