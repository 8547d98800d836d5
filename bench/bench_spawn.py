"""Code-first orchestration (issue 40 item 3): what `task/spawn` costs per child, a
fan-out/fan-in of 1,000 children against the same 1,000 tasks through the engine's map,
and the daemon's memory per pending child at 10,000.

    .venv/bin/python -m bench.bench_spawn [--quick]

The real daemon in this process (its SQLite journals, `journal_sync` normal), SDK
workers: an orchestrator (bench/spawn_agent.py, `retries = 1`, so each spawn is
journaled as a step) and bench/echo_agent.py (4 replicas). Measured:

- a spawn's round trip as the orchestrator sees it (p50, p99): the journaled step, the
  child's acceptance and its task journal row
- 1,000 children spawned one after another and waited for, wall time from the
  orchestrator's start to its end, and the same by `ctx.map` (the spawns sent at once),
  against `TaskManager.map` of 1,000 echo tasks (concurrency 4: the echo replicas)
- 10,000 children pending (dispatch held once the orchestrator runs): the daemon's
  Python heap (tracemalloc) and RSS grown, per child"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
import tracemalloc
from pathlib import Path
from typing import Any

from .harness import supervisor_section

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


# the orchestrator and its children's agent (bench_cluster_spawn runs the same)
AGENTS = textwrap.dedent(f"""
    [agents.orch]
    command = ["{PY}", "{ROOT}/bench/spawn_agent.py"]
    env = {{ PYTHONPATH = "{ROOT}" }}
    retries = 1
    spawns = ["echo"]
    max_children = 20000
    max_tool_calls_per_task = 20000  # (each spawn is one of its task's calls)
    task_timeout = 600

    [agents.echo]
    command = ["{PY}", "{ROOT}/bench/echo_agent.py"]
    env = {{ PYTHONPATH = "{ROOT}" }}
    replicas = 4
    max_queue = 20000
""")


def config(state: Path) -> str:
    return supervisor_section(state) + "\n" + AGENTS


def rss() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))]


async def measure(rounds: int, fan: int, pending: int) -> dict[str, Any]:
    from corral.daemon.daemon import Daemon
    from corral.supervisor import State
    from corral.taskoptions import TaskOptions

    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-spawn-"))
    try:
        (tmp / "corral.toml").write_text(config(tmp))
        d = Daemon(tmp / "corral.toml")
        run = asyncio.ensure_future(d.run())
        await d.set_up.wait()
        sup = d.sup
        await sup.wait_state("orch", State.READY, timeout=30)
        for i in range(4):
            await sup.wait_state("echo", State.READY, replica=i, timeout=30)
        tasks = sup.tasks
        await tasks.map("echo", range(200), concurrency=4)  # warm
        spawn_ms: list[float] = []
        fan_s, map_s, ctx_map_s = [], [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            res = await tasks.run("orch", {"children": fan, "map": True},
                                  TaskOptions(timeout=600))
            ctx_map_s.append(time.perf_counter() - t0)
            assert res.status == "succeeded", res.error
            t0 = time.perf_counter()
            res = await tasks.run("orch", {"children": fan}, TaskOptions(timeout=600))
            fan_s.append(time.perf_counter() - t0)
            assert res.status == "succeeded", res.error
            spawn_ms += res.output["spawn_ms"]
            t0 = time.perf_counter()
            await tasks.map("echo", range(fan), concurrency=4)
            map_s.append(time.perf_counter() - t0)
        # pending children: dispatch held once the orchestrator runs
        gc.collect()
        tracemalloc.start()
        heap0, rss0 = tracemalloc.get_traced_memory()[0], rss()
        orch = tasks.submit("orch", {"children": pending, "wait": False})
        while orch.status != "running":
            await asyncio.sleep(0.01)
        tasks.hold("bench: children pending")
        while tasks.spawns.spawned < 2 * rounds * fan + pending:
            await asyncio.sleep(0.05)
        gc.collect()
        heap1, rss1 = tracemalloc.get_traced_memory()[0], rss()
        tracemalloc.stop()
        tasks.release()
        await asyncio.wait_for(asyncio.shield(orch.done), 600)
        d.request_stop()
        await asyncio.wait_for(run, 60)
        return {
            "spawn_ms_p50": round(statistics.median(spawn_ms), 3),
            "spawn_ms_p99": round(pct(spawn_ms, 0.99), 3),
            f"spawn_{fan}_and_wait_s": round(statistics.median(fan_s), 3),
            f"tasks_map_{fan}_s": round(statistics.median(map_s), 3),
            "fan_overhead_s": round(statistics.median(fan_s) - statistics.median(map_s), 3),
            f"ctx_map_{fan}_s": round(statistics.median(ctx_map_s), 3),
            "ctx_map_overhead_s": round(statistics.median(ctx_map_s)
                                        - statistics.median(map_s), 3),
            f"heap_per_pending_child_bytes_at_{pending}": round((heap1 - heap0) / pending),
            f"rss_per_pending_child_bytes_at_{pending}": round((rss1 - rss0) / pending),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    out = asyncio.run(measure(1 if args.quick else 3, 1000, 10_000))
    for k, v in out.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
