"""Issue 73: 200 scale-downs under a steady load lose no task (a replica chosen to go
drains: it finishes what it runs before it is asked to stop).

    .venv/bin/python -m bench.bench_scale_drain [--quick] [--rounds N]

One agent whose tasks sleep 50 ms, `retry_lost = 0` (a loss shows as one, not as a
retry); a client keeps about 6 tasks waiting for it throughout. Each round scales it to
3 replicas, waits until all three run a task, and scales it back to 1 (two busy
replicas go). Reported: the rounds, the tasks and their outcomes (every one must have
succeeded), how long a scale-down took (its drain: the running tasks' rest, then the
stop), and the tasks per second meanwhile. The tests (tests/test_scale_drain.py) run
25 rounds of the same.
"""

from __future__ import annotations

import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from .harness import PY, CorralDaemon, cleanup, corral_agents, report, workdir

QUICK = "--quick" in sys.argv
ROUNDS = (int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv
          else 20 if QUICK else 200)
SLEEP = 0.05
DEPTH = 6

SLEEPER = """
import time
from corral.worker import run


def handle(task, ctx):
    time.sleep(task)
    return {"replica": ctx.replica}


run(handle)
"""


class Calls:
    """One control connection, a call at a time."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")
        self.n = 0

    def call(self, method: str, params: dict[str, Any]) -> Any:
        self.n += 1
        self.sock.sendall(msgspec.json.encode({"jsonrpc": "2.0", "id": self.n,
                                               "method": method, "params": params}) + b"\n")
        while True:
            msg = msgspec.json.decode(self.file.readline())
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg["result"]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def load(path: Path, ids: list[str], done: threading.Event) -> None:
    c = Calls(path)
    try:
        while not done.is_set():
            for _ in range(DEPTH):
                ids.append(c.call("tasks.submit", {"agent": "w", "input": SLEEP})["task_id"])
            c.call("tasks.get", {"task_id": ids[-DEPTH], "wait": True})
    finally:
        c.close()


def main() -> None:
    d = workdir("scale-drain")
    script = d / "sleeper.py"
    script.write_text(SLEEPER)
    daemon = CorralDaemon(d, corral_agents(1, [PY, str(script)],
                                           extra="stop_timeout = 10\nretry_lost = 0"))
    try:
        daemon.start()
        c = Calls(daemon.sock)
        ids: list[str] = []
        done = threading.Event()
        feeder = threading.Thread(target=load, args=(daemon.sock, ids, done), daemon=True)
        t0 = time.perf_counter()
        feeder.start()
        downs: list[float] = []
        for _ in range(ROUNDS):
            c.call("agents.scale", {"name": "w", "replicas": 3})
            while True:  # every replica runs a task when two are chosen to go
                states = [r["state"] for r in c.call("agents.status", {"names": ["w"]})[
                    "agents"]]
                if states == ["busy"] * 3:
                    break
                time.sleep(0.005)
            t = time.perf_counter()
            c.call("agents.scale", {"name": "w", "replicas": 1})
            downs.append(time.perf_counter() - t)
        done.set()
        feeder.join(60)
        elapsed = time.perf_counter() - t0
        outcomes: dict[str, int] = {}
        for task_id in ids:
            status = c.call("tasks.get", {"task_id": task_id, "wait": True})["status"]
            outcomes[status] = outcomes.get(status, 0) + 1
        c.close()
        downs.sort()
        report("scale_drain", {
            "rounds": ROUNDS, "scale_downs": ROUNDS, "replicas_drained": 2 * ROUNDS,
            "tasks": len(ids), "outcomes": outcomes,
            "lost": len(ids) - outcomes.get("succeeded", 0),
            "scale_down_ms": {"median": round(statistics.median(downs) * 1000, 1),
                              "p99": round(downs[int(len(downs) * 0.99) - 1] * 1000, 1),
                              "max": round(downs[-1] * 1000, 1)},
            "tasks_per_s": round(len(ids) / elapsed, 1), "seconds": round(elapsed, 1)})
        assert outcomes == {"succeeded": len(ids)}, outcomes
    finally:
        daemon.stop()
        cleanup(d)


if __name__ == "__main__":
    main()
