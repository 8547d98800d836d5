"""Issue 55 on a cluster: a cluster task's question (decision 770: its ask kept in Redis,
decided on any node, the waiting node woken by END's message on the asks' channel, and
reading the asks it waits on once a beat besides), against one node.

    .venv/bin/python -m bench.bench_cluster_asks [--quick]

A redis-server of the bench's own (AOF on, `appendfsync everysec`, as bench_cluster),
daemons on this host: one without [cluster], and two nodes of a cluster at `[cluster]
beat` 1.0 (the default) and 0.25, each running bench/waiting_agent.py (no tool call, one
question). Per sample: a task submitted on node a (on the one node there), its question
polled for on node b's `approvals.list` (the one node's); then the question answered on
b (`approvals.resolve`) and, on a's socket, `tasks.get {wait}` until its end. Measured:

- `approvals.resolve`'s round trip (on the cluster: the read of the ask, then END);
- decision -> answer: from the resolve's send to the worker's wall clock at its answer
  (the output's `t.answered`: same host, same clock);
- decision -> end: from the resolve's send to the task's end told on a's socket;
- `approvals.list`'s round trip with the one question pending.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from .bench_cluster import Client, Redis, cluster, summary, wait_alive
from .harness import PY, ROOT, CorralDaemon, report

QUICK = "--quick" in sys.argv
SAMPLES = 10 if QUICK else 40
AGENTS = f"""
[agents.asker]
command = ["{PY}", "{ROOT}/bench/waiting_agent.py"]
env = {{ PYTHONPATH = "{ROOT}" }}
max_concurrent_tasks = 4
"""


def _daemon(base: Path, name: str, redis: Redis | None, beat: float = 1.0) -> CorralDaemon:
    (base / name).mkdir(exist_ok=True)
    return CorralDaemon(base / name, AGENTS + (
        cluster(redis, name, beat=beat) if redis is not None else ""))


def _sample(submit: Client, decide: Client, into: dict[str, list[float]]) -> None:
    task_id = submit.call("tasks.submit", {"agent": "asker", "input": {}})["task_id"]
    while True:
        t = time.perf_counter()
        asks = [a for a in decide.call("approvals.list", {})["asks"]
                if a["task_id"] == task_id]
        if asks:
            into["list"].append(time.perf_counter() - t)
            break
        time.sleep(0.005)
    sent = time.time()
    t = time.perf_counter()
    decide.call("approvals.resolve", {"id": asks[0]["id"], "decision": "answered",
                                      "answer": "yes"})
    into["resolve"].append(time.perf_counter() - t)
    done = submit.call("tasks.get", {"task_id": task_id, "wait": True})
    ended = time.time()
    assert done["status"] == "succeeded", done
    into["to_answer"].append(done["output"]["t"]["answered"] - sent)
    into["to_end"].append(ended - sent)


def _side(base: Path, name: str, redis: Redis | None, beat: float) -> dict[str, Any]:
    ds = ([_daemon(base, name, None)] if redis is None else
          [_daemon(base, f"{name}-a", redis, beat), _daemon(base, f"{name}-b", redis, beat)])
    got: dict[str, list[float]] = {"list": [], "resolve": [], "to_answer": [],
                                   "to_end": []}
    try:
        for d in ds:
            d.start()
        submit, decide = Client(ds[0].sock), Client(ds[-1].sock)
        if redis is not None:
            wait_alive(submit, 2)
        _sample(submit, decide, {k: [] for k in got})  # warm: the replica up
        for _ in range(SAMPLES):
            _sample(submit, decide, got)
        submit.close()
        decide.close()
    finally:
        for d in ds:
            d.stop()
    return {k: summary(v) for k, v in got.items()}


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="corral-bench-cluster-asks-"))
    results: dict[str, Any] = {"load_before": Path("/proc/loadavg").read_text().strip(),
                               "samples": SAMPLES}
    (base / "redis").mkdir()
    redis = Redis(base / "redis")
    try:
        results["one_node"] = _side(base, "one", None, 0.0)
        print("one_node", json.dumps(results["one_node"]), flush=True)
        for beat in (1.0, 0.25):
            key = f"cluster_beat_{beat:g}"
            # a cluster of its own each (its name's keys), on the same Redis
            results[key] = _side(base, key.replace(".", "_"), redis, beat)
            print(key, json.dumps(results[key]), flush=True)
    finally:
        redis.stop()
        shutil.rmtree(base, ignore_errors=True)
    results["load_after"] = Path("/proc/loadavg").read_text().strip()
    results["load_1min_after"] = psutil.getloadavg()[0]
    report("cluster_asks", results)


if __name__ == "__main__":
    main()
