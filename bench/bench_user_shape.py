"""Issue 38: throughput in the shape a Python user writes, corral beside its peer, in one run.

    .venv/bin/python -m bench.bench_user_shape [--size tiny|100k|100k-json] [--workers 1,2]
        [--rounds R] [--tasks N] [--runners corral,peer[,pipe]]

Each runner is a program of its own, started fresh for each round (as a user runs a
script), the runners taking turns so that drift of this shared machine hits them alike;
only the work is timed (not the interpreter's start, the workers' start or a warm-up):

- corral: `async with Supervisor() as sup` on uvloop, the echo agent
  (`bench/echo_agent.py`, `max_concurrent_tasks = 64`), then one
  `await sup.tasks.map("echo", inputs, concurrency=256)` over a list of the inputs;
- peer, tiny tasks: `multiprocessing.Pool(workers)`, `[pool.apply_async(echo, (x,)) for x
  in inputs]` then `.get()` of each, with no event loop;
- peer, 100 KB tasks: `concurrent.futures.ProcessPoolExecutor(workers)`,
  `list(ppe.map(echo, inputs))`;
- pipe (the floor, asked for by name): the same JSON work and nothing else, a bare child
  per worker echoing each JSON-RPC line with the stdlib's json, 256 requests in flight
  from a parent on uvloop that encodes and decodes them as corral's engine does.

Inputs: tiny is `{"n": i}` (20,000 a round); 100k is `{"n": i, "doc": "x" * 100_000}`,
100k-json a ~100 KB document of records (`bench_payload.records`, ~1,800 containers),
2,000 a round. bench_tiny and bench_payload measure other shapes (a Pool driven through
256 asyncio lanes; 2 x workers `tasks.run` in flight): see their docstrings.

Each row gives tasks/s (median of the rounds, and each round), the CPU per task of the
runner's own process (corral's supervisor with its caller; the Pool's or PPE's parent)
and of its workers, and the 1-minute load.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import msgspec
import psutil

from .harness import PY, ROOT, report

ARGS = sys.argv[1:]


def arg(name: str, default: str) -> str:
    return ARGS[ARGS.index(name) + 1] if name in ARGS else default


SIZE = arg("--size", "tiny")
WORKERS = [int(w) for w in arg("--workers", "1,2").split(",")]
ROUNDS = int(arg("--rounds", "5"))
TASKS = int(arg("--tasks", "20000" if SIZE == "tiny" else "2000"))
RUNNERS = arg("--runners", "corral,peer").split(",")
CONCURRENCY = 256
SLOTS = 64


def inputs(n: int) -> list[Any]:
    if SIZE == "tiny":
        return [{"n": i} for i in range(n)]
    if SIZE == "100k":
        return [{"n": i, "doc": "x" * 100_000} for i in range(n)]
    from .bench_payload import records

    doc = records(100_000)
    return [{"n": i, **doc} for i in range(n)]


def echo(x: Any) -> Any:
    return x


def cpu(procs: list[psutil.Process]) -> float:
    return sum(t.user + t.system for t in (p.cpu_times() for p in procs))


def one_corral(workers: int) -> dict[str, float]:
    import uvloop

    from corral.supervisor import AgentSpec, Supervisor
    from corral.supervisor.lifecycle import SERVING

    async def main() -> dict[str, float]:
        async with Supervisor() as sup:
            sup.add(AgentSpec(name="echo", command=[PY, str(ROOT / "bench" / "echo_agent.py")],
                              env={"PYTHONPATH": str(ROOT)}, max_concurrent_tasks=SLOTS))
            await sup.scale("echo", workers)
            for i in range(workers):
                await sup.wait_state("echo", SERVING, replica=i)
            await sup.tasks.map("echo", inputs(200), concurrency=CONCURRENCY)  # warm
            procs = [psutil.Process(r.pid) for r in sup.agents["echo"].replicas if r.pid]
            xs = inputs(TASKS)
            me = [psutil.Process()]
            c0, w0, t0 = cpu(me), cpu(procs), time.perf_counter()
            out = await sup.tasks.map("echo", xs, concurrency=CONCURRENCY)
            dt = time.perf_counter() - t0
            c1, w1 = cpu(me), cpu(procs)
            assert all(r.status == "succeeded" for r in out)
            assert out[-1].output["n"] == TASKS - 1
            return {"per_s": TASKS / dt, "parent_cpu_us": (c1 - c0) / TASKS * 1e6,
                    "workers_cpu_us": (w1 - w0) / TASKS * 1e6}

    return uvloop.run(main())


# The floor: the same JSON work with nothing else. The child reads each line, decodes it
# with the stdlib, writes its answer and flushes (as the SDK's worker does, on one thread);
# the parent on uvloop encodes each request as corral's dispatch does, writes a turn's
# requests in one write per child and decodes each answer.
PIPE_CHILD = r"""
import json, os, sys
out = os.fdopen(os.dup(1), "wb")
dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
for line in sys.stdin.buffer:
    msg = json.loads(line)
    out.write(dumps({"jsonrpc": "2.0", "id": msg["id"],
                     "result": {"output": msg["params"]["input"]}}).encode() + b"\n")
    out.flush()
