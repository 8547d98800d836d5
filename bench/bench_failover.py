"""Issue 56 item 3: what acknowledging a write only once a replica has it (WAIT,
`[cluster] ack_replicas = 1`) costs, side by side with the primary's word alone
(`ack_replicas = 0`): one primary and one replica (Debian's redis-server 7.0, AOF on,
`appendfsync everysec`), two clusters on them, each of node a (no agent) and node b
(the echo agent, 2 replicas of 64 slots), measured in alternating rounds.

    .venv/bin/python -m bench.bench_failover [--quick]

- latency: `tasks.run` of an echo task, one at a time, submitted on a and run on b (the
  submit, b's claim, the outcome and a's wake: the submit and the outcome each wait for
  the replica with WAIT), p50 and p99;
- throughput: 256 echo tasks in flight through b's socket (b claims what it submits),
  tasks per second.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from .bench_cluster import ECHO, Client, Redis, summary, wait_alive
from .harness import PY, CorralDaemon, corral_agents, pipelined_tasks, report

QUICK = "--quick" in sys.argv
LATENCY_TASKS = 300 if QUICK else 1000
THROUGHPUT_TASKS = 3000 if QUICK else 10000
ROUNDS = 3 if QUICK else 5


class Replica(Redis):
    """A replica of `primary`, in sync before it is used."""

    def __init__(self, d: Path, primary: Redis) -> None:
        super().__init__(d)
        subprocess.run(["redis-cli", "-p", str(self.port), "replicaof", "127.0.0.1",
                        str(primary.port)], check=True, capture_output=True)
        deadline = time.monotonic() + 30
        while b"master_link_status:up" not in subprocess.run(
                ["redis-cli", "-p", str(self.port), "info", "replication"],
                check=True, capture_output=True).stdout:
            assert time.monotonic() < deadline, "the replica never synced"
            time.sleep(0.1)


def cluster_nodes(base: Path, redis: Redis, acks: int) -> tuple[CorralDaemon, CorralDaemon]:
    echo = corral_agents(2, [PY, str(ECHO)], "echo", "max_concurrent_tasks = 64\n"
                                                     "max_queue = 100000\n")
    made = []
    for name, agents in (("a", ""), ("b", echo)):
        d = base / f"acks{acks}" / name
        d.mkdir(parents=True)
        made.append(CorralDaemon(d, agents + (
            f'\n[cluster]\nredis = "redis://127.0.0.1:{redis.port}/0"\n'
            f'name = "acks{acks}"\nnode = "{name}"\ninsecure = true\n'
            f"ack_replicas = {acks}\n")))
    return made[0], made[1]


def latency_round(a: Client, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        res = a.call("tasks.run", {"agent": "echo", "input": {"n": i}})
        out.append(time.perf_counter() - t0)
        assert res["status"] == "succeeded" and res["attempts"][0]["node"] == "b", res
    return out


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="corral-bench-failover-"))
    results: dict[str, Any] = {"load_1min_before": psutil.getloadavg()[0]}
    (base / "primary").mkdir()
    (base / "replica").mkdir()
    primary = Redis(base / "primary")
    replica = Replica(base / "replica", primary)
    daemons: list[CorralDaemon] = []
    try:
        pairs = {acks: cluster_nodes(base, primary, acks) for acks in (0, 1)}
        for a, b in pairs.values():
            daemons += [a, b]
            a.start()
            b.start()
        clients = {acks: Client(a.sock) for acks, (a, _b) in pairs.items()}
        for c in clients.values():
            wait_alive(c, 2)
            latency_round(c, 50)  # warm
        lat: dict[int, list[float]] = {0: [], 1: []}
        rate: dict[int, list[int]] = {0: [], 1: []}
        for _ in range(ROUNDS):
            for acks, c in clients.items():
                lat[acks] += latency_round(c, LATENCY_TASKS // ROUNDS)
            for acks, (_a, b) in pairs.items():
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.connect(str(b.sock))
                    rate[acks].append(round(pipelined_tasks(sock, THROUGHPUT_TASKS)))
        for c in clients.values():
            c.close()
        for acks in (0, 1):
            results[f"ack_replicas_{acks}"] = {
                "latency_submitted_on_a_run_on_b": summary(lat[acks]),
                "throughput_tasks_per_s": max(rate[acks]), "throughput_runs": rate[acks]}
        results["wait_p50_ms"] = round(
            results["ack_replicas_1"]["latency_submitted_on_a_run_on_b"]["p50_ms"]
            - results["ack_replicas_0"]["latency_submitted_on_a_run_on_b"]["p50_ms"], 3)
    finally:
        for d in daemons:
            d.stop()
        replica.stop()
        primary.stop()
        shutil.rmtree(base, ignore_errors=True)
    results["load_1min_after"] = psutil.getloadavg()[0]
    results["rounds"] = ROUNDS
    print(json.dumps(results), flush=True)
    report("failover", results)


if __name__ == "__main__":
    main()
