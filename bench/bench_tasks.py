"""Issue 4 (tasks) benchmarks, side by side in one run.

    .venv/bin/python -m bench.bench_tasks [--quick]

1. echo round trip through the supervisor to one worker, beside a raw round trip over a
   pipe to a minimal Python echo process (same event loop, same interpreter)
2. pipelined throughput through the Python API (1 and 2 replicas)
3. the same through the control socket with one persistent client
4. `corral run` as a process
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import sys
import time

import msgspec
import uvloop

from corral.supervisor import AgentSpec, State, Supervisor
from corral.supervisor.lifecycle import SERVING

from .harness import (
    BIN,
    ENV,
    PY,
    ROOT,
    CorralDaemon,
    cleanup,
    corral_agents,
    pipelined_tasks,
    report,
    workdir,
)

QUICK = "--quick" in sys.argv
N = 1000 if QUICK else 5000
TP = 5000 if QUICK else 30000
ECHO = ROOT / "bench" / "echo_agent.py"
RAW_ECHO = ("import sys\nr, w = sys.stdin.buffer, sys.stdout.buffer\n"
            "for line in r:\n    w.write(line)\n    w.flush()\n")


async def raw_pipe() -> list[float]:
    p = await asyncio.create_subprocess_exec(PY, "-c", RAW_ECHO, stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE)
    assert p.stdin and p.stdout
    line = msgspec.json.encode({"jsonrpc": "2.0", "id": 1, "method": "task/run",
                                "params": {"task_id": "t", "input": {"n": 1}}}) + b"\n"
    out = []
    for _ in range(N):
        t0 = time.perf_counter()
        p.stdin.write(line)
        await p.stdout.readline()
        out.append(time.perf_counter() - t0)
    p.stdin.close()
    await p.wait()
    return out


async def corral_api() -> dict[str, float]:
    res: dict[str, float] = {}
    async with Supervisor() as sup:
        sup.add(AgentSpec(name="echo", command=[PY, str(ECHO)], env={"PYTHONPATH": str(ROOT)},
                          max_concurrent_tasks=64, max_queue=1_000_000))
        await sup.wait_state("echo", State.READY)
        lat = []
        for i in range(N):
            t0 = time.perf_counter()
            r = await sup.tasks.run("echo", {"n": i})
            lat.append(time.perf_counter() - t0)
            assert r.status == "succeeded"
        res["latency_median_us"] = statistics.median(lat) * 1e6
        for replicas in (1, 2):
            await sup.scale("echo", replicas)
            for i in range(replicas):
                await sup.wait_state("echo", SERVING, replica=i)
            t0 = time.perf_counter()
            results = await sup.tasks.map("echo", ({"n": i} for i in range(TP)),
                                          concurrency=256)
            dt = time.perf_counter() - t0
            assert all(r.status == "succeeded" for r in results)
            res[f"throughput_{replicas}_replica_per_s"] = TP / dt
    return res


def control_socket(sock_path: str) -> dict[str, float]:
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    f = s.makefile("rb")
    enc = msgspec.json.Encoder()
    lat = []
    for i in range(N // 2):
        req = enc.encode({"jsonrpc": "2.0", "id": i, "method": "tasks.run",
                          "params": {"agent": "echo", "input": {"n": i}}}) + b"\n"
        t0 = time.perf_counter()
        s.sendall(req)
        while b'"method"' in f.readline()[:40]:  # task.accepted comes before the reply
            pass
        lat.append(time.perf_counter() - t0)
    # pipelined: a window of 256 requests in flight
    rate = pipelined_tasks(s, TP // 3)
    s.close()
    return {"latency_median_us": statistics.median(lat) * 1e6, "throughput_per_s": rate}


def main() -> None:
    raw = uvloop.run(raw_pipe())
    api = uvloop.run(corral_api())
    d = workdir("tasks")
    c = CorralDaemon(d, corral_agents(2, [PY, str(ECHO)], name="echo",
                                      extra="max_concurrent_tasks = 64\nmax_queue = 1000000"))
    try:
        c.start()
        ctl = control_socket(str(c.sock))
        runs = []
        for i in range(10 if QUICK else 30):
            t0 = time.perf_counter()
            subprocess.run([str(BIN / "corral"), "--socket", str(c.sock), "run", "echo",
                            "--input", f'{{"n": {i}}}'], check=True, stdout=subprocess.DEVNULL,
                           env=ENV)
            runs.append(time.perf_counter() - t0)
    finally:
        c.stop()
        cleanup(d)
    raw_us = statistics.median(raw) * 1e6
    report("tasks", {
        "round_trip": {
            "raw_pipe_median_us": round(raw_us, 1),
            "corral_api_median_us": round(api["latency_median_us"], 1),
            "ratio": round(api["latency_median_us"] / raw_us, 2),
            "runs": N,
        },
        "throughput_api": {
            "one_replica_per_s": round(api["throughput_1_replica_per_s"]),
            "two_replicas_per_s": round(api["throughput_2_replica_per_s"]),
            "tasks": TP, "concurrency": 256,
        },
        "control_socket": {
            "latency_median_us": round(ctl["latency_median_us"], 1),
            "throughput_per_s": round(ctl["throughput_per_s"]),
        },
        "corral_run_process_ms": round(statistics.median(runs) * 1000, 1),
    })


if __name__ == "__main__":
    main()
