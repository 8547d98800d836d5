"""Workflows (issue 40) side by side with their anchors, in one run, on the same shapes.

    sh bench/peers/setup.sh                    # once: the peers, pinned, from the registries
    .venv/bin/python -m bench.bench_workflow_peers [--quick] [--only corral,celery,temporal,dbos]

The engines: corral (a daemon of its own, `[workflows.NAME]`; the no-op step is
bench/peers/corral_stamp.py, 4 replicas), Celery 5 (a chain, a chord; its Redis broker and
backend a redis-server of the bench's own; one worker of 4 processes), Temporal's dev
server (a workflow of activities; the worker in this process, 4 activities at a time) and
DBOS on SQLite (its chain only: a workflow of steps in this process). Measured:

- **per edge** of a chain of CHAIN no-op steps, each fed the output before it: every step
  appends the wall clock to the list it is given, so an edge is the time from one step's
  work to the next's (the end of a step, its journaling, the start of the next): p50 and
  p99 over every edge of ROUNDS chains, the engines alternated round by round;
- **a 1,000-item fan-out then a fan-in** (4 at a time; each item a no-op, so the whole
  wall time is overhead: the agents' own work is nil): the median wall time, and beside it
  the same 1,000 no-op tasks without the workflow (corral's tasks 4 in flight, Celery's
  group);
- **memory per pending child**: a fan-out of 10,000 children none of which can run (corral:
  a map with concurrency 10,000 to an agent whose one replica is held; Celery: a chord
  whose header goes to a queue no worker reads; Temporal: activities on a task queue no
  worker polls), the growth of the process that holds them (corral's daemon's RSS,
  redis-server's `used_memory`, the Temporal server's RSS) / 10,000.

Every server is a child of this process, killed by its pid at the end."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil

from .bench_cluster import Client, Redis
from .harness import ENV, PY, ROOT, CorralDaemon, pipelined_tasks, report, workdir
from .peers.servers import Missing, Temporal

CHAIN = 20
FAN = 1000
PENDING = 10_000


def corral_config() -> str:
    agent = ROOT / "bench" / "peers" / "corral_stamp.py"
    chain = "[workflows.chain]\n" + "".join(
        f'[[workflows.chain.steps]]\nname = "s{i}"\nagent = "stamp"\n' for i in range(CHAIN))
    return f"""
[agents.stamp]
command = ["{PY}", "{agent}"]
env = {{ PYTHONPATH = "{ROOT}" }}
replicas = 4
max_queue = 20000
start_timeout = 120

[agents.hold]
command = ["{PY}", "{agent}"]
env = {{ PYTHONPATH = "{ROOT}" }}
max_queue = 20000
start_timeout = 120

[workflows.fan]
[[workflows.fan.steps]]
name = "each"
agent = "stamp"
map = "$input.items"
concurrency = 4
[[workflows.fan.steps]]
name = "join"
agent = "stamp"
join = "each"

[workflows.pending]
[[workflows.pending.steps]]
name = "each"
agent = "hold"
map = "$input.items"
concurrency = 1000
""" + chain


def edges(stamps: list[float]) -> list[float]:
    assert len(stamps) == CHAIN, len(stamps)
    return [(b - a) * 1e3 for a, b in itertools.pairwise(stamps)]


class Engine:
    """One engine's three shapes; `chain()` answers the chain's stamps (wall clock, s),
    `fan()` the fan-out's wall time and its floor (s), `pending()` bytes per child."""

    name = ""

    async def chain(self) -> list[float]:
        raise NotImplementedError

    async def fan(self) -> tuple[float, float | None]:
        raise NotImplementedError

    async def pending(self) -> float | dict[str, float]:
        raise NotImplementedError

    def stop(self) -> None:
        pass


