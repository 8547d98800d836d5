"""Durable work (issue 39) side by side with its anchors, in one run: the cost of a step.

    sh bench/peers/setup.sh                    # once: the peers, pinned, from the registries
    .venv/bin/python -m bench.bench_durable_peers [--quick] [--rounds N] [--only corral,dbos,...]

Every engine runs tasks of 20 and 200 sequential no-op steps; each step is timed where the
user's code waits for it (around the call, in the worker, the handler or the workflow),
so the figure is what a step adds to the code that makes it. The engines, each set up as
its documentation's quick start does with a durable store:

- corral, two daemons (`journal_sync` normal and full), each with an SDK worker
  (bench/peers/corral_steps.py) and a stdio MCP server (bench/min_mcp_server.py): a tool
  call through corral's MCP pool live and not journaled (`retries = 0`: nothing could read
  it back), journaled (`retries = 1`: committed before the worker has it), answered from
  the journal (the retry of a task whose first attempt made the calls and was SIGKILLed),
  and `ctx.step` journaled and answered from the journal;
- DBOS on SQLite: `@DBOS.step` in a `@DBOS.workflow`, in this process;
- Restate: `ctx.run` in a service handler (the SDK under Hypercorn, HTTP/2), its server
  from npm, invoked through its ingress;
- Temporal's dev server (its SQLite file): an activity and a local activity from a
  workflow, the worker in this process.

The kinds are alternated round by round (the machine is shared: a load that comes and goes
falls on all alike). Per kind and size: the median and p99 of the steps' times, and the
median of the tasks' mean step. A peer that is not installed is skipped with the reason.
Every server is a child of this process, killed by its pid at the end."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .bench_cluster import Client
from .harness import PY, ROOT, CorralDaemon, report, workdir
from .peers.servers import Missing, Restate, Temporal

Runner = Callable[[int], Awaitable[list[float]]]


def corral_agents() -> str:
    agent = ROOT / "bench" / "peers" / "corral_steps.py"
    server = ROOT / "bench" / "min_mcp_server.py"
    common = f"""command = ["{PY}", "{agent}"]
env = {{ PYTHONPATH = "{ROOT}" }}
tools = ["fast__*"]
max_tool_calls_per_task = 1000
start_timeout = 120
"""
    return f"""
[agents.plain]
{common}
[agents.durable]
{common}retries = 1
backoff_initial = 0.01
backoff_max = 0.05
max_restarts = 100000

