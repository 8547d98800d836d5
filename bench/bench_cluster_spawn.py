"""Issue 56: a cluster task's spawns (decision 740: each spawn one script, its row and its
child, fenced by the parent's claim; the children cluster tasks), against one node.

    .venv/bin/python -m bench.bench_cluster_spawn [--quick]

A redis-server of the bench's own (AOF on, `appendfsync everysec`, as bench_cluster),
daemons on this host: one without [cluster], and two nodes of a cluster, each running the
orchestrator (bench/spawn_agent.py, `retries = 1`) and bench/echo_agent.py (4 replicas).
Measured, the two sides alternated:

- a spawn's round trip as the orchestrator sees it (p50, p99): on one node the journaled
  step and the child's acceptance; on the cluster the read of the row and the parent's
  place, and the SPAWN script;
- CHILDREN children spawned one after another, then waited for (the wait's wall time),
  and the same by `ctx.map` (the spawns sent at once), wall time from its start.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

from .bench_cluster import Client, Redis, cluster, pct, wait_alive
from .bench_spawn import AGENTS
from .harness import CorralDaemon, report

QUICK = "--quick" in sys.argv
CHILDREN = 100 if QUICK else 300
ROUNDS = 2 if QUICK else 5


def _daemon(base: Path, name: str, redis: Redis | None) -> CorralDaemon:
    (base / name).mkdir(exist_ok=True)
    return CorralDaemon(base / name, AGENTS + (cluster(redis, name) if redis else ""))


def _tree(c: Client, **more: Any) -> dict[str, Any]:
    got = c.call("tasks.run", {"agent": "orch", "input": {"children": CHILDREN, **more},
                               "timeout": 600})
    assert got["status"] == "succeeded", got
    return dict(got["output"])


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="corral-bench-cluster-spawn-"))
    results: dict[str, Any] = {"load_1min_before": psutil.getloadavg()[0],
                               "children": CHILDREN, "rounds": ROUNDS}
    (base / "redis").mkdir()
    redis = Redis(base / "redis")
    ds = [_daemon(base, "one", None), _daemon(base, "a", redis), _daemon(base, "b", redis)]
    spawn_ms: dict[str, list[float]] = {"one_node": [], "cluster": []}
    wait_s: dict[str, list[float]] = {"one_node": [], "cluster": []}
    map_s: dict[str, list[float]] = {"one_node": [], "cluster": []}
    try:
        for d in ds:
            d.start()
        clients = {"one_node": Client(ds[0].sock), "cluster": Client(ds[1].sock)}
        wait_alive(clients["cluster"], 2)
        for c in clients.values():
            _tree(c)  # warm: every replica has served once
        for _ in range(ROUNDS):
            for side, c in clients.items():
                out = _tree(c)
                spawn_ms[side] += out["spawn_ms"]
                wait_s[side].append(out["wait_s"])
                map_s[side].append(_tree(c, map=True)["wait_s"])
        for c in clients.values():
            c.close()
    finally:
        for d in ds:
            d.stop()
        redis.stop()
        shutil.rmtree(base, ignore_errors=True)
    for side in spawn_ms:
        xs = spawn_ms[side]
        results[side] = {
            "spawn_p50_ms": round(statistics.median(xs), 3),
            "spawn_p99_ms": round(pct(xs, 99), 3),
            "wait_after_spawns_s": round(statistics.median(wait_s[side]), 3),
            "map_s": round(statistics.median(map_s[side]), 3)}
        print(side, json.dumps(results[side]), flush=True)
    results["load_1min_after"] = psutil.getloadavg()[0]
    report("cluster_spawn", results)


if __name__ == "__main__":
    main()