class Corral(Engine):
    name = "corral (workflows, journal_sync normal)"

    def __init__(self, d: Path) -> None:
        self.daemon = CorralDaemon(d, corral_config(), extra="drain_timeout = 0")
        self.daemon.start()
        self.client = Client(self.daemon.sock)
        self.floor_sock = socket.socket(socket.AF_UNIX)
        self.floor_sock.connect(str(self.daemon.sock))

    def run(self, name: str, inp: Any) -> dict[str, Any]:
        res: dict[str, Any] = self.client.call("workflows.run",
                                               {"name": name, "input": inp, "wait": 600})
        assert res["status"] == "succeeded", res.get("error")
        return res

    async def chain(self) -> list[float]:
        res = await asyncio.to_thread(self.run, "chain", {"t": []})
        return list(res["output"]["t"])

    async def fan(self) -> tuple[float, float | None]:
        def both() -> tuple[float, float]:
            t0 = time.perf_counter()
            self.run("fan", {"items": list(range(FAN))})
            wall = time.perf_counter() - t0
            rate = pipelined_tasks(self.floor_sock, FAN, window=4, params={"agent": "stamp"})
            return wall, FAN / rate
        return await asyncio.to_thread(both)

    async def pending(self) -> dict[str, float]:
        """Two shapes of 10,000 children: one run's map of 10,000 at the largest bound
        (1,000: the rest wait in the run, not yet tasks), and 10 runs of 1,000 each, every
        child a queued task. The agent's one replica is held by the first child."""
        proc = psutil.Process(self.daemon.proc.pid if self.daemon.proc else 0)

        def submitted(runs: list[str], count: int) -> None:
            deadline = time.monotonic() + 300
            while True:  # every child with its row (its task submitted)
                seen = sum(sum(s["item"] is not None for s in self.client.call(
                    "runs.get", {"run_id": r})["steps"]) for r in runs)
                if seen >= count:
                    return
                assert time.monotonic() < deadline, f"{seen} of {count} children submitted"
                time.sleep(1)

        def shape(n_runs: int, items: int, count: int) -> float:
            before = proc.memory_info().rss
            runs = [self.client.call("workflows.run", {"name": "pending", "input": {
                "items": ["block" if i == 0 else i for i in range(items)]}})["run_id"]
                    for _ in range(n_runs)]
            submitted(runs, count)
            time.sleep(1)
            grown = proc.memory_info().rss - before
            for r in runs:
                self.client.call("runs.cancel", {"run_id": r})
            return grown / PENDING

        def measure() -> dict[str, float]:
            return {"one map of 10,000 (1,000 at a time)": shape(1, PENDING, 1000),
                    "10 maps of 1,000 (all 10,000 queued tasks)": shape(10, 1000, PENDING)}
        return await asyncio.to_thread(measure)

    def stop(self) -> None:
        self.floor_sock.close()
        self.client.close()
        self.daemon.stop()


class Celery(Engine):
    name = "Celery 5.7 (chain, chord; Redis broker and backend)"

    def __init__(self, d: Path) -> None:
        import redis

        self.redis = Redis(d)
        url = f"redis://127.0.0.1:{self.redis.port}"
        env = {**ENV, "CELERY_BROKER": f"{url}/1", "CELERY_BACKEND": f"{url}/2"}
        os.environ.update(CELERY_BROKER=f"{url}/1", CELERY_BACKEND=f"{url}/2")
        from .peers import celery_flow

        self.flow = celery_flow
        celery_flow.app.conf.update(broker_url=f"{url}/1", result_backend=f"{url}/2")
        self.r = redis.Redis(port=self.redis.port)
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "bench.peers.celery_flow", "worker",
             "-Q", "flow", "-c", "4", "-P", "prefork", "--without-gossip",
             "--without-mingle", "--without-heartbeat", "-l", "warning"],
            env=env, stdout=(d / "celery.log").open("wb"), stderr=subprocess.STDOUT)
        celery_flow.noop.delay(1).get(timeout=120)  # the worker is up

    async def chain(self) -> list[float]:
        from celery import chain

        f = self.flow
        sig = chain(f.stamp.s([]), *[f.stamp.s() for _ in range(CHAIN - 1)])
        return list(await asyncio.to_thread(lambda: sig.apply_async().get(timeout=120)))

    async def fan(self) -> tuple[float, float | None]:
        from celery import chord, group

        f = self.flow

        def both() -> tuple[float, float]:
            t0 = time.perf_counter()
            assert chord(f.noop.s(i) for i in range(FAN))(f.join.s()).get(timeout=600) == FAN
            wall = time.perf_counter() - t0
            t0 = time.perf_counter()
            group(f.noop.s(i) for i in range(FAN)).apply_async().get(timeout=600)
            return wall, time.perf_counter() - t0
        return await asyncio.to_thread(both)

    async def pending(self) -> float:
        from celery import chord

        f = self.flow

        def measure() -> float:
            before = int(self.r.info("memory")["used_memory"])
            chord(f.noop.s(i).set(queue="nobody") for i in range(PENDING))(
                f.join.s().set(queue="nobody"))
            grown = int(self.r.info("memory")["used_memory"]) - before
            self.r.delete("nobody")
            return grown / PENDING
        return await asyncio.to_thread(measure)

    def stop(self) -> None:
        self.worker.terminate()
        try:
            self.worker.wait(20)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            self.worker.wait(10)
        self.redis.stop()


