"""Issue 56 item 4: how far one Redis primary carries a cluster. Real corral daemons
(each a node with one echo agent) join one redis-server of the bench's own (AOF,
everysec) in steps up to `--nodes`; at each step the nodes idle (beats, views, reapers,
the pullers' blocking reads, retention) for `--window` seconds while Redis's own CPU
(INFO cpu: used_cpu_user + used_cpu_sys) and its commands are counted. Then, at the
largest step, one task stream through the cluster: tasks submitted on every node
round-robin, each run wherever its agent's share is claimed, for Redis's CPU per task
with every node beating beside it.

    .venv/bin/python -m bench.bench_cluster_capacity [--nodes 50] [--window 20]

From the two: Redis CPU per node per beat, per task, and the point where one primary's
core is spent (bench/RESULTS.md, docs/cluster.md "What one Redis carries").
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import redis as redis_py

from .bench_cluster import ECHO, Client, Redis, cluster, wait_alive
from .harness import ENV, PY, CorralDaemon, corral_agents, report

STEPS = (1, 5, 10, 25, 50)


def _agent() -> str:
    return corral_agents(1, [PY, str(ECHO)], name="echo")


def _cpu(r: redis_py.Redis) -> tuple[float, int]:
    """Redis's CPU seconds so far and the commands it has processed."""
    cpu = r.info("cpu")
    stats = r.info("stats")
    return (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
            int(stats["total_commands_processed"]))


def _start(base: Path, redis: Redis, names: list[str], beat: float) -> list[CorralDaemon]:
    """Daemons named `names`, launched side by side; once each said READY=1."""
    ds = []
    for name in names:
        (base / name).mkdir()
        d = CorralDaemon(base / name, _agent() + cluster(redis, name, ttl=3 * beat,
                                                          beat=beat))
        d.proc = subprocess.Popen([*d.launcher, "--config", str(d.config)],
                                  env={**ENV, "NOTIFY_SOCKET": str(d.notify_path)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ds.append(d)
    for d in ds:
        d.notify.settimeout(300)
        while "READY=1" not in d.notify.recv(4096).decode():
            pass
    return ds


def _window(r: redis_py.Redis, window: float) -> tuple[float, int, float]:
    """Redis's CPU seconds and commands over a window of `window` seconds; its length."""
    cpu0, cmds0 = _cpu(r)
    t0 = time.monotonic()
    time.sleep(window)  # a bench's window of idle beating, not a test's wait
    cpu1, cmds1 = _cpu(r)
    return cpu1 - cpu0, cmds1 - cmds0, time.monotonic() - t0


def _calls(r: redis_py.Redis) -> dict[str, int]:
    """Calls so far of each command (and script, by EVALSHA), from INFO commandstats."""
    return {name.removeprefix("cmdstat_"): int(v["calls"])
            for name, v in r.info("commandstats").items()}


def _idle(r: redis_py.Redis, nodes: int, window: float, beat: float,
          alone: float) -> dict[str, Any]:
    """The nodes' share of Redis's CPU while they idle: beyond `alone`, Redis's own CPU a
    second with no client (its cron); and the commands a node sends a beat, most first."""
    before = _calls(r)
    cpu, cmds, wall = _window(r, window)
    after = _calls(r)
    cpu -= alone * wall
    beats = nodes * wall / beat
    by = sorted(((after[c] - before.get(c, 0)) / beats, c) for c in after)
    return {"nodes": nodes, "window_s": round(wall, 2),
            "redis_cpu_percent": round(cpu / wall * 100, 2),
            "redis_cpu_us_per_node_beat": round(cpu / beats * 1e6, 1),
            "commands_per_node_beat": round(cmds / beats, 1),
            "most_per_node_beat": {c: round(n, 2) for n, c in reversed(by[-6:])}}


def _tasks(r: redis_py.Redis, ds: list[CorralDaemon], n: int) -> dict[str, Any]:
    """n echo tasks submitted round-robin on every node (one client per node, 32 in
    flight each), every one waited for; Redis's CPU per task, the beats' share taken
    out by the idle figure measured just before."""
    clients = [Client(d.sock) for d in ds]
    per = max(1, n // len(ds))

    def drive(c: Client) -> list[float]:
        took = []
        for i in range(per):
            t0 = time.perf_counter()
            c.call("tasks.run", {"agent": "echo", "input": {"n": i}})
            took.append(time.perf_counter() - t0)
        return took

    cpu0, cmds0 = _cpu(r)
    t0 = time.monotonic()
    with ThreadPoolExecutor(len(clients)) as pool:
        took = [x for xs in pool.map(drive, clients) for x in xs]
    wall = time.monotonic() - t0
    cpu1, cmds1 = _cpu(r)
    for c in clients:
        c.close()
    took.sort()
    return {"tasks": len(took), "wall_s": round(wall, 2), "redis_cpu_s": round(cpu1 - cpu0, 3),
            "commands": cmds1 - cmds0, "tasks_per_s": round(len(took) / wall, 1),
            "task_p50_ms": round(statistics.median(took) * 1000, 2),
            "task_p99_ms": round(took[int(0.99 * (len(took) - 1))] * 1000, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--beat", type=float, default=1.0)
    ap.add_argument("--tasks", type=int, default=2000)
    a = ap.parse_args()
    load = psutil.getloadavg()[0]
    steps = [s for s in STEPS if s < a.nodes] + [a.nodes]
    idle: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="corral-bench-capacity-") as tmp:
        base = Path(tmp)
        redis = Redis(base)
        r = redis_py.Redis(port=redis.port)
        ds: list[CorralDaemon] = []
        try:
            cpu, _, wall = _window(r, a.window)
            alone = cpu / wall
            for step in steps:
                ds += _start(base, redis, [f"n{i}" for i in range(len(ds), step)], a.beat)
                first = Client(ds[0].sock)
                wait_alive(first, step, timeout=300)
                first.close()
                got = _idle(r, step, a.window, a.beat, alone)
                print(got, flush=True)
                idle.append(got)
            beside = idle[-1]["redis_cpu_percent"] / 100 + alone
            run = _tasks(r, ds, a.tasks)
            per_task = (run["redis_cpu_s"] - beside * run["wall_s"]) / run["tasks"]
            run["redis_cpu_us_per_task_beyond_beats"] = round(per_task * 1e6, 1)
            print(run, flush=True)
        finally:
            for d in ds:
                d.stop()
            r.close()
            redis.stop()
    last = idle[-1]
    spare = 1.0 - last["redis_cpu_percent"] / 100
    report("cluster_capacity", {
        "load_1min_before": load, "beat_s": a.beat,
        "redis_alone_cpu_percent": round(alone * 100, 3), "idle": idle, "tasks": run,
        # one core of the primary: the nodes one Redis could keep beating (at these
        # figures, no tasks), and the tasks/s it could carry beside the largest step's beats
        "nodes_per_core_idle": round(1e6 * a.beat / last["redis_cpu_us_per_node_beat"]),
        "tasks_per_s_per_core_beside_beats": round(
            spare / per_task) if per_task > 0 else None,
        "load_1min_after": psutil.getloadavg()[0]})


if __name__ == "__main__":
    main()
