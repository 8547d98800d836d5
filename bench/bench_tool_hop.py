"""Issue 26: a task making one tool call, end to end, beside a direct tool call.

    .venv/bin/python -m bench.bench_tool_hop [--quick]

One supervisor, the minimal MCP stdio server (`bench/min_mcp_server.py`) and two SDK
agents of one replica each; one call or task at a time, the kinds taking turns in each
round, medians over all rounds:

- direct: `tools/call` from the supervisor to the server (`McpClient.call_tool`);
- echo task: `tasks.run` of `bench/echo_agent.py`;
- one tool call: `tasks.run` of `bench/tool_agent.py` with `{"calls": 1}`: the task, and
  in it the worker's `ctx.call_tool` through the supervisor to the server and back;
- the floor: a raw round trip over a pipe to a Python process that echoes lines (what one
  more hop between two processes costs on this machine, with no protocol at all).

The hop through the agent is (one tool call) - (echo task): what the call adds to a task;
the goal is the hop <= 2 x direct. Its floor is direct + one raw pipe round trip (the
worker -> supervisor -> worker leg that a direct call does not have).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import uvloop

from corral.supervisor import AgentSpec, McpServerSpec, Supervisor
from corral.supervisor.lifecycle import SERVING

from .bench_tasks import RAW_ECHO
from .harness import PY, ROOT, report

QUICK = "--quick" in sys.argv
N = 300 if QUICK else 1000
ROUNDS = 3 if QUICK else 7
SERVER = ROOT / "bench" / "min_mcp_server.py"


async def timed(one: Callable[[int], Awaitable[Any]]) -> list[float]:
    out = []
    for i in range(N):
        t0 = time.perf_counter()
        await one(i)
        out.append(time.perf_counter() - t0)
    return out


async def main() -> dict[str, Any]:
    env = {"PYTHONPATH": str(ROOT)}
    results: dict[str, Any] = {"loadavg_start": os.getloadavg()[0], "calls": N,
                               "rounds": ROUNDS}
    # (a Popen with the loop's pipe transports: an asyncio subprocess is never seen to
    # exit beside a Supervisor, which reaps what it did not start through its own watch)
    loop = asyncio.get_running_loop()
    p = subprocess.Popen([PY, "-c", RAW_ECHO], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdin and p.stdout
    stdin, _ = await loop.connect_write_pipe(asyncio.Protocol, p.stdin)
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    class Reader(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            answers.put_nowait(data)  # one short line a read (one in flight)

    await loop.connect_read_pipe(Reader, p.stdout)
    line = msgspec.json.encode({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "echo", "arguments": {"text": "1"}}}) + b"\n"

    async def raw(i: int) -> None:
        stdin.write(line)
        got = await answers.get()
        while not got.endswith(b"\n"):
            got += await answers.get()

    async with Supervisor() as sup:
        sup.add_mcp_server(McpServerSpec(name="min", command=[PY, str(SERVER)], start="eager"))
        sup.add(AgentSpec(name="echo", command=[PY, str(ROOT / "bench" / "echo_agent.py")],
                          env=env))
        sup.add(AgentSpec(name="caller", command=[PY, str(ROOT / "bench" / "tool_agent.py")],
                          env=env, tools=["min__*"], max_tool_calls_per_task=2))
        for name in ("echo", "caller"):
            await sup.wait_state(name, SERVING)
        inst = await sup.mcp.instance(sup.mcp.server("min"), None)

        async def direct(i: int) -> None:
            await inst.client.call_tool("echo", {"text": str(i)}, timeout=30)

        async def echo_task(i: int) -> None:
            r = await sup.tasks.run("echo", {"calls": 1})
            assert r.status == "succeeded", r.error

        async def one_call(i: int) -> None:
            r = await sup.tasks.run("caller", {"calls": 1})
            assert r.status == "succeeded", r.error

        kinds: dict[str, Callable[[int], Awaitable[Any]]] = {
            "direct_call": direct, "echo_task": echo_task, "task_with_one_call": one_call,
            "raw_pipe": raw}
        for one in kinds.values():  # warm every path
            for i in range(50):
                await one(i)
        acc: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(ROUNDS):
            for name, one in kinds.items():
                acc[name] += await timed(one)
    stdin.close()
    p.wait(10)
    med = {k: statistics.median(v) * 1e6 for k, v in acc.items()}
    hop = med["task_with_one_call"] - med["echo_task"]
    results.update({f"{k}_median_us": round(v, 1) for k, v in med.items()})
    results["hop_us"] = round(hop, 1)
    results["hop_over_direct"] = round(hop / med["direct_call"], 2)
    results["hop_floor_us"] = round(med["direct_call"] + med["raw_pipe"], 1)
    results["loadavg_end"] = os.getloadavg()[0]
    print(f"direct {med['direct_call']:.0f} us, echo task {med['echo_task']:.0f} us, task with "
          f"one call {med['task_with_one_call']:.0f} us: hop {hop:.0f} us = "
          f"{hop / med['direct_call']:.2f} x direct (floor {results['hop_floor_us']:.0f} us = "
          f"direct + raw pipe {med['raw_pipe']:.0f} us); load {results['loadavg_end']:.1f}",
          flush=True)
    return results


if __name__ == "__main__":
    report("tool_hop", uvloop.run(main()))
