"""Issue 26: tiny task throughput, corral beside multiprocessing.Pool, in one run.

    .venv/bin/python -m bench.bench_tiny [--quick] [--tasks N] [--rounds R] [--corral-only]
        [--busy B]

The same echo of a tiny input (`{"n": i}`) through 1 and 2 workers, 256 tasks in flight,
the runners taking turns in each round so that drift of this shared machine hits them
alike:

- corral: `Supervisor.tasks.map(..., concurrency=256)` to SDK workers
  (`bench/echo_agent.py`, `max_concurrent_tasks = 64`), the Python API;
- Pool: `multiprocessing.Pool(workers)` (fork), each task `apply_async` awaited on the
  same event loop (its callback hands the result over with `call_soon_threadsafe`), 256
  lanes each with one task in flight: how an asyncio program uses a Pool, and the runner
  of bench_payload;
- Pool, gathered: the same Pool with bench_payload's load generator, a coroutine per task
  made up front (`gather`) behind a semaphore of 256 (context: what the issue measured);
- Pool, its own way: `imap_unordered(chunksize=1)` from a thread of its own, no event
  loop (context: the Pool's fastest path for single tasks, not the goal's peer).

Each row also gives the CPU time per task of the bench's process (corral's supervisor
and load generator, or the Pool's parent and its threads) and of the workers, and
corral's task latency (created to finished, over the finished tasks it keeps) at the
median and p99. `--corral-only` runs corral alone (engine against engine, e.g. a branch
against its base, with this file in both trees). `--busy B`: B busy loops (each a Python
process spinning, started first and killed by its pid at the end) beside the whole run,
for the goal at load (issue 90: one busy loop, a load of ~2 on a quiet machine).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
import uvloop

from corral.supervisor import Supervisor

from .bench_payload import add_echo, echo, scale_echo
from .harness import report

QUICK = "--quick" in sys.argv
CORRAL_ONLY = "--corral-only" in sys.argv
TASKS = 5_000 if QUICK else 20_000
ROUNDS = 3 if QUICK else 5
BUSY = 0
for i, a in enumerate(sys.argv):
    if a == "--busy":
        BUSY = int(sys.argv[i + 1])
    if a == "--tasks":
        TASKS = int(sys.argv[i + 1])
    elif a == "--rounds":
        ROUNDS = int(sys.argv[i + 1])
IN_FLIGHT = 256


def cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        t = p.cpu_times()
        total += t.user + t.system
    return total


async def timed(run: Callable[[], Awaitable[None]], workers: list[psutil.Process]
                ) -> dict[str, float]:
    me = [psutil.Process()]
    c0, w0, t0 = cpu(me), cpu(workers), time.perf_counter()
    await run()
    dt = time.perf_counter() - t0
    return {"per_s": TASKS / dt, "parent_cpu_us": (cpu(me) - c0) / TASKS * 1e6,
            "workers_cpu_us": (cpu(workers) - w0) / TASKS * 1e6}


def latencies(sup: Supervisor) -> dict[str, float]:
    """The kept finished tasks' latency, created to finished (ms): median and p99."""
    xs = sorted(t.finished - t.created for t in sup.tasks.finished.values()
                if t.finished is not None)
    return {"latency_p50_ms": round(xs[len(xs) // 2] * 1e3, 2),
            "latency_p99_ms": round(xs[int(0.99 * len(xs))] * 1e3, 2)}


async def main() -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    results: dict[str, Any] = {"loadavg_start": os.getloadavg()[0], "tasks": TASKS,
                               "rounds": ROUNDS, "in_flight": IN_FLIGHT}
    async with Supervisor() as sup:
        add_echo(sup, max_concurrent_tasks=64, max_queue=1_000_000)
        for workers in (1, 2):
            await scale_echo(sup, workers)
            agent = sup.agents["echo"]
            corral_procs = [psutil.Process(r.pid) for r in agent.replicas if r.pid]
            pool = multiprocessing.get_context("fork").Pool(workers)
            pool_procs = [psutil.Process(p.pid) for p in pool._pool]  # type: ignore[attr-defined]
            for _ in range(4 * workers):
                pool.apply(echo, (1,))
            await sup.tasks.map("echo", ({"n": i} for i in range(500)), concurrency=256)

            async def corral_run() -> None:
                out = await sup.tasks.map("echo", ({"n": i} for i in range(TASKS)),
                                          concurrency=IN_FLIGHT)
                assert out[-1].status == "succeeded" and out[-1].output == {"n": TASKS - 1}

            async def pool_run(pool: Any = pool) -> None:
                todo = iter(range(TASKS))
                last: list[Any] = []

                async def lane() -> None:
                    for i in todo:
                        fut: asyncio.Future[Any] = loop.create_future()
                        pool.apply_async(echo, ({"n": i},), callback=lambda v, f=fut:
                                         loop.call_soon_threadsafe(f.set_result, v))
                        last.append(await fut)

                await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
                assert len(last) == TASKS

            async def pool_gathered(pool: Any = pool) -> None:
                sem = asyncio.Semaphore(IN_FLIGHT)

                async def one(i: int) -> Any:
                    async with sem:
                        fut: asyncio.Future[Any] = loop.create_future()
                        pool.apply_async(echo, ({"n": i},), callback=lambda v: (
                            loop.call_soon_threadsafe(fut.set_result, v)))
                        return await fut

                assert len(await asyncio.gather(*(one(i) for i in range(TASKS)))) == TASKS

            async def pool_own(pool: Any = pool) -> None:
                def drain() -> int:
                    return sum(1 for _ in pool.imap_unordered(
                        echo, ({"n": i} for i in range(TASKS)), chunksize=1))

                assert await asyncio.to_thread(drain) == TASKS

            runners: dict[str, tuple[Callable[[], Awaitable[None]], list[psutil.Process]]] = {
                "corral": (corral_run, corral_procs),
                "Pool": (pool_run, pool_procs),
                "Pool, gathered": (pool_gathered, pool_procs),
                "Pool.imap_unordered": (pool_own, pool_procs),
            }
            acc: dict[str, list[dict[str, float]]] = {k: [] for k in runners}
            if CORRAL_ONLY:
                runners = {"corral": runners["corral"]}
                acc = {"corral": []}
            for _ in range(ROUNDS):
                for name, (run, procs) in runners.items():
                    acc[name].append(await timed(run, procs))
                    if name == "corral":
                        acc[name][-1].update(latencies(sup))
            pool.terminate()
            pool.join()
            row: dict[str, Any] = {
                name: {k: round(statistics.median(r[k] for r in rs), 1) for k in rs[0]}
                for name, rs in acc.items()}
            row["corral_rounds_per_s"] = [round(r["per_s"]) for r in acc["corral"]]
            row["loadavg"] = os.getloadavg()[0]
            results[f"{workers}w"] = row
            if CORRAL_ONLY:
                c = row["corral"]
                print(f"{workers} worker(s): corral {c['per_s']:.0f}/s (rounds "
                      f"{row['corral_rounds_per_s']}), supervisor {c['parent_cpu_us']} us "
                      f"CPU/task, latency p50 {c['latency_p50_ms']} ms p99 "
                      f"{c['latency_p99_ms']} ms; load {row['loadavg']:.1f}", flush=True)
                continue
            row["corral_over_pool"] = round(row["corral"]["per_s"] / row["Pool"]["per_s"], 2)
            print(f"{workers} worker(s): corral {row['corral']['per_s']:.0f}/s, Pool "
                  f"{row['Pool']['per_s']:.0f}/s (x{row['corral_over_pool']}), Pool gathered "
                  f"{row['Pool, gathered']['per_s']:.0f}/s, "
                  f"Pool.imap_unordered {row['Pool.imap_unordered']['per_s']:.0f}/s; "
                  f"load {row['loadavg']:.1f}", flush=True)
    results["loadavg_end"] = os.getloadavg()[0]
    return results


def beside_busy_loops() -> dict[str, Any]:
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
             for _ in range(BUSY)]
    try:
        results = uvloop.run(main())
    finally:
        for p in loops:
            p.kill()
            p.wait()
    results["busy_loops"] = BUSY
    return results


if __name__ == "__main__":
    report("tiny_corral" if CORRAL_ONLY else "tiny" if not BUSY else "tiny_busy",
           beside_busy_loops())
