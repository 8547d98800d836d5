"""Issue 26: where the tail of 100 KB JSON task latency comes from. Sequential echo tasks
of `bench_payload --json`'s records through the Python API (one SDK worker), timing every
pass of the cyclic collector in this process and in the worker (bench/gc_echo_agent.py).

    .venv/bin/python -m bench.bench_gc_tail [TASKS] [--freeze]

`--freeze`: this process freezes its heap once set up, as `corral daemon` does.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import sys
import time
from typing import Any

import uvloop

from corral.supervisor import AgentSpec, LogBatch, Supervisor
from corral.supervisor.lifecycle import SERVING

from .bench_payload import p99, records
from .gc_echo_agent import Gen2Passes
from .harness import PY, ROOT, report

ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
TASKS = int(ARGS[0]) if ARGS else 3000
FREEZE = "--freeze" in sys.argv


async def main() -> dict[str, Any]:
    timed = Gen2Passes()
    full = timed.ms
    worker: list[str] = []
    async with Supervisor() as sup:
        sup.stream.subscribe(lambda e: worker.extend(
            x.decode() for x in e.lines if x.startswith(b"gc: ")), LogBatch)
        sup.add(AgentSpec(name="echo", command=[PY, str(ROOT / "bench" / "gc_echo_agent.py")],
                          env={"PYTHONPATH": str(ROOT), "GC_REPORT_EVERY": str(TASKS)}))
        await sup.wait_state("echo", SERVING)
        payload = records(100_000)
        for _ in range(50):
            await sup.tasks.run("echo", payload)
        if FREEZE:
            gc.collect()
            gc.freeze()
        gc.callbacks.append(timed)
        lat = []
        for _ in range(TASKS - 50):
            t0 = time.perf_counter()
            await sup.tasks.run("echo", payload)
            lat.append((time.perf_counter() - t0) * 1e3)
        gc.callbacks.remove(timed)
        tracked = len(gc.get_objects())
        async with asyncio.timeout(10):
            while not worker:
                await asyncio.sleep(0.01)
    _, _, passes, most, total = worker[-1].split()
    out = {
        "loadavg": os.getloadavg()[0], "tasks": len(lat), "frozen_heap": FREEZE,
        "median_ms": round(statistics.median(lat), 3), "p99_ms": round(p99(lat), 3),
        "max_ms": round(max(lat), 3),
        "supervisor_gen2": {"passes": len(full), "median_ms": round(
            statistics.median(full), 2) if full else 0, "max_ms": round(max(full, default=0),
                                                                        2),
            "tracked_after": tracked},
        "worker_gen2": {"passes": int(passes), "max_ms": float(most),
                        "total_ms": float(total)},
    }
    print(out, flush=True)
    return out


if __name__ == "__main__":
    report("gc-tail" + ("-frozen" if FREEZE else ""), uvloop.run(main()))
