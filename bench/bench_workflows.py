"""Workflow runs (issue 40): what a run adds per step over its tasks, and a fan-out's.

    .venv/bin/python -m bench.bench_workflows [--quick] [--follow]

With --follow, a follower of `corral.*` on the event bus (as `corral events tail`) hears
every run's and step's event meanwhile, so their cost is in the figures.

The real daemon in this process (its SQLite state database, `journal_sync` normal), an
SDK worker (examples/hello.py, 4 replicas). Measured:

- a task alone: the median of `tasks.run` through the engine (accept, journal, dispatch,
  the worker's answer)
- a 20-step chain (each step fed the one before): per step, the run's wall time / 20,
  and the per-edge overhead, that less a task alone (the two commits of the step's row,
  the reference evaluation, the wait); the same in the daemon's CPU time (`_cpu_`: it
  runs in this process, its workers apart), which a loaded machine bends far less
- a 1,000-item map (concurrency 4) then a join: the run's wall time, against the same
  1,000 tasks through `TaskManager.map` with concurrency 4

Celery, DBOS and Temporal are not run here (not installed in this environment)."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from .harness import supervisor_section

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CHAIN = 20


def config(state: Path) -> str:
    chain = "[workflows.chain]\n" + "".join(
        f'[[workflows.chain.steps]]\nname = "s{i}"\nagent = "hello"\n' for i in range(CHAIN))
    return supervisor_section(state) + textwrap.dedent(f"""

        [agents.hello]
        command = ["{PY}", "{ROOT}/examples/hello.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        replicas = 4
        max_queue = 5000

        [workflows.fan]
        [[workflows.fan.steps]]
        name = "each"
        agent = "hello"
        map = "$input.items"
        concurrency = 4
        [[workflows.fan.steps]]
        name = "join"
        agent = "hello"
        join = "each"
        input = {{ name = "joined" }}
    """) + chain


async def measure(rounds: int, items: int, follow: bool = False) -> dict[str, Any]:
    from corral.daemon.daemon import Daemon
    from corral.supervisor import State

    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-wf-"))
    try:
        (tmp / "corral.toml").write_text(config(tmp))
        d = Daemon(tmp / "corral.toml")
        run = asyncio.ensure_future(d.run())
        await d.set_up.wait()
        sup = d.sup
        for i in range(4):
            await sup.wait_state("hello", State.READY, replica=i, timeout=30)
        wf = d.services.workflows
        follower = sup.events.follow("corral.*") if follow else None

        async def timed_run(name: str, inp: Any) -> float:
            t0 = time.perf_counter()
            r = await wf.start(name, inp)
            await wf.wait(r.run_id, None)
            took = time.perf_counter() - t0
            while follower is not None and follower.queue:
                follower.pop()
            assert wf.get(r.run_id).status == "succeeded", wf.get(r.run_id).error
            return took

        for _ in range(20):  # warm
            await sup.tasks.run("hello", {"name": "w"})
        task, task_cpu = [], []
        for _ in range(200):
            t0, c0 = time.perf_counter(), time.process_time()
            await sup.tasks.run("hello", {"name": "x"})
            task.append(time.perf_counter() - t0)
            task_cpu.append(time.process_time() - c0)
        task_ms = statistics.median(task) * 1e3
        task_p99 = sorted(task)[int(len(task) * 0.99) - 1] * 1e3
        chain, chain_cpu = [], []
        for _ in range(rounds):
            c0 = time.process_time()
            chain.append(await timed_run("chain", {"name": "c"}) / CHAIN * 1e3)
            chain_cpu.append((time.process_time() - c0) / CHAIN * 1e3)
        step_ms = statistics.median(chain)
        # the daemon's own CPU (it runs in this process; the workers are apart): far
        # less bent by a loaded machine than the wall time
        step_cpu = statistics.median(chain_cpu)
        task_cpu_ms = statistics.median(task_cpu) * 1e3
        listed = list(range(items))
        fan = statistics.median([await timed_run("fan", {"items": listed})
                                 for _ in range(max(1, rounds // 2))])
        t0 = time.perf_counter()
        await sup.tasks.map("hello", listed, concurrency=4)
        plain = time.perf_counter() - t0
        d.request_stop()
        await asyncio.wait_for(run, 30)
        return {"task_ms_p50": round(task_ms, 3), "task_ms_p99": round(task_p99, 3),
                "chain_step_ms_p50": round(step_ms, 3),
                "edge_overhead_ms_p50": round(step_ms - task_ms, 3),
                "chain_step_cpu_ms_p50": round(step_cpu, 3),
                "edge_overhead_cpu_ms_p50": round(step_cpu - task_cpu_ms, 3),
                "chain_step_ms_max": round(max(chain), 3),
                f"map_{items}_join_s": round(fan, 3),
                f"tasks_map_{items}_s": round(plain, 3),
                "fan_overhead_s": round(fan - plain, 3)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--follow", action="store_true")
    args = ap.parse_args()
    out = asyncio.run(measure(3 if args.quick else 9, 1000, args.follow))
    for k, v in out.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
