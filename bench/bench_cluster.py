"""Issue 22: corral nodes on Redis, three daemons on this host and a redis-server of the
bench's own (Debian's 7.0, AOF on, `appendfsync everysec`).

    .venv/bin/python -m bench.bench_cluster [--quick]

- dispatch latency, one task at a time over a control socket (`tasks.run`, an echo of
  `{"n": i}`): on node b with `local` (the engine's own dispatch, the baseline), and
  submitted on node a, which does not run the agent, so that it runs on b (the cluster's
  path: submit script, b's read and claim, the fenced outcome, a woken by the outcomes
  stream); p50 and p99 of each, in alternating rounds;
- throughput of tiny tasks over the three nodes, each running the echo agent (2
  replicas, 64 slots each), 256 tasks in flight per node through its socket, beside the
  same load with `local` on each node (no Redis);
- beside it, Celery 5 with its Redis broker (and result backend) on a redis-server of
  the same configuration: three workers of 2 processes, the same echo task, 768 in
  flight (`.[bench]` installs it; skipped where it is not installed);
- takeover: a long task running on one node, that node's daemon and workers killed -9;
  the time until another node has claimed it (`node_ttl = 3`, `beat = 1`, the defaults).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil

from .harness import (
    ENV,
    PY,
    ROOT,
    CorralDaemon,
    corral_agents,
    free_port,
    pipelined_tasks,
    report,
)

QUICK = "--quick" in sys.argv
LATENCY_TASKS = 300 if QUICK else 1000
THROUGHPUT_TASKS = 3000 if QUICK else 10000  # per node
TAKEOVERS = 2 if QUICK else 5
ECHO = ROOT / "bench" / "echo_agent.py"
MISBEHAVE = ROOT / "examples" / "misbehave.py"


class Redis:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(d),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--maxmemory-policy", "noeviction", "--logfile", str(d / "redis.log")],
            stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def node(base: Path, name: str, agents: str, redis: Redis) -> CorralDaemon:
    (base / name).mkdir(exist_ok=True)
    return CorralDaemon(base / name, agents + cluster(redis, name))


def cluster(redis: Redis, node: str, ttl: float = 3.0, beat: float = 1.0) -> str:
    return (f'\n[cluster]\nredis = "redis://127.0.0.1:{redis.port}/0"\nname = "bench"\n'
            f'node = "{node}"\nnode_ttl = {ttl}\nbeat = {beat}\n'
            # measured without the cluster key, as bench/RESULTS.md's figures were
            'insecure = true\n')


class Client:
    """One control-socket connection, one call at a time."""

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


def wait_alive(c: Client, count: int, timeout: float = 30.0) -> None:
    """Until `count` nodes are alive in the cluster, as node `c` lists them."""
    deadline = time.monotonic() + timeout
    while sum(n["alive"] for n in c.call("nodes.list", {})["nodes"]) < count:
        assert time.monotonic() < deadline, f"{count} nodes never alive"
        time.sleep(0.1)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def summary(xs: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(xs) * 1000, 3),
            "p99_ms": round(pct(xs, 99) * 1000, 3), "n": len(xs)}


def latency(base: Path, redis: Redis) -> dict[str, Any]:
    echo = corral_agents(1, [PY, str(ECHO)], "echo")
    a, b = node(base, "a", "", redis), node(base, "b", echo, redis)
    for d in (a, b):
        d.start()
    try:
        ca, cb = Client(a.sock), Client(b.sock)
        # both nodes listed, the agent served: the first cluster task is not refused
        wait_alive(ca, 2)
        local: list[float] = []
        cross: list[float] = []
        for i in range(50):  # warm both paths
            cb.call("tasks.run", {"agent": "echo", "input": {"n": i}, "local": True})
            ca.call("tasks.run", {"agent": "echo", "input": {"n": i}})
        rounds = 10
        for r in range(rounds):
            for i in range(LATENCY_TASKS // rounds):
                t0 = time.perf_counter()
                res = cb.call("tasks.run", {"agent": "echo", "input": {"n": i},
                                            "local": True})
                local.append(time.perf_counter() - t0)
                assert res["status"] == "succeeded"
                t0 = time.perf_counter()
                res = ca.call("tasks.run", {"agent": "echo", "input": {"n": i}})
                cross.append(time.perf_counter() - t0)
                assert res["status"] == "succeeded" and res["attempts"][0]["node"] == "b", (
                    r, res)
        ca.close()
        cb.close()
    finally:
        for d in (a, b):
            d.stop()
    lo, cr = summary(local), summary(cross)
    return {"local_on_b": lo, "submitted_on_a_run_on_b": cr,
            "over_local_p50_ms": round(cr["p50_ms"] - lo["p50_ms"], 3),
            "over_local_p99_ms": round(cr["p99_ms"] - lo["p99_ms"], 3)}


def throughput(base: Path, redis: Redis) -> dict[str, Any]:
    echo = corral_agents(2, [PY, str(ECHO)], "echo", "max_concurrent_tasks = 64\n"
                                                     "max_queue = 100000\n")
    ds = [node(base, n, echo, redis) for n in ("a", "b", "c")]
    for d in ds:
        d.start()
    out: dict[str, Any] = {}
    try:
        c = Client(ds[0].sock)
        wait_alive(c, len(ds))
        c.close()
        for local in (True, False, True, False):
            def load(i: int, local: bool = local) -> None:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.connect(str(ds[i].sock))
                    pipelined_tasks(sock, THROUGHPUT_TASKS, params={"local": local})

            threads = [threading.Thread(target=load, args=(i,)) for i in range(len(ds))]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            rate = len(ds) * THROUGHPUT_TASKS / wall
            out.setdefault("local" if local else "cluster", []).append(round(rate))
    finally:
        for d in ds:
            d.stop()
    return {k: {"tasks_per_s": max(v), "runs": v} for k, v in out.items()} | {
        "tasks_per_node": THROUGHPUT_TASKS, "in_flight_per_node": 256}


def celery(base: Path, redis: Redis) -> dict[str, Any] | None:
    """Celery 5 with the Redis broker and result backend on the same redis-server: three
    workers (as three nodes), each with 2 prefork processes (as 2 replicas), the echo
    task; the producer keeps 768 tasks in flight (256 per node, as corral's load) and
    waits for every result."""
    try:
        import celery as _  # noqa: F401
    except ImportError:
        return None  # `pip install -e '.[bench]'`
    env = {**ENV, "CELERY_BROKER": f"redis://127.0.0.1:{redis.port}/1",
           "CELERY_BACKEND": f"redis://127.0.0.1:{redis.port}/2"}
    workers = [subprocess.Popen(
        [PY, "-m", "celery", "-A", "bench.celery_app", "worker", "-c", "2", "-P", "prefork",
         "-n", f"w{i}@bench", "--without-gossip", "--without-mingle", "--without-heartbeat",
         "-l", "WARNING"], cwd=str(ROOT), env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL) for i in range(3)]
    total = 3 * THROUGHPUT_TASKS
    script = f"""
import os, sys, time, collections
sys.path.insert(0, {str(ROOT)!r})
from bench.celery_app import echo
for r in [echo.delay(-1) for _ in range(30)]:  # every worker is up
    r.get(timeout=120)
rates = []
for _ in range(2):
    t0 = time.perf_counter()
    window = collections.deque()
    sent = 0
    while sent < {total} or window:
        while sent < {total} and len(window) < 768:
            window.append(echo.delay({{"n": sent}}))
            sent += 1
        window.popleft().get(timeout=120)
    rates.append(round({total} / (time.perf_counter() - t0)))
print(rates)
"""
    try:
        out = subprocess.run([PY, "-c", script], env=env, capture_output=True, text=True,
                             timeout=900, check=True).stdout
        rates = json.loads(out.strip().splitlines()[-1])
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
    return {"tasks_per_s": max(rates), "runs": rates, "version": _celery_version()}


def _celery_version() -> str:
    import celery as c
    return str(c.__version__)


def takeover(base: Path, redis: Redis) -> dict[str, Any]:
    sleeper = (f'\n[agents.sleepy]\ncommand = ["{PY}", "{MISBEHAVE}"]\n'
               f'env = {{ PYTHONPATH = "{ROOT}" }}\nretries = 1\n')
    times: list[float] = []
    ds = {n: node(base, n, sleeper if n != "a" else "", redis) for n in ("a", "b", "c")}
    for d in ds.values():
        d.start()
    try:
        ca = Client(ds["a"].sock)
        wait_alive(ca, len(ds))
        for run in range(TAKEOVERS):
            accepted = ca.call("tasks.submit", {"agent": "sleepy",
                                             "input": {"do": "sleep", "seconds": 8}})
            tid = accepted["task_id"]
            while True:
                info = ca.call("tasks.get", {"task_id": tid})
                if info["attempts"]:
                    break
                time.sleep(0.01)
            victim = info["attempts"][0]["node"]
            d = ds[victim]
            assert d.proc is not None
            workers = psutil.Process(d.proc.pid).children(recursive=True)
            t0 = time.perf_counter()
            d.proc.send_signal(signal.SIGKILL)
            for w in workers:
                w.kill()
            while True:
                info = ca.call("tasks.get", {"task_id": tid})
                if len(info["attempts"]) > 1:
                    break
                assert time.perf_counter() - t0 < 30, info
                time.sleep(0.005)
            times.append(time.perf_counter() - t0)
            assert info["attempts"][1]["node"] != victim, info
            done = ca.call("tasks.get", {"task_id": tid, "wait": True})
            assert done["status"] == "succeeded", done
            # the victim comes back (a new incarnation) for the next round
            d.proc.wait(10)
            d.notify.close()
            d.notify_path.unlink()
            ds[victim] = node(base, victim, sleeper, redis)
            ds[victim].start()
            print(f"takeover {run + 1}: {times[-1]:.3f} s", flush=True)
            wait_alive(ca, len(ds))  # the victim's new incarnation has joined
        ca.close()
    finally:
        for d in ds.values():
            d.stop()
    return {"seconds": [round(t, 3) for t in times], "median_s": round(
        statistics.median(times), 3), "node_ttl": 3.0, "beat": 1.0,
            "target_s": 3.0 + 1.5}


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="corral-bench-cluster-"))
    results: dict[str, Any] = {"load_1min_before": psutil.getloadavg()[0]}
    try:
        for name, part in (("latency", latency), ("throughput", throughput),
                           ("celery", celery), ("takeover", takeover)):
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
    report("cluster", results)


if __name__ == "__main__":
    main()
