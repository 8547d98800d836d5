"""Durable agent work (issue 39): the cost per step of the step journal.

    .venv/bin/python -m bench.bench_steps [--quick] [--floor-only] [--cluster-only]

The real daemon in this process (its SQLite state database, `journal_sync` normal, then
full), an SDK worker (bench/steps_agent.py) and a stdio MCP server (bench/min_mcp_server.py).
Per step, medians of ROUNDS tasks, measured in the worker around its loop, the kinds
of task alternated round by round, each after an untimed task of its own on the same
agent (a warm worker: the `die` runs restart the durable agent's):

- tool call, live, not journaled (`retries = 0`: no later attempt could read it)
- tool call, live and journaled (`retries = 1`): the commit before the answer
- tool call answered from the journal (the retry of a task whose first attempt made them)
- `ctx.step` journaled (step/put, committed), and answered from the journal (step/get)

The overhead of journaling is the second less the first; `commit_us` is the daemon's side
of it alone (each journaled step's put to its commit, medians: Timed), apart from the
worker's and the MCP server's round trips, which a shared machine makes noisy. DBOS,
Restate and Temporal are not run here (not installed from PyPI in this environment;
docs/durable.md gives the anchors measured in issue 39)."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def config(state: Path, sync: str) -> str:
    agent = ROOT / "bench" / "steps_agent.py"
    server = ROOT / "bench" / "min_mcp_server.py"
    return textwrap.dedent(f"""
        [supervisor]
        socket = "{state}/corral.sock"
        state_dir = "{state}/state"
        log_dir = "{state}/logs"
        journal_sync = "{sync}"
        drain_timeout = 0

        [agents.plain]
        command = ["{PY}", "{agent}"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tools = ["fast__*"]
        max_tool_calls_per_task = 1000
        backoff_initial = 0.01

        [agents.durable]
        command = ["{PY}", "{agent}"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tools = ["fast__*"]
        max_tool_calls_per_task = 1000
        retries = 1
        backoff_initial = 0.01
        backoff_max = 0.05
        max_restarts = 1000

        [mcp_servers.fast]
        command = ["{PY}", "{server}"]
    """)


class Timed:
    """The daemon's step journal, timed from each put to its committed() returning: what
    a journaled step adds on the daemon's side, apart from the worker's and the MCP
    server's round trips (which a shared machine makes noisy)."""

    def __init__(self, journal: Any) -> None:
        self.journal = journal
        self.began = 0.0
        self.took: list[float] = []

    def put(self, step: Any) -> None:
        self.began = time.perf_counter()
        self.journal.put(step)

    def drop_from(self, task_id: str, seq: int) -> None:
        self.journal.drop_from(task_id, seq)

    async def committed(self, task_id: str | None = None) -> None:
        if task_id is None:  # (as an engine before the cluster's steps asks)
            await self.journal.committed()
        else:
            await self.journal.committed(task_id)
        if self.began:
            self.took.append(time.perf_counter() - self.began)
            self.began = 0.0

    async def history(self, task_id: str) -> Any:
        return await self.journal.history(task_id)

    def ended(self, task_id: str) -> None:
        self.journal.ended(task_id)

    def median_us(self) -> float:
        took, self.took = self.took, []
        return statistics.median(took) * 1e6 if took else 0.0


class TimedPut:
    """The engine's whole side of a `step/put` (TaskSteps.put: the budget, the encoding,
    the journal's put and commit), per agent: what a journaled ctx.step costs the daemon
    beyond an unjournaled one's, with none of the round trip's noise."""

    def __init__(self, steps: Any) -> None:
        self.put = steps.put
        self.took: dict[str, list[float]] = {}

    async def __call__(self, task: Any, r: Any, name: str, result: Any) -> Any:
        t0 = time.perf_counter()
        out = await self.put(task, r, name, result)
        self.took.setdefault(task.agent, []).append(time.perf_counter() - t0)
        return out

    def median_us(self, agent: str) -> float:
        took = self.took.pop(agent, [])
        return statistics.median(took) * 1e6 if took else 0.0


async def per_step(sup: Any, agent: str, task: dict[str, Any]) -> float:
    """µs per step of one task's last attempt."""
    from corral.taskoptions import TaskOptions

    res = await sup.tasks.run(agent, task, TaskOptions(timeout=120))
    assert res.status == "succeeded", res.error
    return float(res.output["seconds"]) / task["calls"] * 1e6


async def alternated(sup: Any, runs: dict[str, tuple[str, dict[str, Any]]],
                     rounds: int) -> dict[str, float]:
    """Median µs per step of each run, the runs alternated round by round (the machine is
    shared: a load that comes and goes falls on all of them alike)."""
    xs: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for key, (agent, task) in runs.items():
            # a warm worker for each: a `die` run before it restarted the agent's, and a
            # new process's first steps (its caches cold) cost it, not the journal
            await per_step(sup, agent, {k: v for k, v in task.items() if k != "die"})
            xs[key].append(await per_step(sup, agent, task))
    return {k: statistics.median(v) for k, v in xs.items()}


async def one_sync(sync: str, sizes: list[int], rounds: int) -> dict[str, Any]:
    from corral.daemon.daemon import Daemon
    from corral.supervisor import State

    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-steps-"))
    try:
        (tmp / "corral.toml").write_text(config(tmp, sync))
        d = Daemon(tmp / "corral.toml")
        run = asyncio.ensure_future(d.run())
        await d.set_up.wait()
        sup = d.sup
        timed = Timed(sup.tasks.steps.journal)
        sup.tasks.steps.journal_to(timed)
        puts = sup.tasks.steps.put = TimedPut(sup.tasks.steps)
        for name in ("plain", "durable"):
            await sup.wait_state(name, State.READY, timeout=30)
        out: dict[str, Any] = {}
        for n in sizes:
            tool, step = {"calls": n}, {"calls": n, "mode": "step"}
            await per_step(sup, "plain", tool)  # warm: the MCP server's instance
            row = await alternated(sup, {
                "tool_live_us": ("plain", tool),
                "tool_journaled_us": ("durable", tool),
                "tool_replayed_us": ("durable", {**tool, "die": True}),
                "step_plain_us": ("plain", step),
                "step_journaled_us": ("durable", step),
                "step_replayed_us": ("durable", {**step, "die": True}),
            }, rounds)
            row["commit_us"] = timed.median_us()  # the daemon's side, every journaled step
            # step/put's handler, journaled less not (the plain agent's journal nothing)
            row["put_handler_journaled_us"] = puts.median_us("durable")
            row["put_handler_plain_us"] = puts.median_us("plain")
            row["journal_overhead_us"] = row["tool_journaled_us"] - row["tool_live_us"]
            out[str(n)] = {k: round(v, 1) for k, v in row.items()}
            print(sync, n, out[str(n)], flush=True)
        db = tmp / "state" / "corral.db"
        out["db_bytes"] = db.stat().st_size + (tmp / "state" / "corral.db-wal").stat().st_size
        d.request_stop()
        await asyncio.wait_for(run, 30)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def per_step_us(sync: str = "normal", sizes: tuple[int, ...] = (20, 200),
                rounds: int = 3) -> dict[str, dict[str, float]]:
    """corral's side for a side-by-side bench (bench_peers_*): µs per step, by steps per
    task ("20", "200"), of each kind of task (`tool_live_us`, `tool_journaled_us`,
    `tool_replayed_us`, `step_plain_us`, `step_journaled_us`, `step_replayed_us`), the
    daemon's side (`commit_us`) and `journal_overhead_us`; a daemon of its own, in this
    process, in a loop of its own."""
    out = asyncio.run(one_sync(sync, list(sizes), rounds))
    return {k: v for k, v in out.items() if isinstance(v, dict)}


async def floor(sync: str, n: int = 2000) -> dict[str, float]:
    """The journal alone, no process: µs per step put and awaited committed (what a
    journaled tool call adds on the daemon's loop; the median of `n`, a loop turn between
    two as between a worker's calls), and per history read of the task's steps (what a
    retry pays once)."""
    from corral.daemon.steps import StepsDB
    from corral.daemon.storeschema import open_database
    from corral.daemon.storewriter import WriterThread
    from corral.supervisor.tasks.stepjournal import Step
    from corral.supervisor.tasks.steps import args_hash

    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-floor-"))
    try:
        db = open_database(tmp / "corral.db", sync=sync)
        db.close()
        writer = WriterThread(tmp / "corral.db", sync=sync)
        steps = StepsDB(tmp / "corral.db", writer, sync=sync)
        body = json.dumps({"content": [{"type": "text", "text": "x" * 200}]}).encode()
        xs = []
        for i in range(n):
            await asyncio.sleep(0)  # a turn between steps, as a worker's calls have
            t0 = time.perf_counter()
            steps.put(Step("t", i + 1, "s__tool", 1, args_hash({"i": i}), body))
            await steps.committed()
            xs.append(time.perf_counter() - t0)
        put_us = statistics.median(xs) * 1e6
        t0 = time.perf_counter()
        reads = 50
        for _ in range(reads):
            await steps.history("t")
        history_ms = (time.perf_counter() - t0) / reads * 1e3
        await steps.close()
        await writer.close()
        return {"put_committed_us": round(put_us, 1), "raw_commit_us": raw_commit(tmp, sync),
                "history_2000_steps_ms": round(history_ms, 2)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def cluster_floor(port: int, n: int = 2000) -> dict[str, float]:
    """A cluster task's steps alone (corral.cluster.steps, a redis-server of the bench's
    own on this host: AOF, everysec): µs per step put and awaited committed (the STEP
    script through the fence, signed with a cluster key), and a bare PING beside it."""
    import os

    from corral.cluster import records
    from corral.cluster.connection import connect
    from corral.cluster.keys import Keys
    from corral.cluster.queue import ClusterTask
    from corral.cluster.scripts import Scripts
    from corral.cluster.steps import ClusterSteps
    from corral.cluster.trust import Trust
    from corral.supervisor.config import ClusterSettings
    from corral.supervisor.tasks.stepjournal import Step
    from corral.supervisor.tasks.steps import args_hash

    client = connect(ClusterSettings(redis=f"redis://127.0.0.1:{port}/0", name="b",
                                     node="n"), "n")
    keys, s = Keys("b"), Scripts(client)
    tid = "0190a5c0-0000-7000-8000-000000000001"
    await s.submit(keys=[keys.task(tid), keys.stream("acme", "w", 0), keys.priorities("acme", "w"),
                         keys.agents, keys.live],
                   args=[tid, "w", b"{}", 0, "", "", "1.0", "n", 0, "0", "", "", "", "acme", "mac"])
    entry = await client.hget(keys.task(tid), "entry")
    await client.set(keys.alive("n/1"), b"{}")  # a claim is a live incarnation's
    # read and claimed as a node's puller does (scripts.READ_CLAIM): its token, 4th
    [(_, [(_, _, _, token, *_)], *_)] = await s.run([(
        s.read_claim, [keys.fence, keys.stream("acme", "w", 0)],
        ["n/1", "n", "2.0", records.claimed_attempt("n", 2.0), 2, "30.0", 1, keys.prefix,
         1, "acme"])])
    task = ClusterTask(tid, "w", msgspec.Raw(b"{}"), 0, 30.0, 1, 1.0, token=int(token),
                       base=0, entry=entry.decode(), stream=keys.stream("acme", "w", 0),
                       consumer="n/1")
    steps = ClusterSteps(s, keys, Trust(os.urandom(32), "b", print),
                         {tid: task}.get)
    body = json.dumps({"content": [{"type": "text", "text": "x" * 200}]}).encode()
    xs, pings = [], []
    for i in range(n):
        t0 = time.perf_counter()
        steps.put(Step(tid, i + 1, "s__tool", 1, args_hash({"i": i}), body))
        await steps.committed(tid)
        xs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await client.ping()
        pings.append(time.perf_counter() - t0)
    await client.aclose()
    return {"put_committed_us": round(statistics.median(xs) * 1e6, 1),
            "ping_us": round(statistics.median(pings) * 1e6, 1)}


def raw_commit(tmp: Path, sync: str, n: int = 500) -> float:
    """The floor beside it, at the same load: median µs of a bare SQLite WAL transaction
    of two rows (a result and its step) and its commit, in a loop, no corral."""
    import sqlite3

    db = sqlite3.connect(tmp / "raw.db", isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {sync}")
    db.execute("CREATE TABLE r (hash BLOB PRIMARY KEY, body BLOB)")
    db.execute("CREATE TABLE s (task TEXT, seq INT, result BLOB, PRIMARY KEY (task, seq))")
    xs = []
    for i in range(n):
        t0 = time.perf_counter()
        db.execute("BEGIN")
        db.execute("INSERT INTO r VALUES (?, ?)", (i.to_bytes(16, "big"), b"x" * 250))
        db.execute("INSERT INTO s VALUES ('t', ?, ?)", (i, i.to_bytes(16, "big")))
        db.execute("COMMIT")
        xs.append(time.perf_counter() - t0)
    db.close()
    return round(statistics.median(xs) * 1e6, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--floor-only", action="store_true")
    ap.add_argument("--cluster-only", action="store_true")
    args = ap.parse_args()
    if args.cluster_only:
        from .bench_cluster import Redis
        with tempfile.TemporaryDirectory() as d:
            redis = Redis(Path(d))
            try:
                print(json.dumps({"cluster": asyncio.run(cluster_floor(redis.port))}))
            finally:
                redis.stop()
        return
    rounds = 3 if args.quick else 7
    sizes = [20, 200]
    try:
        import uvloop
        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    results: dict[str, Any] = {
        f"floor_{sync}": runner(floor(sync)) for sync in ("normal", "full")}
    print(results, flush=True)
    if not args.floor_only:
        results.update({sync: runner(one_sync(sync, sizes, rounds))
                        for sync in ("normal", "full")})
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
