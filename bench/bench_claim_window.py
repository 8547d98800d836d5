"""Decision 2181: a submission claimed at its submission beside its node's pull.

    .venv/bin/python -m bench.bench_claim_window [--tasks N] [--rounds R]

Two nodes on a redis-server of the bench's own (bench_cluster's), each running the echo
agent (one replica, one slot), `tasks.run` one at a time on node a: each task's end frees
a's slot and wakes a's pull, whose read then holds the slot across its round trip just
as the client's next submission arrives. Reports, per round, the share of tasks claimed
at their submission (`claimed_at_submit` of a's stats), those run on b, and the
submission's round trip (`tasks.run`, p50 and p99). Before decision 2181 a submission
that met the read went to the stream unclaimed and waited for a pull.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .bench_cluster import ECHO, Client, Redis, node, summary, wait_alive
from .harness import PY, corral_agents, report

ARGS = sys.argv[1:]


def arg(name: str, default: str) -> str:
    return ARGS[ARGS.index(name) + 1] if name in ARGS else default


TASKS = int(arg("--tasks", "1000"))
ROUNDS = int(arg("--rounds", "3"))


def one_round(base: Path) -> dict[str, Any]:
    redis = Redis(base)
    echo = corral_agents(1, [PY, str(ECHO)], "echo")
    a, b = node(base, "a", echo, redis), node(base, "b", echo, redis)
    for d in (a, b):
        d.start()
    try:
        ca = Client(a.sock)
        wait_alive(ca, 2)
        for i in range(50):  # warm
            ca.call("tasks.run", {"agent": "echo", "input": {"n": i}})
        before = ca.call("stats.get", {})["cluster"]["claimed_at_submit"]
        times: list[float] = []
        on_b = 0
        for i in range(TASKS):
            t0 = time.perf_counter()
            res = ca.call("tasks.run", {"agent": "echo", "input": {"n": i}})
            times.append(time.perf_counter() - t0)
            assert res["status"] == "succeeded", res
            on_b += res["attempts"][0]["node"] == "b"
        claimed = ca.call("stats.get", {})["cluster"]["claimed_at_submit"] - before
        ca.close()
    finally:
        for d in (a, b):
            d.stop()
        redis.stop()
    return {**summary(times), "claimed_at_submit": claimed, "ran_on_b": on_b}


def main() -> None:
    rounds = []
    for _ in range(ROUNDS):
        with tempfile.TemporaryDirectory() as t:
            rounds.append(one_round(Path(t)))
    report("claim_window", {"load_1min": os.getloadavg()[0], "tasks": TASKS,
                            "rounds": rounds})


if __name__ == "__main__":
    main()
