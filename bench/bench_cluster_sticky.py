"""Issue 56: a cluster session's turns sticky to the node of the last one (decisions
760-763), against the same cluster with `sticky_sessions = false`.

    .venv/bin/python -m bench.bench_cluster_sticky [--quick]

A redis-server of the bench's own (AOF on, `appendfsync everysec`, as bench_cluster), two
clusters on it of three nodes each on this host, one sticky and one not, every node
running bench/turn_agent.py (one replica); SESSIONS sessions of ten turns on each side,
the sides alternated a session at a time, each turn submitted on the nodes in turn and
waited for (`tasks.run` over the control socket) before the next. Measured: each turn's
round trip as its client sees it (p50, p99), and the share of turns after the first that
ran in the worker process that ran the turn before (which held the conversation in its
memory, as given: the fast path).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from .bench_cluster import Client, Redis, pct, wait_alive
from .harness import PY, ROOT, CorralDaemon, report

QUICK = "--quick" in sys.argv
SESSIONS = 10 if QUICK else 40
TURNS = 10
PAD = 1000  # characters a turn adds to the conversation's state
AGENT = f"""
[agents.turn]
command = ["{PY}", "{ROOT}/bench/turn_agent.py"]
env = {{ PYTHONPATH = "{ROOT}" }}
max_concurrent_tasks = 4
"""
SIDES = {"sticky": "true", "not_sticky": "false"}


def _node(base: Path, side: str, name: str, redis: Redis) -> CorralDaemon:
    d = base / side / name
    d.mkdir(parents=True)
    return CorralDaemon(d, AGENT + (
        f'\n[cluster]\nredis = "redis://127.0.0.1:{redis.port}/0"\nname = "{side}"\n'
        f'node = "{name}"\nnode_ttl = 3.0\nbeat = 1.0\ninsecure = true\n'
        f"sticky_sessions = {SIDES[side]}\n"))


def _session(clients: list[Client], name: str) -> tuple[list[float], int]:
    """Ten turns, each submitted on the next node and waited for: their round trips,
    and how many of the nine after the first found their conversation held."""
    took, held = [], 0
    for turn in range(TURNS):
        t0 = time.perf_counter()
        got = clients[turn % len(clients)].call("tasks.run", {
            "agent": "turn", "session": name, "input": {"turn": turn, "pad": PAD}})
        took.append(time.perf_counter() - t0)
        assert got["status"] == "succeeded", got
        held += bool(got["output"]["held"])
    return took, held


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="corral-bench-cluster-sticky-"))
    results: dict[str, Any] = {"load_1min_before": psutil.getloadavg()[0],
                               "sessions": SESSIONS, "turns": TURNS, "pad": PAD}
    (base / "redis").mkdir()
    redis = Redis(base / "redis")
    ds = {side: [_node(base, side, n, redis) for n in "abc"] for side in SIDES}
    took: dict[str, list[float]] = {side: [] for side in SIDES}
    held = dict.fromkeys(SIDES, 0)
    try:
        for nodes in ds.values():
            for d in nodes:
                d.start()
        clients = {side: [Client(d.sock) for d in nodes] for side, nodes in ds.items()}
        for cs in clients.values():
            wait_alive(cs[0], 3)
            for w in range(3):
                _session(cs, f"warm{w}")  # the workers have served
        for i in range(SESSIONS):
            for side, cs in clients.items():
                t, h = _session(cs, f"s{i}")
                took[side] += t
                held[side] += h
        for cs in clients.values():
            for c in cs:
                c.close()
    finally:
        for nodes in ds.values():
            for d in nodes:
                d.stop()
        redis.stop()
        shutil.rmtree(base, ignore_errors=True)
    for side, xs in took.items():
        results[side] = {"turn_p50_ms": round(statistics.median(xs) * 1000, 3),
                         "turn_p99_ms": round(pct(xs, 99) * 1000, 3), "turns": len(xs),
                         "held_share": round(held[side] / (SESSIONS * (TURNS - 1)), 3)}
        print(side, json.dumps(results[side]), flush=True)
    results["load_1min_after"] = psutil.getloadavg()[0]
    report("cluster_sticky", results)


if __name__ == "__main__":
    main()
