"""Issue 5 (MCP) benchmarks, side by side in one run.

    .venv/bin/python -m bench.bench_mcp [--quick]

1. tools/call calls per second against the same minimal stdio server
   (bench/min_mcp_server.py): corral's client (through the pool) beside the official MCP
   SDK's ClientSession, at concurrency 1 and 8
2. end to end: an agent task making N tool calls through the pool; the per-call cost
   beside the direct client's
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

import uvloop

from corral.supervisor import AgentSpec, McpServerSpec, State, Supervisor

from .harness import PY, ROOT, report

QUICK = "--quick" in sys.argv
CALLS = 1000 if QUICK else 5000
ROUNDS = 3 if QUICK else 5
SERVER = ROOT / "bench" / "min_mcp_server.py"
AGENT = ROOT / "bench" / "tool_agent.py"


async def run_concurrent(call: Any, n: int, concurrency: int) -> float:
    """Calls per second for n calls with `concurrency` in flight."""
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await call(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - t0)


async def rates(call: Any, calls: int = CALLS, rounds: int = ROUNDS
                ) -> dict[str, list[float]]:
    """Calls per second at concurrency 1 and 8, `rounds` times each."""
    out: dict[str, list[float]] = {"1": [], "8": []}
    for _ in range(rounds):
        for c in (1, 8):
            out[str(c)].append(await run_concurrent(call, calls, c))
    return out


async def corral_rates() -> dict[str, list[float]]:
    async with Supervisor() as sup:
        sup.add_mcp_server(McpServerSpec(name="min", command=[PY, str(SERVER)]))
        inst = await sup.mcp.instance(sup.mcp.server("min"), None)
        client = inst.client

        async def call(i: int) -> None:
            await client.call_tool("echo", {"text": str(i)}, timeout=30)

        return await rates(call)


async def sdk_rates() -> dict[str, list[float]]:
    from mcp.client import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=PY, args=[str(SERVER)])
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()

        async def call(i: int) -> None:
            await session.call_tool("echo", {"text": str(i)})

        return await rates(call)


async def raw_floor() -> float:
    """Calls per second of a bare pipe client (no MCP library, no checks) at concurrency 1:
    what the server and the pipe allow."""
    import subprocess

    import msgspec

    p = await asyncio.create_subprocess_exec(PY, str(SERVER), stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE)
    assert p.stdin and p.stdout
    rates = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for i in range(CALLS):
            p.stdin.write(msgspec.json.encode({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                                               "params": {"name": "echo",
                                                          "arguments": {"text": str(i)}}})
                          + b"\n")
            await p.stdout.readline()
        rates.append(CALLS / (time.perf_counter() - t0))
    p.stdin.close()
    await p.wait()
    return statistics.median(rates)


async def end_to_end() -> dict[str, float]:
    n = 200
    async with Supervisor() as sup:
        sup.add_mcp_server(McpServerSpec(name="min", command=[PY, str(SERVER)], start="eager"))
        sup.add(AgentSpec(name="caller", command=[PY, str(AGENT)], env={"PYTHONPATH": str(ROOT)},
                          tools=["min__*"], max_tool_calls_per_task=n + 1))
        await sup.wait_state("caller", State.READY)
        inst = await sup.mcp.instance(sup.mcp.server("min"), None)
        per_task = []
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            res = await sup.tasks.run("caller", {"calls": n})
            assert res.status == "succeeded", res.error
            per_task.append((time.perf_counter() - t0) / n)
        direct = []
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            for i in range(n):
                await inst.client.call_tool("echo", {"text": str(i)}, timeout=30)
            direct.append((time.perf_counter() - t0) / n)
    return {"through_agent_us": statistics.median(per_task) * 1e6,
            "direct_client_us": statistics.median(direct) * 1e6}


def main() -> None:
    corral = uvloop.run(corral_rates())
    sdk = asyncio.run(sdk_rates())  # the SDK on its own default loop, as its users run it
    e2e = uvloop.run(end_to_end())
    floor = uvloop.run(raw_floor())
    med = {k: {"corral": statistics.median(corral[k]), "sdk": statistics.median(sdk[k])}
           for k in ("1", "8")}
    report("mcp", {
        "tools_call_per_s": {
            f"concurrency_{k}": {"corral": round(v["corral"]), "official_sdk": round(v["sdk"]),
                                 "ratio": round(v["corral"] / v["sdk"], 2)}
            for k, v in med.items()
        },
        "raw_pipe_floor_concurrency_1_per_s": round(floor),
        "corral_share_of_floor_concurrency_1": round(med["1"]["corral"] / floor, 2),
        "calls_per_round": CALLS, "rounds": ROUNDS,
        "end_to_end": {
            "per_call_through_agent_us": round(e2e["through_agent_us"], 1),
            "per_call_direct_client_us": round(e2e["direct_client_us"], 1),
            "overhead_us": round(e2e["through_agent_us"] - e2e["direct_client_us"], 1),
        },
    })


if __name__ == "__main__":
    main()