"""


class _Result(msgspec.Struct):
    output: Any = None


class _Answer(msgspec.Struct):
    jsonrpc: str
    id: int
    result: _Result


def one_pipe(workers: int) -> dict[str, float]:
    import asyncio

    import uvloop

    decode = msgspec.json.Decoder(_Answer).decode
    encode = msgspec.json.Encoder().encode

    async def main() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        procs = [await asyncio.create_subprocess_exec(
            PY, "-c", PIPE_CHILD, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE) for _ in range(workers)]
        state: dict[str, Any] = {}

        async def run(xs: list[Any]) -> list[Any]:
            results: list[Any] = [None] * len(xs)
            todo = iter(range(len(xs)))
            pending: list[list[bytes]] = [[] for _ in procs]
            done = loop.create_future()
            left = [len(xs)]

            def flush() -> None:
                for p, parts in zip(procs, pending, strict=True):
                    if parts:
                        assert p.stdin is not None
                        p.stdin.write(b"".join(parts))
                        parts.clear()
                state["armed"] = False

            def send(w: int) -> None:
                i = next(todo, None)
                if i is None:
                    return
                pending[w].append(encode({"jsonrpc": "2.0", "id": i, "method": "task/run",
                                          "params": {"task_id": str(i), "attempt": 1,
                                                     "input": xs[i], "deadline": 0.0}})
                                  + b"\n")
                if not state.get("armed"):
                    state["armed"] = True
                    loop.call_soon(flush)

            async def read(w: int) -> None:
                out = procs[w].stdout
                assert out is not None
                while left[0]:
                    line = await out.readline()
                    a = decode(line)
                    results[a.id] = a.result.output
                    left[0] -= 1
                    if not left[0]:
                        done.set_result(None)
                        return
                    send(w)

            for j in range(CONCURRENCY):
                send(j % workers)
            readers = [loop.create_task(read(w)) for w in range(workers)]
            await done
            for r in readers:
                r.cancel()
            return results

        await run(inputs(200))  # warm
        kids = [psutil.Process(p.pid) for p in procs]
        xs = inputs(TASKS)
        me = [psutil.Process()]
        c0, w0, t0 = cpu(me), cpu(kids), time.perf_counter()
        out = await run(xs)
        dt = time.perf_counter() - t0
        c1, w1 = cpu(me), cpu(kids)
        assert out[-1]["n"] == TASKS - 1
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()
            await p.wait()
        return {"per_s": TASKS / dt, "parent_cpu_us": (c1 - c0) / TASKS * 1e6,
                "workers_cpu_us": (w1 - w0) / TASKS * 1e6}

    return uvloop.run(main())


def one_peer(workers: int) -> dict[str, float]:
    me = [psutil.Process()]
    if SIZE == "tiny":
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            procs = [psutil.Process(p.pid) for p in pool._pool]  # type: ignore[attr-defined]
            [r.get() for r in [pool.apply_async(echo, (x,)) for x in inputs(200)]]  # warm
            xs = inputs(TASKS)
            c0, w0, t0 = cpu(me), cpu(procs), time.perf_counter()
            out = [r.get() for r in [pool.apply_async(echo, (x,)) for x in xs]]
            dt = time.perf_counter() - t0
            c1, w1 = cpu(me), cpu(procs)
    else:
        with concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("fork")) as ppe:
            list(ppe.map(echo, inputs(4 * workers)))  # warm: every worker started
            procs = [psutil.Process(p) for p in ppe._processes]  # type: ignore[attr-defined]
            xs = inputs(TASKS)
            c0, w0, t0 = cpu(me), cpu(procs), time.perf_counter()
            out = list(ppe.map(echo, xs))
            dt = time.perf_counter() - t0
            c1, w1 = cpu(me), cpu(procs)
    assert out[-1]["n"] == TASKS - 1
    return {"per_s": TASKS / dt, "parent_cpu_us": (c1 - c0) / TASKS * 1e6,
            "workers_cpu_us": (w1 - w0) / TASKS * 1e6}


def main() -> dict[str, Any]:
    peer = "Pool.apply_async" if SIZE == "tiny" else "ProcessPoolExecutor.map"
    results: dict[str, Any] = {"loadavg_start": os.getloadavg()[0], "size": SIZE,
                               "tasks": TASKS, "rounds": ROUNDS, "concurrency": CONCURRENCY,
                               "max_concurrent_tasks": SLOTS, "peer": peer}
    for workers in WORKERS:
        acc: dict[str, list[dict[str, float]]] = {r: [] for r in RUNNERS}
        loads = []
        for _ in range(ROUNDS):
            for runner in RUNNERS:
                loads.append(os.getloadavg()[0])
                out = subprocess.run(
                    [PY, "-m", "bench.bench_user_shape", "--one", runner, "--workers",
                     str(workers), "--size", SIZE, "--tasks", str(TASKS)],
                    cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                    capture_output=True, text=True, check=True)
                acc[runner].append(json.loads(out.stdout.strip().splitlines()[-1]))
        names = {"peer": peer, "pipe": "pipe floor"}
        row: dict[str, Any] = {
            names.get(r, r): {k: round(statistics.median(x[k] for x in rs), 1)
                              for k in rs[0]} | {
                "rounds_per_s": [round(x["per_s"]) for x in rs]}
            for r, rs in acc.items()}
        row["load"] = [round(min(loads), 2), round(max(loads), 2)]
        if "corral" in acc and "peer" in acc:
            row["corral_over_peer"] = round(row["corral"]["per_s"] / row[peer]["per_s"], 2)
        results[f"{workers}w"] = row
        print(f"{SIZE} {workers}w: " + ", ".join(
            f"{k} {v['per_s']:.0f}/s {v['rounds_per_s']} (parent {v['parent_cpu_us']} us, "
            f"workers {v['workers_cpu_us']} us)" for k, v in row.items()
            if isinstance(v, dict)) + f"; x{row.get('corral_over_peer')}; load {row['load']}",
            flush=True)
    results["loadavg_end"] = os.getloadavg()[0]
    return results


if __name__ == "__main__":
    if "--one" in ARGS:
        which, w = arg("--one", ""), int(arg("--workers", "1"))
        one = {"corral": one_corral, "pipe": one_pipe}.get(which, one_peer)
        print(json.dumps(one(w)))
    else:
        report(f"user_shape_{SIZE}", main())