class TemporalEngine(Engine):
    name = "Temporal (dev server, SQLite file; activities)"

    def __init__(self, server: Temporal, client: Any, worker_task: asyncio.Task[None]) -> None:
        self.server, self.client, self.worker_task = server, client, worker_task

    @classmethod
    async def start(cls, d: Path) -> TemporalEngine:
        from temporalio.client import Client as TClient
        from temporalio.worker import UnsandboxedWorkflowRunner, Worker

        from .peers import temporal_peer as tp

        server = await asyncio.to_thread(Temporal, d)
        try:
            client = await TClient.connect(f"127.0.0.1:{server.port}")
            worker = Worker(client, task_queue="flow", workflows=tp.WORKFLOWS,
                            activities=tp.ACTIVITIES, max_concurrent_activities=4,
                            workflow_runner=UnsandboxedWorkflowRunner())
        except BaseException:
            server.stop()
            raise
        return cls(server, client, asyncio.ensure_future(worker.run()))

    async def execute(self, wf: Any, arg: int) -> Any:
        return await self.client.execute_workflow(wf, arg, id=f"wf-{uuid.uuid4()}",
                                                  task_queue="flow")

    async def chain(self) -> list[float]:
        from .peers import temporal_peer as tp
        return list(await self.execute(tp.Chain.run, CHAIN))

    async def fan(self) -> tuple[float, float | None]:
        from .peers import temporal_peer as tp
        t0 = time.perf_counter()
        assert await self.execute(tp.Fan.run, FAN) == FAN
        return time.perf_counter() - t0, None

    async def pending(self) -> float:
        from temporalio.client import WorkflowExecutionStatus

        from .peers import temporal_peer as tp

        proc = psutil.Process(self.server.pid)

        def rss() -> int:
            return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
        before = rss()
        handle = await self.client.start_workflow(tp.Pending.run, PENDING,
                                                  id=f"pending-{uuid.uuid4()}",
                                                  task_queue="flow")
        deadline = time.monotonic() + 300
        while True:  # every activity scheduled: an event each in the history
            desc = await handle.describe()
            scheduled = 0
            if desc.history_length > PENDING:
                scheduled = sum([e.HasField("activity_task_scheduled_event_attributes")
                                 async for e in handle.fetch_history_events()])
            if scheduled >= PENDING or desc.status != WorkflowExecutionStatus.RUNNING:
                break
            assert time.monotonic() < deadline, f"{desc.history_length} events"
            await asyncio.sleep(2)
        await asyncio.sleep(1)
        grown = rss() - before
        await handle.terminate()
        assert desc.status == WorkflowExecutionStatus.RUNNING, desc.status
        return grown / PENDING

    def stop(self) -> None:
        self.worker_task.cancel()
        self.server.stop()