[mcp_servers.fast]
command = ["{PY}", "{server}"]
"""


class Corral:
    """A daemon of its own (a subprocess, as deployed), one control connection."""

    def __init__(self, d: Path, sync: str) -> None:
        d.mkdir()
        self.daemon = CorralDaemon(d, corral_agents(),
                                   extra=f'journal_sync = "{sync}"\ndrain_timeout = 0')
        self.daemon.start()
        self.client = Client(self.daemon.sock)

    def runner(self, agent: str, **task: Any) -> Runner:
        def one(n: int) -> list[float]:
            res = self.client.call("tasks.run", {"agent": agent, "timeout": 600,
                                                 "input": {"calls": n, **task}})
            assert res["status"] == "succeeded", res
            assert res["output"]["attempt"] == (2 if task.get("die") else 1), res["output"]
            return list(res["output"]["us"])

        async def run(n: int) -> list[float]:
            return await asyncio.to_thread(one, n)
        return run

    def stop(self) -> None:
        self.client.close()
        self.daemon.stop()


async def start_corral(d: Path, runners: dict[str, Runner], stops: list[Any]) -> None:
    for sync in ("normal", "full"):
        c = Corral(d / f"corral-{sync}", sync)
        stops.append(c.stop)
        if sync == "normal":
            runners["corral: tool call, live, not journaled"] = c.runner("plain")
        runners[f"corral {sync}: tool call, journaled"] = c.runner("durable")
        runners[f"corral {sync}: ctx.step, journaled"] = c.runner("durable", mode="step")
        if sync == "normal":
            runners["corral: tool call, from the journal"] = c.runner("durable", die=True)
            runners["corral: ctx.step, from the journal"] = c.runner(
                "durable", mode="step", die=True)


async def start_dbos(d: Path, runners: dict[str, Runner], stops: list[Any]) -> None:
    from .peers import dbos_peer
    dbos_peer.launch(d)
    stops.append(dbos_peer.stop)

    async def run(n: int) -> list[float]:
        return await asyncio.to_thread(dbos_peer.steps, n)
    runners["DBOS (SQLite): @DBOS.step"] = run


async def start_restate(d: Path, runners: dict[str, Runner], stops: list[Any]) -> None:
    import aiohttp

    server = await asyncio.to_thread(Restate, d)
    stops.append(server.stop)
    session = aiohttp.ClientSession()
    stops.append(lambda: asyncio.get_event_loop().create_task(session.close()))
    url = f"http://127.0.0.1:{server.ingress}/bench/steps"

    async def run(n: int) -> list[float]:
        async with session.post(url, json=n, timeout=aiohttp.ClientTimeout(600)) as r:
            assert r.status == 200, await r.text()
            return list(await r.json())
    runners["Restate: ctx.run"] = run


async def start_temporal(d: Path, runners: dict[str, Runner], stops: list[Any]) -> None:
    from temporalio.client import Client as TClient
    from temporalio.worker import UnsandboxedWorkflowRunner, Worker

    from .peers import temporal_peer as tp

    server = await asyncio.to_thread(Temporal, d)
    stops.append(server.stop)
    client = await TClient.connect(f"127.0.0.1:{server.port}")
    worker = Worker(client, task_queue="bench", workflows=tp.WORKFLOWS,
                    activities=tp.ACTIVITIES, workflow_runner=UnsandboxedWorkflowRunner())
    task = asyncio.ensure_future(worker.run())
    stops.append(lambda: task.cancel())

    def runner(local: bool) -> Runner:
        async def run(n: int) -> list[float]:
            return list(await client.execute_workflow(
                tp.Steps.run, args=[n, local], id=f"steps-{uuid.uuid4()}",
                task_queue="bench"))
        return run
    runners["Temporal: activity"] = runner(False)
    runners["Temporal: local activity"] = runner(True)


PEERS = {"corral": start_corral, "dbos": start_dbos, "restate": start_restate,
         "temporal": start_temporal}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def measure(rounds: int, sizes: list[int], only: list[str]) -> dict[str, Any]:
    d = workdir("peers39")
    runners: dict[str, Runner] = {}
    stops: list[Any] = []
    out: dict[str, Any] = {"load_before": os.getloadavg(), "skipped": {}, "rows": {}}
    try:
        for name in only:
            sub = d / name
            sub.mkdir()
            try:
                await PEERS[name](sub, runners, stops)
            except (Missing, ImportError) as e:
                out["skipped"][name] = f"{type(e).__name__}: {e}"
                print(f"skipped {name}: {e}", flush=True)
        for n in sizes:
            steps: dict[str, list[float]] = {k: [] for k in runners}
            means: dict[str, list[float]] = {k: [] for k in runners}
            for run in runners.values():  # warm: each engine's first task
                await run(n)
            for r in range(rounds):
                for key, run in runners.items():
                    took = await run(n)
                    assert len(took) == n, (key, len(took))
                    steps[key] += took
                    means[key].append(sum(took) / n)
                print(f"n={n} round {r + 1}/{rounds} load {os.getloadavg()[0]:.1f}",
                      flush=True)
            for key in runners:
                row = {"p50_us": round(statistics.median(steps[key]), 1),
                       "p99_us": round(pct(steps[key], 0.99), 1),
                       "task_mean_p50_us": round(statistics.median(means[key]), 1),
                       "steps": len(steps[key])}
                out["rows"].setdefault(key, {})[str(n)] = row
                print(f"{n:>4} {key:<45} {row}", flush=True)
    finally:
        for stop in reversed(stops):
            try:
                stop()
            except Exception as e:  # one peer's failed stop must not leave the others
                print("stop:", e)
        await asyncio.sleep(0.1)
        shutil.rmtree(d, ignore_errors=True)
    out["load_after"] = os.getloadavg()
    return out


def table(out: dict[str, Any], sizes: list[int]) -> str:
    head = "| step | " + " | ".join(f"{n} steps: p50 / p99 µs (task mean)" for n in sizes)
    lines = [head + " |", "|---|" + "---|" * len(sizes)]
    for key, by in out["rows"].items():
        cells = [f"{by[str(n)]['p50_us']:,.0f} / {by[str(n)]['p99_us']:,.0f} "
                 f"({by[str(n)]['task_mean_p50_us']:,.0f})" for n in sizes]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    live = out["rows"].get("corral: tool call, live, not journaled")
    for sync in ("normal", "full"):  # the journal's cost on a tool call: issue 39's goal
        journaled = out["rows"].get(f"corral {sync}: tool call, journaled")
        if live and journaled:
            cost = [journaled[str(n)]["p50_us"] - live[str(n)]["p50_us"] for n in sizes]
            lines.append(f"journal overhead on a tool call, `{sync}` (p50 journaled - live): "
                         + ", ".join(f"{n} steps {c:+.0f} µs"
                                     for n, c in zip(sizes, cost, strict=True)))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--only", default=",".join(PEERS))
    args = ap.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)
    sizes = [20, 200]
    t0 = time.time()
    out = asyncio.run(measure(rounds, sizes, args.only.split(",")))
    out["seconds"] = round(time.time() - t0, 1)
    report("durable_peers", out)
    print(table(out, sizes))
    print(json.dumps({"load": [out["load_before"], out["load_after"]]}))


if __name__ == "__main__":
    main()
