"""A task's live output end to end against a direct pipe (issue 55: "streamed output adds
<= 0.2 ms per chunk end to end over a direct pipe at 1,000 chunks/s").

Both sides send the same chunks at the same pace, each carrying the sender's
CLOCK_MONOTONIC time, and the reader takes each chunk's latency as its own clock's time
at receipt less that one (one clock for every process of the machine):

- pipe: a Python child writes each chunk as a line to a pipe the bench reads;
- corral: an SDK agent of a real `corral daemon` sends each with `ctx.emit`; the bench
  follows the task on the control socket (`tasks.stream`, as `corral run --stream` does).
  The chunk goes worker -> daemon (decoded, numbered, put in the output journal and its
  tail) -> the follower's notification.

The first WARMUP chunks of each are left out. Also the daemon's CPU time per chunk.

With --cluster, the same task is a cluster task of node a on a redis-server of the bench's
(its chunks kept in Redis, each batch one fenced script, signed with a cluster key:
corral/cluster/clusteroutput.py), followed at a (where it runs) and at b (another node,
following the stream in Redis); the nodes' and redis-server's CPU per chunk beside.

    .venv/bin/python -m bench.bench_stream [--chunks 5000] [--rate 1000] [--size 64]
        [--cluster]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil

from corral.cli.client import Client

from .harness import PY, CorralDaemon, report, workdir

ROOT = Path(__file__).resolve().parent.parent
WARMUP = 200

PACED = """
def paced(n, rate, size, send):
    import time
    pad = "x" * max(0, size - 24)
    start = time.monotonic()
    for i in range(n):
        due = start + i / rate
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        send(f"{time.monotonic_ns()} {pad}")
"""

PIPE = PACED + """
import sys
out = sys.stdout
def send(chunk):
    out.write(chunk + "\\n")
    out.flush()
paced(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), send)
"""

AGENT = PACED + """
from corral.worker import run

def handle(task, ctx):
    paced(task["n"], task["rate"], task["size"], ctx.emit)
    return {"sent": task["n"]}

run(handle)
"""


def percentiles(ms: list[float]) -> dict[str, float]:
    s = sorted(ms[WARMUP:])
    return {"p50_ms": round(s[len(s) // 2], 3), "p90_ms": round(s[int(len(s) * 0.9)], 3),
            "p99_ms": round(s[int(len(s) * 0.99)], 3), "max_ms": round(s[-1], 3),
            "chunks": len(s)}


def over_pipe(n: int, rate: float, size: int) -> list[float]:
    proc = subprocess.Popen([PY, "-c", PIPE, str(n), str(rate), str(size)],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    got = []
    for line in proc.stdout:
        got.append((time.monotonic_ns() - int(line.split(b" ", 1)[0])) / 1e6)
    proc.wait()
    return got


def streamer(d: Path) -> str:
    script = d / "streamer.py"
    script.write_text(AGENT)
    return textwrap.dedent(f"""
        [agents.streamer]
        command = ["{PY}", "{script}"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        task_timeout = 600
    """)


def cpu_of(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def streamed(submit: CorralDaemon, reader: CorralDaemon, n: int, rate: float, size: int,
             pids: list[int]) -> tuple[list[float], list[float]]:
    """The chunks' latencies followed at `reader`, and each of `pids`' CPU µs a chunk."""
    got: list[float] = []

    def took(method: str, params: Any) -> None:
        if method == "tasks.output":
            got.append((time.monotonic_ns() - int(params["data"].split(" ", 1)[0])) / 1e6)

    with Client(submit.sock, timeout=None) as client:
        accepted = client.call("tasks.submit", {"agent": "streamer", "input": {
            "n": n, "rate": rate, "size": size}})
    before = [cpu_of(pid) for pid in pids]
    with Client(reader.sock, timeout=None) as client:
        info = client.call("tasks.stream", {"task_id": accepted["task_id"]}, took)
    spent = [(cpu_of(pid) - b) / n * 1e6 for pid, b in zip(pids, before, strict=True)]
    assert info["status"] == "succeeded", info
    assert len(got) == n, (len(got), n)
    return got, spent


def over_corral(d: Path, n: int, rate: float, size: int) -> tuple[list[float], float]:
    c = CorralDaemon(d, streamer(d))
    c.start()
    try:
        assert c.proc is not None
        got, [per_chunk] = streamed(c, c, n, rate, size, [c.proc.pid])
        return got, per_chunk
    finally:
        c.stop()


def over_cluster(d: Path, n: int, rate: float, size: int) -> dict[str, Any]:
    """Node a runs the task (b has no agent); its stream followed at a, then at b."""
    from .bench_cluster import Redis, cluster

    (d / "redis").mkdir()
    redis = Redis(d / "redis")
    key = d / "cluster.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    signed = f'key_file = "{key}"\n'
    nodes: list[CorralDaemon] = []
    try:
        for name, agents in (("a", streamer(d)), ("b", "")):
            (d / name).mkdir()
            table = cluster(redis, name).replace("insecure = true\n", signed)
            nodes.append(CorralDaemon(d / name, agents + table))
            nodes[-1].start()
        a, b = nodes
        assert a.proc is not None and b.proc is not None
        pids = [a.proc.pid, b.proc.pid, redis.proc.pid]
        out: dict[str, Any] = {}
        for where, reader in (("at_its_node", a), ("at_another_node", b)):
            got, (cpu_a, cpu_b, cpu_redis) = streamed(a, reader, n, rate, size, pids)
            out[where] = {**percentiles(got), "node_a_cpu_us_per_chunk": round(cpu_a, 1),
                          "node_b_cpu_us_per_chunk": round(cpu_b, 1),
                          "redis_cpu_us_per_chunk": round(cpu_redis, 1)}
        return out
    finally:
        for node in nodes:
            node.stop()
        redis.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=5000)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--size", type=int, default=64, help="bytes of each chunk")
    ap.add_argument("--cluster", action="store_true",
                    help="also a cluster task's, its chunks in Redis")
    args = ap.parse_args()
    d = workdir("stream")
    try:
        if args.cluster:
            report("stream_cluster", {
                "chunks": args.chunks, "rate": args.rate, "size": args.size,
                **over_cluster(d, args.chunks, args.rate, args.size),
                "load": [round(x, 2) for x in os.getloadavg()]})
        pipe = percentiles(over_pipe(args.chunks, args.rate, args.size))
        ms, cpu_us = over_corral(d, args.chunks, args.rate, args.size)
        corral = percentiles(ms)
        report("stream", {
            "chunks": args.chunks, "rate": args.rate, "size": args.size,
            "load": [round(x, 2) for x in os.getloadavg()],
            "pipe": pipe, "corral": corral,
            "added_p50_ms": round(corral["p50_ms"] - pipe["p50_ms"], 3),
            "added_p99_ms": round(corral["p99_ms"] - pipe["p99_ms"], 3),
            "daemon_cpu_us_per_chunk": round(cpu_us, 1)})
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
