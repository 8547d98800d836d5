"""Redis's CPU per cluster task in the task scripts alone: submit, read, claim and finish,
pipelined as nodes do, against a redis-server of the bench's own (AOF, everysec,
noeviction). `--against REV` runs the scripts of a git revision beside this tree's, in
alternating rounds of the same run, to tell what a change of the scripts costs (extra
keys and arguments are ignored by scripts that do not take them).

    .venv/bin/python -m bench.bench_cluster_scripts [--against main] [--tasks 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import psutil

from corral.cluster import records, scripts
from corral.cluster.connection import connect
from corral.cluster.keys import GROUP, Keys
from corral.supervisor.config import ClusterSettings
from corral.supervisor.tasks import new_id

from .bench_cluster import Redis
from .harness import report

PIPE = 500  # calls per pipeline, about what a node's batches hold under load


def _scripts_of(rev: str) -> types.ModuleType:
    text = subprocess.run(["git", "show", f"{rev}:corral/cluster/scripts.py"],
                          capture_output=True, text=True, check=True).stdout
    mod = types.ModuleType("scripts_at_rev")
    mod.__package__ = "corral.cluster"
    exec(compile(text, f"{rev}:scripts.py", "exec"), mod.__dict__)
    return mod


async def _cpu(client: Any) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _round(client: Any, module: Any, cluster: str, n: int) -> tuple[float, float]:
    """Redis CPU seconds and wall seconds for `n` tasks through their whole life."""
    s = module.Scripts(client)
    k = Keys(cluster)
    stream = k.stream("acme", "w", 0)
    ids = [new_id() for _ in range(n)]
    await client.set(k.alive("n/1"), b"{}")  # a claim is a live incarnation's
    cpu0, t0 = await _cpu(client), time.perf_counter()
    for i in range(0, n, PIPE):
        await s.run([(s.submit, [k.task(t), stream, k.priorities("acme", "w"), k.agents, k.live],
                      [t, "w", b"null", 0, "", "", repr(time.time()), "n", 0, "0", "",
                       "", "", "acme", "mac"])
                     for t in ids[i:i + PIPE]])
    held: list[tuple[str, bytes, int]] = []
    while len(held) < n:
        got = await client.xreadgroup(GROUP, "n/1", {stream: ">"}, count=PIPE)
        entries = [(f[b"task"].decode(), e) for _, es in got for e, f in es]
        claimed = await s.run([(s.claim, [k.task(t), k.attempts(t), k.fence, stream],
                                ["n/1", "n", repr(time.time()), e,
                                 records.claimed_attempt("n", time.time()), 0, "30.0", "acme"])
                               for t, e in entries])
        held += [(t, e, c[0]) for (t, e), c in zip(entries, claimed, strict=True)]
    attempt = b'{"replica":0,"pid":1,"started":1.0,"node":"n","outcome":"succeeded"}'
    for i in range(0, n, PIPE):
        await s.run([(s.finish, [k.task(t), k.attempts(t), stream, k.outcomes, *k.listed],
                      [token, t, "succeeded", b"1", b"", repr(time.time()), e, 0, 3600, 0,
                       "1", attempt])
                     for t, e, token in held[i:i + PIPE]])
    return await _cpu(client) - cpu0, time.perf_counter() - t0


async def _bench(url: str, n: int, rounds: int, against: str | None) -> dict[str, Any]:
    client = connect(ClusterSettings(redis=url, name="bench", node="n"), "n")
    variants: dict[str, Any] = {"tree": scripts}
    if against is not None:
        variants[against] = _scripts_of(against)
    per_task: dict[str, list[float]] = {v: [] for v in variants}
    try:
        for r in range(rounds):
            for name, module in variants.items():
                cpu, wall = await _round(client, module, f"{name}-{r}", n)
                per_task[name].append(cpu / n * 1e6)
                print(f"round {r + 1} {name}: {cpu / n * 1e6:.1f} µs of Redis CPU a task, "
                      f"{n / wall:,.0f} tasks/s", flush=True)
        memory = (await client.info("memory"))["used_memory"]
    finally:
        await client.aclose()
    return {"tasks_per_round": n, "rounds": rounds,
            "redis_cpu_us_per_task_median": {v: round(statistics.median(x), 1)
                                             for v, x in per_task.items()},
            "redis_cpu_us_per_task": {v: [round(y, 1) for y in x]
                                      for v, x in per_task.items()},
            "used_memory_after": memory}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", default=None, help="a git revision's scripts, beside")
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    load = psutil.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="corral-bench-scripts-") as d:
        redis = Redis(Path(d))
        try:
            got = asyncio.run(_bench(f"redis://127.0.0.1:{redis.port}/0", a.tasks,
                                     a.rounds, a.against))
        finally:
            redis.stop()
    report("cluster_scripts", {"load_1min_before": load, **got,
                               "load_1min_after": psutil.getloadavg()[0]})


if __name__ == "__main__":
    main()
