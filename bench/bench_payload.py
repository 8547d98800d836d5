"""Issue 14: task payloads from 1 KB to 10 MB, corral beside ProcessPoolExecutor and
multiprocessing.Pool, in one run, interleaved.

    .venv/bin/python -m bench.bench_payload [--quick] [--sizes 1000,100000] [--ray]
        [--text | --json] [--rounds N] [--freeze]

Every runner does the same work: echo a JSON-able input `{"doc": "x" * SIZE}` back (with
`--text`, SIZE bytes of prose with escapes and non-ASCII instead; with `--json`, a
document of SIZE bytes made of records, each a dict holding a list, as an API's answer
is: ~1,800 containers per 100 KB, for the garbage collector to walk), with 1 and 2
workers. `--freeze`: the bench's process freezes its heap once set up (`gc.freeze()`), as
`corral daemon` does after its start-up (decision 60), for every runner alike; without
it, the process is an embedding program's, whose full collections walk its whole heap.
For each size and worker count the runners take turns in rounds (corral, PPE, Pool,
corral, …) so that drift of this noisy machine hits them alike. Latency: one task at a
time (median, p99). Throughput: 2 x workers tasks in flight. corral goes through its
Python API to SDK workers (`bench/echo_agent.py`). `--ray` adds a Ray actor per worker
(`pip install ".[bench]"`); Ray's own daemons then run beside the others, so its figures
come from a run of their own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from corral.supervisor import AgentSpec, Supervisor
from corral.supervisor.lifecycle import SERVING

from .harness import PY, ROOT, report

QUICK = "--quick" in sys.argv
RAY = "--ray" in sys.argv
TEXT = "--text" in sys.argv
JSON = "--json" in sys.argv
FREEZE = "--freeze" in sys.argv
SIZES = [1_000, 100_000, 1_000_000, 10_000_000]
# prose with what makes JSON work: quotes, a backslash, a newline, non-ASCII
PROSE = 'The "quick" brown fox — naïve café, 東京 \\ jumps\nover the lazy dog. '

ROUNDS = 3
for i, a in enumerate(sys.argv):
    if a == "--sizes":
        SIZES = [int(s) for s in sys.argv[i + 1].split(",")]
    if a == "--rounds":
        ROUNDS = int(sys.argv[i + 1])


def count(size: int) -> int:
    """Tasks per round: enough for a p99, bounded in bytes moved."""
    n = max(20, min(400, 40_000_000 // size))
    return max(10, n // 4) if QUICK else n


def echo(x: Any) -> Any:
    return x


def add_echo(sup: Supervisor, *, max_concurrent_tasks: int, max_queue: int) -> None:
    """The SDK echo worker (`bench/echo_agent.py`) as agent `echo`, no replica yet."""
    sup.add(AgentSpec(name="echo", command=[PY, str(ROOT / "bench" / "echo_agent.py")],
                      env={"PYTHONPATH": str(ROOT)}, max_concurrent_tasks=max_concurrent_tasks,
                      max_queue=max_queue))


async def scale_echo(sup: Supervisor, workers: int) -> None:
    """`workers` replicas of `echo`, each serving."""
    await sup.scale("echo", workers)
    for i in range(workers):
        await sup.wait_state("echo", SERVING, replica=i)


def records(size: int) -> dict[str, Any]:
    """About `size` bytes of JSON in records of ~110 bytes, a dict and a list each."""
    out: list[dict[str, Any]] = []
    while len(out) * 110 < size:
        i = len(out)
        out.append({"id": i, "name": f"item-{i:06d}", "tags": ["red", "green"],
                    "text": "lorem ipsum dolor sit amet", "score": i * 0.5})
    return {"records": out}


def document(size: int) -> Any:
    if JSON:
        return records(size)
    if not TEXT:
        return {"doc": "x" * size}
    n = len(PROSE.encode())
    return {"doc": PROSE * (size // n) + "x" * (size % n)}


Run = Callable[[Any], Awaitable[Any]]


async def measure(run: Run, payload: Any, n: int, inflight: int) -> tuple[list[float], float]:
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        await run(payload)
        lat.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(inflight)

    async def one() -> None:
        async with sem:
            await run(payload)

    await asyncio.gather(*(one() for _ in range(n)))
    return lat, n / (time.perf_counter() - t0)


def p99(xs: list[float], q: float = 0.99) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


async def main() -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    results: dict[str, Any] = {"loadavg_start": os.getloadavg()[0], "sizes": {},
                               "payload": "text" if TEXT else "json" if JSON else "ascii",
                               "rounds": ROUNDS, "frozen_heap": FREEZE}
    if RAY:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

        @ray.remote
        class Echo:
            def echo(self, x: Any) -> Any:
                return x
    async with Supervisor() as sup:
        add_echo(sup, max_concurrent_tasks=4, max_queue=100_000)
        for workers in (1, 2):
            await scale_echo(sup, workers)
            ppe = concurrent.futures.ProcessPoolExecutor(workers)
            pool = multiprocessing.get_context("fork").Pool(workers)
            # warm every worker of each runner
            for _ in range(4 * workers):
                ppe.submit(echo, 1).result()
                pool.apply(echo, (1,))
            if FREEZE:
                gc.collect()
                gc.freeze()

            async def corral_run(x: Any) -> Any:
                r = await sup.tasks.run("echo", x)
                assert r.status == "succeeded", r
                return r.output

            async def ppe_run(x: Any, ppe: Any = ppe) -> Any:
                return await asyncio.wrap_future(ppe.submit(echo, x))

            async def pool_run(x: Any, pool: Any = pool) -> Any:
                fut: asyncio.Future[Any] = loop.create_future()
                pool.apply_async(echo, (x,), callback=lambda v: loop.call_soon_threadsafe(
                    fut.set_result, v))
                return await fut

            runners: dict[str, Run] = {"corral": corral_run, "ProcessPoolExecutor": ppe_run,
                                       "multiprocessing.Pool": pool_run}
            if RAY:
                actors = [Echo.remote() for _ in range(workers)]
                for a in actors:
                    await asyncio.wrap_future(a.echo.remote(1).future())
                turn = iter(range(1 << 62))

                async def ray_run(x: Any, actors: list[Any] = actors, turn: Any = turn) -> Any:
                    actor = actors[next(turn) % len(actors)]
                    return await asyncio.wrap_future(actor.echo.remote(x).future())

                runners["ray"] = ray_run
            for size in SIZES:
                payload = document(size)
                n = count(size)
                acc: dict[str, dict[str, list[float]]] = {
                    k: {"lat": [], "tp": []} for k in runners}
                for _ in range(ROUNDS):
                    for name, run in runners.items():
                        lat, tp = await measure(run, payload, n, 2 * workers)
                        acc[name]["lat"] += lat
                        acc[name]["tp"].append(tp)
                row = results["sizes"].setdefault(str(size), {})
                for name, a in acc.items():
                    row.setdefault(name, {})[f"{workers}w"] = {
                        "median_ms": round(statistics.median(a["lat"]) * 1e3, 3),
                        "p90_ms": round(p99(a["lat"], 0.9) * 1e3, 3),
                        "p99_ms": round(p99(a["lat"]) * 1e3, 3),
                        "max_ms": round(max(a["lat"]) * 1e3, 3),
                        "throughput_per_s": round(statistics.median(a["tp"]), 1),
                        "tasks": len(a["lat"]),
                    }
                c, p = row["corral"][f"{workers}w"], row["ProcessPoolExecutor"][f"{workers}w"]
                others = "".join(f"  {name} {row[name][f'{workers}w']['median_ms']:.3f}"
                                 for name in runners if name not in ("corral",
                                                                     "ProcessPoolExecutor"))
                print(f"{size:>9} B {workers}w  corral {c['median_ms']:8.3f} ms "
                      f"(p99 {c['p99_ms']:8.3f})  PPE {p['median_ms']:8.3f} ms "
                      f"(p99 {p['p99_ms']:8.3f})  ratio {c['median_ms'] / p['median_ms']:.2f}"
                      f"{others}", flush=True)
            ppe.shutdown()
            pool.terminate()
            pool.join()
            if RAY:
                for a in actors:
                    ray.kill(a)
    if RAY:
        ray.shutdown()
    results["loadavg_end"] = os.getloadavg()[0]
    return results


if __name__ == "__main__":
    report("payload" + ("-text" if TEXT else "") + ("-json" if JSON else "")
           + ("-frozen" if FREEZE else "") + ("-ray" if RAY else ""), uvloop.run(main()))