class Dbos(Engine):
    name = "DBOS 3.4 (SQLite; steps in one workflow)"

    def __init__(self, d: Path) -> None:
        from .peers import dbos_peer

        self.peer = dbos_peer
        dbos_peer.launch(d)

    async def chain(self) -> list[float]:
        return list(await asyncio.to_thread(self.peer.stamps, CHAIN))

    def stop(self) -> None:
        self.peer.stop()


async def start(name: str, d: Path) -> Engine:
    d.mkdir()
    if name == "corral":
        return await asyncio.to_thread(Corral, d)
    if name == "celery":
        return await asyncio.to_thread(Celery, d)
    if name == "temporal":
        return await TemporalEngine.start(d)
    if name == "dbos":
        return await asyncio.to_thread(Dbos, d)
    raise ValueError(name)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def alternate(engines: list[Engine], rounds: int,
                    shape: Callable[[Engine], Awaitable[Any]]) -> dict[str, list[Any]]:
    got: dict[str, list[Any]] = {e.name: [] for e in engines}
    for r in range(rounds):
        for e in engines:
            with contextlib.suppress(NotImplementedError):
                got[e.name].append(await shape(e))
        print(f"round {r + 1}/{rounds} load {os.getloadavg()[0]:.1f}", flush=True)
    return {k: v for k, v in got.items() if v}


async def measure(rounds: int, fans: int, only: list[str]) -> dict[str, Any]:
    d = workdir("peers40")
    engines: list[Engine] = []
    out: dict[str, Any] = {"load_before": os.getloadavg(), "skipped": {}, "chain": {},
                           "fan": {}, "pending_bytes_per_child": {}}
    try:
        for name in only:
            try:
                engines.append(await start(name, d / name))
            except (Missing, ImportError) as e:
                out["skipped"][name] = f"{type(e).__name__}: {e}"
                print(f"skipped {name}: {e}", flush=True)
        for e in engines:  # warm
            with contextlib.suppress(NotImplementedError):
                await e.chain()
        chains = await alternate(engines, rounds, lambda e: e.chain())
        for name, runs in chains.items():
            es = [x for stamps in runs for x in edges(stamps)]
            out["chain"][name] = {"edge_p50_ms": round(statistics.median(es), 3),
                                  "edge_p99_ms": round(pct(es, 0.99), 3),
                                  "edge_max_ms": round(max(es), 3), "edges": len(es)}
            print(name, out["chain"][name], flush=True)
        fanned = await alternate(engines, fans, lambda e: e.fan())
        for name, runs in fanned.items():
            floors = [f for _, f in runs if f is not None]
            out["fan"][name] = {"wall_s_p50": round(statistics.median(w for w, _ in runs), 3),
                                "wall_s_max": round(max(w for w, _ in runs), 3),
                                "floor_s_p50": round(statistics.median(floors), 3)
                                if floors else None, "runs": len(runs)}
            print(name, out["fan"][name], flush=True)
        for e in engines:
            with contextlib.suppress(NotImplementedError):
                got = await e.pending()
                out["pending_bytes_per_child"][e.name] = (
                    {k: round(v) for k, v in got.items()} if isinstance(got, dict)
                    else round(got))
                print(e.name, "pending", out["pending_bytes_per_child"][e.name], flush=True)
    finally:
        for e in reversed(engines):
            try:
                e.stop()
            except Exception as exc:  # one engine's failed stop must not leave the others
                print("stop:", exc)
        await asyncio.sleep(0.1)
        shutil.rmtree(d, ignore_errors=True)
    out["load_after"] = os.getloadavg()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="corral,celery,temporal,dbos")
    args = ap.parse_args()
    t0 = time.time()
    out = asyncio.run(measure(5 if args.quick else 15, 1 if args.quick else 3,
                              args.only.split(",")))
    out["seconds"] = round(time.time() - t0, 1)
    report("workflow_peers", out)


if __name__ == "__main__":
    main()
