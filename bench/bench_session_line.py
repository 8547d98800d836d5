"""Decision 1500: what a cluster session's turn's end costs the turn after it, now that
the end marks the turn ended and the node then moves the session (two round trips after
the end's script, not in it).

    .venv/bin/python -m bench.bench_session_line [--quick]

A redis-server of the bench's own (as bench_cluster), one cluster of two nodes on this
host, each running bench/turn_agent.py (one replica). Measured, SESSIONS sessions at a
time each:
- `line`: ten turns of a session submitted at once, on the nodes in turn: each turn but
  the first waits in the line; the handoff is the time from a turn's end (its attempt's
  `finished`) to the next one's start (`started`), as the nodes' clocks (one host) say;
- `sequential`: ten turns, each submitted once the one before was answered (`tasks.run`):
  the client's round trip, which meets a turn's end not yet moved.
"""

from __future__ import annotations

import itertools
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from .bench_cluster import Client, Redis, node, pct, wait_alive
from .harness import PY, ROOT, report

QUICK = "--quick" in sys.argv
SESSIONS = 5 if QUICK else 20
TURNS = 10
AGENT = f"""
[agents.turn]
command = ["{PY}", "{ROOT}/bench/turn_agent.py"]
env = {{ PYTHONPATH = "{ROOT}" }}
max_concurrent_tasks = 4
"""


def _line(clients: list[Client], name: str) -> list[float]:
    ids = [clients[t % 2].call("tasks.submit", {"agent": "turn", "session": name,
                                                "input": {"turn": t}})["task_id"]
           for t in range(TURNS)]
    got = [clients[0].call("tasks.get", {"task_id": t, "wait": True}) for t in ids]
    assert all(g["status"] == "succeeded" for g in got), got
    return [after["attempts"][0]["started"] - before["attempts"][0]["finished"]
            for before, after in itertools.pairwise(got)]


def _sequential(clients: list[Client], name: str) -> list[float]:
    took = []
    for t in range(TURNS):
        t0 = time.perf_counter()
        got = clients[t % 2].call("tasks.run", {"agent": "turn", "session": name,
                                               "input": {"turn": t}})
        took.append(time.perf_counter() - t0)
        assert got["status"] == "succeeded", got
    return took


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="corral-bench-session-line-"))
    results: dict[str, Any] = {"load_1min_before": psutil.getloadavg()[0],
                               "sessions": SESSIONS, "turns": TURNS}
    (base / "redis").mkdir()
    redis = Redis(base / "redis")
    ds = [node(base, n, AGENT, redis) for n in "ab"]
    took: dict[str, list[float]] = {"line": [], "sequential": []}
    try:
        for d in ds:
            d.start()
        clients = [Client(d.sock) for d in ds]
        wait_alive(clients[0], 2)
        _sequential(clients, "warm")  # the workers have served
        for i in range(SESSIONS):
            took["line"] += _line(clients, f"l{i}")
            took["sequential"] += _sequential(clients, f"s{i}")
        for c in clients:
            c.close()
    finally:
        for d in ds:
            d.stop()
        redis.stop()
        shutil.rmtree(base, ignore_errors=True)
    for kind, xs in took.items():
        results[kind] = {"p50_ms": round(statistics.median(xs) * 1000, 3),
                         "p99_ms": round(pct(xs, 99) * 1000, 3), "n": len(xs)}
        print(kind, json.dumps(results[kind]), flush=True)
    results["load_1min_after"] = psutil.getloadavg()[0]
    report("session_line", results)


if __name__ == "__main__":
    main()
