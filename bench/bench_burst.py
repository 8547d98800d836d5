"""Issue 38, item 3: a burst on an idle cluster, submission to start, beside Celery.

    .venv/bin/python -m bench.bench_burst [--bursts 1,10,100,1000] [--rounds R]
        [--idle S] [--no-celery] [--floor]

corral: a redis-server of the bench's own (bench_cluster's), two nodes `a` and `b`, each
running the echo agent (2 replicas, `max_concurrent_tasks = 512`: every task of a burst
has a free slot). Each round waits `--idle` seconds (more than a beat: both nodes' pull
loops are blocked in their read, the cluster idle), then submits a burst of N detached
tasks on node a (`tasks.submit`, pipelined on one socket), waits for all, and
takes each task's submission to start (`queue_wait`: its first attempt's start less its
creation, both wall clocks of this host). The first burst after the nodes start is
reported apart ("fresh": no task was ever submitted to the agent).

Each burst size also reports its waits by the node that ran each task and to the claim
(the record's `started`: the claim's time, at the submitter for a task it claimed as it
submitted it), and both daemons' CPU a task. `--floor` first measures what a node cannot
go below on this host: one EVALSHA's round trip from redis-py's asyncio client, the
submit-and-claim script alone and pipelined, its client CPU and Redis's time a call.

Celery 5.7 with its Redis broker and result backend on a redis-server of the same
configuration: two workers (`-P threads -c 512`: a free slot for each task of a burst,
as corral's), a task that returns the time it started; a burst of N `apply_async`
carrying their submission time, from one producer. Submission to start is the same
difference of wall clocks.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil

from .bench_cluster import ECHO, Client, Redis, node, wait_alive
from .harness import ENV, PY, ROOT, corral_agents, report

ARGS = sys.argv[1:]


def arg(name: str, default: str) -> str:
    return ARGS[ARGS.index(name) + 1] if name in ARGS else default


BURSTS = [int(x) for x in arg("--bursts", "1,10,100,1000").split(",")]
ROUNDS = int(arg("--rounds", "5"))
IDLE = float(arg("--idle", "1.5"))
SLOTS = 512


def stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"p50_ms": round(statistics.median(xs) * 1e3, 3),
            "p99_ms": round(xs[min(len(xs) - 1, int(0.99 * len(xs)))] * 1e3, 3),
            "max_ms": round(xs[-1] * 1e3, 3), "n": len(xs)}


BY_NODE: dict[str, list[float]] = {}  # this burst size's waits, by the node that ran each


def burst(path: Path, n: int) -> list[float]:
    """N detached echo tasks submitted on one socket, pipelined; each one's submission
    to start (s), once all have finished (and in BY_NODE, by the node that ran it)."""
    enc = msgspec.json.Encoder()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.sendall(b"".join(enc.encode({
            "jsonrpc": "2.0", "id": i, "method": "tasks.submit",
            "params": {"agent": "echo", "input": {"n": i}}}) + b"\n"
            for i in range(n)))
        f = sock.makefile("rb")
        ids: dict[int, str] = {}
        while len(ids) < n:
            msg = msgspec.json.decode(f.readline())
            if "id" in msg and "result" in msg:
                ids[msg["id"]] = msg["result"]["task_id"]
            elif "error" in msg:
                raise RuntimeError(msg["error"])
    c = Client(path)
    try:
        out = []
        for tid in ids.values():
            info = c.call("tasks.get", {"task_id": tid, "wait": True})
            assert info["status"] == "succeeded", info
            first = info["attempts"][0]
            out.append(first["started"] - info["created"])
            BY_NODE.setdefault(first.get("node", "?"), []).append(out[-1])
            # the record's `started` is the first claim's time: submission to claim
            BY_NODE.setdefault("claimed", []).append(info["started"] - info["created"])
        return out
    finally:
        c.close()


def daemons_cpu(ds: list[Any]) -> float:
    """CPU seconds the daemons' processes (not their workers) have used."""
    total = 0.0
    for d in ds:
        t = psutil.Process(d.proc.pid).cpu_times()
        total += t.user + t.system
    return total


