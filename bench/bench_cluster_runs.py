"""Issue 56 item 1: workflow runs on a cluster (kept in Redis under a fenced lease, their
steps cluster tasks), against one node; and the takeover of a run whose node died.

    .venv/bin/python -m bench.bench_cluster_runs [--quick]

A redis-server of the bench's own (AOF on, `appendfsync everysec`, as bench_cluster),
daemons on this host, the no-op step bench/peers/corral_stamp.py (each step appends the
wall clock to the list it is passed), 4 replicas a node. Measured:

- per edge of a 20-step chain (an edge: the difference of two consecutive stamps, the
  end of one step, its rows kept, the start of the next): on one daemon without
  [cluster], and on a node of a two-node cluster, each running the step's agent (the
  run's rows and record go to Redis; each step is a cluster task, run on whichever node
  claims it), the chains alternated one and one; p50, p99 (goal: p50 <= 1.5 ms);
- takeover: a run driven by node a, waiting on a step of 30 s (a task of an agent every
  node runs, `retries = 1`: when a ran it, it is queued again); a's daemon and workers
  kill -9'd; the time until b's or c's `corral stats` counts the run taken over
  (`cluster.calls.taken`), polled every 5 ms, at `node_ttl = 3`, `beat = 1` (the
  defaults; goal <= node_ttl + beat + 100 ms).
"""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from .bench_cluster import Client, Redis, cluster, pct, wait_alive
from .harness import PY, ROOT, CorralDaemon, corral_agents, report

QUICK = "--quick" in sys.argv
CHAINS = 6 if QUICK else 20  # per side
TAKEOVERS = 2 if QUICK else 5
STAMP = ROOT / "bench" / "peers" / "corral_stamp.py"
MISBEHAVE = ROOT / "examples" / "misbehave.py"
CHAIN = "[workflows.chain]\n" + "".join(
    f'[[workflows.chain.steps]]\nname = "s{i}"\nagent = "stamp"\n' for i in range(20))
WAIT = ('\n[workflows.wait]\n[[workflows.wait.steps]]\nname = "long"\nagent = "sleepy"\n'
        'input = { do = "sleep", seconds = 30 }\n')
SLEEPY = (f'\n[agents.sleepy]\ncommand = ["{PY}", "{MISBEHAVE}"]\n'
          f'env = {{ PYTHONPATH = "{ROOT}" }}\nretries = 1\n')


def _daemon(base: Path, name: str, agents: str, redis: Redis | None) -> CorralDaemon:
    (base / name).mkdir(exist_ok=True)
    return CorralDaemon(base / name, agents + (cluster(redis, name) if redis else ""))


def _edges(c: Client) -> list[float]:
    run = c.call("workflows.run", {"name": "chain", "input": {"t": []}})
    while True:
        view = c.call("runs.get", {"run_id": run["run_id"], "wait": 30})
        if view["status"] != "running":
            break
    assert view["status"] == "succeeded", view
    t = view["output"]["t"]
    return [b - a for a, b in itertools.pairwise(t)]


def edges(base: Path, redis: Redis) -> dict[str, Any]:
    agents = corral_agents(4, [PY, str(STAMP)], "stamp") + CHAIN
    one = _daemon(base, "one", agents, None)
    a = _daemon(base, "a", agents, redis)
    b = _daemon(base, "b", agents, redis)
    for d in (one, a, b):
        d.start()
    got: dict[str, list[float]] = {"one_node": [], "cluster": []}
    try:
        clients = {"one_node": Client(one.sock), "cluster": Client(a.sock)}
        wait_alive(clients["cluster"], 2)
        for c in clients.values():
            _edges(c)  # warm: every replica has served once
        for _ in range(CHAINS):
            for side, c in clients.items():
                got[side] += _edges(c)
        for c in clients.values():
            c.close()
    finally:
        for d in (one, a, b):
            d.stop()
    return {side: {"p50_ms": round(statistics.median(xs) * 1000, 3),
                   "p99_ms": round(pct(xs, 99) * 1000, 3), "max_ms": round(max(xs) * 1000, 3),
                   "n": len(xs)} for side, xs in got.items()} | {"goal_p50_ms": 1.5}


def _taken(clients: list[Client]) -> int:
    return sum(c.call("stats.get", {})["cluster"]["calls"]["taken"] for c in clients)


def takeover(base: Path, redis: Redis) -> dict[str, Any]:
    ds = {n: _daemon(base, n, SLEEPY + WAIT, redis) for n in ("a", "b", "c")}
    for d in ds.values():
        d.start()
    times: list[float] = []
    try:
        others = [Client(ds[n].sock) for n in ("b", "c")]
        for i in range(TAKEOVERS):
            a = Client(ds["a"].sock)
            wait_alive(a, 3)
            run = a.call("workflows.run", {"name": "wait", "input": None})
            while True:  # its one step runs (on b or c)
                steps = a.call("runs.get", {"run_id": run["run_id"]})["steps"]
                if steps and steps[0]["task_id"] and a.call("tasks.get", {
                        "task_id": steps[0]["task_id"]})["status"] == "running":
                    break
                time.sleep(0.01)
            before = _taken(others)
            proc = ds["a"].proc
            assert proc is not None
            workers = psutil.Process(proc.pid).children(recursive=True)
            t0 = time.perf_counter()
            proc.send_signal(signal.SIGKILL)
            for w in workers:
                w.kill()
            while _taken(others) == before:
                assert time.perf_counter() - t0 < 30
                time.sleep(0.005)
            times.append(time.perf_counter() - t0)
            print(f"takeover {i + 1}: {times[-1]:.3f} s", flush=True)
            a.close()
            proc.wait(10)
            ds["a"].notify.close()
            ds["a"].notify_path.unlink()
            ds["a"] = _daemon(base, "a", SLEEPY + WAIT, redis)
            ds["a"].start()
        for c in others:
            c.close()
    finally:
        for d in ds.values():
            d.stop()
    return {"seconds": [round(t, 3) for t in times], "median_s": round(
        statistics.median(times), 3), "max_s": round(max(times), 3), "node_ttl": 3.0,
            "beat": 1.0, "goal_s": 3.0 + 1.0 + 0.1}


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="corral-bench-cluster-runs-"))
    results: dict[str, Any] = {"load_1min_before": psutil.getloadavg()[0]}
    try:
        for name, part in (("edges", edges), ("takeover", takeover)):
            d = base / name
            d.mkdir()
            (d / "redis").mkdir()
            redis = Redis(d / "redis")
            try:
                results[name] = part(d, redis)
            finally:
                redis.stop()
            print(name, json.dumps(results[name]), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    results["load_1min_after"] = psutil.getloadavg()[0]
    report("cluster_runs", results)


if __name__ == "__main__":
    main()