def floor(base: Path) -> dict[str, Any]:
    """What one node cannot go below, measured on this host: the round trip of one
    EVALSHA from redis-py's asyncio client (the node's), of SUBMIT_CLAIM alone and
    pipelined as a burst's submits are, the client's CPU a call (redis-py's packing and
    parsing, on the node's loop) and Redis's own time a call (INFO commandstats)."""
    import asyncio

    from corral.cluster.connection import connect
    from corral.cluster.keys import Keys
    from corral.cluster.scripts import Scripts
    from corral.supervisor.config import ClusterSettings

    redis = Redis(base / "redis-floor")
    k = Keys("floor")

    async def run() -> dict[str, Any]:
        c = connect(ClusterSettings(redis=f"redis://127.0.0.1:{redis.port}/0",
                                    name="floor", node="f"), "f")
        s = Scripts(c)
        nop = c.register_script("return 1")
        seq = iter(range(10**9))

        def call() -> Any:
            i = next(seq)
            tid = f"0190a5c0-0000-7000-8000-{i:012d}"
            # SUBMIT's last four (options, lineage, tenant, the tenant's signature) close both
            return (s.submit_claim, [k.task(tid), k.stream("t", "w", 0),
                                     k.priorities("t", "w"), k.agents, k.live, k.fence],
                    [tid, "w", b'{"n":1}', 0, "", "", repr(time.time()), "f", 0, "0", "",
                     "f/1", "f", repr(time.time()), b'{"replica":-1}', 0, "30.0",
                     k.prefix, b"", "", "t", ""])

        def plain() -> Any:
            _script, keys, args = call()
            return (s.submit, keys[:5], args[:11] + args[-4:])

        await s.run([(nop, [], [])])
        await s.run([call()])
        out: dict[str, Any] = {}
        for name, make, size in (("evalsha_return_1", lambda: (nop, [], []), 1),
                                 ("submit_x100", plain, 100),
                                 ("submit_claim", call, 1), ("submit_claim_x10", call, 10),
                                 ("submit_claim_x100", call, 100)):
            await c.config_resetstat()
            rtts, cpu0 = [], time.process_time()
            for _ in range(max(20, 2000 // size)):
                calls = [make() for _ in range(size)]
                t0 = time.perf_counter()
                await s.run(calls)
                rtts.append(time.perf_counter() - t0)
            cpu = time.process_time() - cpu0
            info = await c.info("commandstats")
            ev = info.get("cmdstat_evalsha", {})
            out[name] = {**stats(rtts), "client_cpu_us_a_call":
                         round(cpu / (len(rtts) * size) * 1e6, 1),
                         "redis_us_a_call": ev.get("usec_per_call")}
            print(f"floor {name}: {out[name]}", flush=True)
        await c.aclose()
        return out

    try:
        return asyncio.run(run())
    finally:
        redis.stop()


def corral(base: Path) -> dict[str, Any]:
    redis = Redis(base / "redis")
    echo = corral_agents(2, [PY, str(ECHO)], "echo", f"max_concurrent_tasks = {SLOTS}\n"
                                                     "max_queue = 100000\n")
    ds = [node(base, n, echo, redis) for n in ("a", "b")]
    out: dict[str, Any] = {}
    try:
        for d in ds:
            d.start()
        c = Client(ds[0].sock)
        wait_alive(c, 2)
        c.close()
        time.sleep(IDLE)
        out["fresh_6"] = stats(burst(ds[0].sock, 6))
        for n in BURSTS:
            xs: list[float] = []
            BY_NODE.clear()
            cpu = 0.0
            for _ in range(ROUNDS):
                time.sleep(IDLE)
                before = daemons_cpu(ds)
                xs += burst(ds[0].sock, n)
                cpu += daemons_cpu(ds) - before
            out[str(n)] = {**stats(xs), "by_node": {k: stats(v) for k, v in
                                                    sorted(BY_NODE.items())},
                           # both daemons' CPU (their loops: not the workers') a task,
                           # from its submission to its outcome's write and the reads
                           # of the bench's client
                           "daemons_cpu_us_a_task": round(cpu / len(xs) * 1e6, 1)}
            print(f"corral burst {n}: {out[str(n)]}; load {os.getloadavg()[0]:.1f}",
                  flush=True)
    finally:
        for d in ds:
            d.stop()
        redis.stop()
    return out


CELERY = """
import json, sys, time
sys.path.insert(0, {root!r})
from bench.celery_app import started
for r in [started.delay(0) for _ in range(20)]:  # every worker is up
    r.get(timeout=120)
out = {{}}
for n in {bursts!r}:
    xs = []
    for _ in range({rounds}):
        time.sleep({idle})
        rs = [started.delay(time.time()) for _ in range(n)]
        xs += [r.get(timeout=120) for r in rs]
    out[str(n)] = xs
print(json.dumps(out))
"""


def celery(base: Path) -> dict[str, Any] | None:
    try:
        import celery as c
    except ImportError:
        return None  # `pip install -e '.[bench]'`
    redis = Redis(base / "redis-celery")
    env = {**ENV, "CELERY_BROKER": f"redis://127.0.0.1:{redis.port}/1",
           "CELERY_BACKEND": f"redis://127.0.0.1:{redis.port}/2"}
    workers = [subprocess.Popen(
        [PY, "-m", "celery", "-A", "bench.celery_app", "worker", "-c", str(SLOTS), "-P",
         "threads", "-n", f"w{i}@bench", "--without-gossip", "--without-mingle",
         "--without-heartbeat", "-l", "WARNING"], cwd=str(ROOT), env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
    try:
        script = CELERY.format(root=str(ROOT), bursts=BURSTS, rounds=ROUNDS, idle=IDLE)
        got = json.loads(subprocess.run([PY, "-c", script], env=env, capture_output=True,
                                        text=True, timeout=1800, check=True
                                        ).stdout.strip().splitlines()[-1])
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
        redis.stop()
    out: dict[str, Any] = {"version": c.__version__}
    for n, xs in got.items():
        out[n] = stats(xs)
        print(f"celery burst {n}: {out[n]}", flush=True)
    return out


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="corral-bench-burst-"))
    results: dict[str, Any] = {"load_1min_before": os.getloadavg()[0], "bursts": BURSTS,
                               "rounds": ROUNDS, "idle_s": IDLE, "slots": SLOTS}
    try:
        (base / "redis").mkdir()
        (base / "redis-celery").mkdir()
        (base / "redis-floor").mkdir()
        if "--floor" in ARGS:
            results["floor"] = floor(base)
        results["corral"] = corral(base)
        if "--no-celery" not in ARGS:
            results["celery"] = celery(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    results["load_1min_after"] = os.getloadavg()[0]
    report("burst", results)


if __name__ == "__main__":
    main()
