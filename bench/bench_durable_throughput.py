"""Issue 90: durable throughput, steps per second and workflow runs per second, corral
beside DBOS (SQLite), Temporal's dev server and Restate, in one run on this machine.

    sh bench/peers/setup.sh                    # once: the peers, pinned, from the registries
    .venv/bin/python -m bench.bench_durable_throughput [--window 60] [--runs-window 20]
        [--conc 8] [--steps 100] [--only corral,dbos,restate,temporal]
    .venv/bin/python -m bench.bench_durable_throughput --only corral,dbos-pg
    .venv/bin/python -m bench.bench_durable_throughput --only corral --what runs \
        --vs TREE --chunks 8 --runs-window 5  # paired against another checkout's daemon
    .venv/bin/python -m bench.bench_durable_throughput --pycount 1000 [--vs TREE]
        [--what steps] [--top 30]
        # the bytecodes a run (or a step) on the daemon's loop (bench_a2a's --pycount's way)

Each engine as bench_durable_peers sets it up (its quick start, a durable store), driven
by CONC clients at once for WINDOW seconds, each starting its next as its last ends:

- steps: a durable task/workflow of STEPS sequential no-op steps (corral: `ctx.step` in
  an SDK worker, bench/peers/corral_steps.py, `retries = 1`, 2 replicas; DBOS:
  `@DBOS.step` in a `@DBOS.workflow`, in this process; Restate: `ctx.run` in a service
  handler, invoked through its ingress; Temporal: a local activity, and an activity, in a
  workflow, the worker in this process). Steps/s = the steps of the tasks that finished
  in the window / its length; beside it each 5-second slice's rate (median and the
  lowest: sustained, or not) and a task's time (p50, p99);
- runs: a workflow of one no-op step, started and waited for (corral: `workflows.run` of
  a `[workflows]` entry of one step, bench/peers/corral_stamp.py, 2 replicas; DBOS: a
  workflow of one step; Restate: the handler with one `ctx.run`; Temporal: a workflow
  of one activity). Runs/s, and a run's time (p50, p99).

corral runs twice, `journal_sync = "normal"` (SQLite WAL, synchronous=NORMAL: a commit is
not fsynced, a checkpoint is) and `"full"` (every commit fsynced). The engines are
measured one after another (steps, then runs), the load recorded at each. A peer that is
not installed is skipped with the reason. Every server is a child of this process,
killed by its pid at the end. `dbos-pg`: DBOS on Debian's PostgreSQL (a cluster of the
bench's own, bench/peers/servers.py), in a run without `dbos` (DBOS is one per process).
CPU a run (or step): corral's daemon (`server_cpu_us`) and its agents (`workers_cpu_us`),
Postgres's processes (DBOS's `server_cpu_us`), and this process (`bench_cpu_us`: the
clients, and DBOS itself, which runs in it); corral's loop thread's own (`loop_cpu_us`)
and its wait for a core while it could run (`loop_wait_us`).

`--vs TREE`: the daemon of another checkout (a worktree of the tree before a change) beside
this tree's, each measured in `--chunks` windows alternated with the other's (each chunk
the other one first), so that both see the same load; the JSON's `vs` has the median of
the per-chunk ratios (this tree / the other: runs or steps a second, the daemon's CPU a
run or step, p50) and each one's medians.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import statistics
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .bench_a2a import PYCOUNT_SITE, _appears, launcher_of
from .bench_cluster import Client
from .harness import PY, ROOT, CorralDaemon, report, workdir
from .peers.servers import Missing, Postgres, Restate, Temporal

One = Callable[[int], Awaitable[None]]  # one task (or workflow) of n steps, to its end
SLICE = 5.0
# an engine's CPU seconds so far, its server's and its workers' (corral's daemon and
# agents), by the key of each of its entries
CPU: dict[str, Callable[[], tuple[float, float]]] = {}
# corral's daemon's main thread, its loop (/proc's schedstat: its ns on a core, and waiting
# for one while it could run): runs/s is one over their sum a run once it is never idle
LOOP: dict[str, Path] = {}


def cpu_of(pid: int) -> Callable[[], tuple[float, float]]:
    """(the process's CPU seconds, its children's) so far."""
    import psutil

    proc = psutil.Process(pid)

    def now() -> tuple[float, float]:
        t = proc.cpu_times()
        kids = 0.0
        for c in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                k = c.cpu_times()
                kids += k.user + k.system
        return t.user + t.system, kids
    return now


def corral_config() -> str:
    steps = ROOT / "bench" / "peers" / "corral_steps.py"
    stamp = ROOT / "bench" / "peers" / "corral_stamp.py"
    return f"""
[agents.durable]
command = ["{PY}", "{steps}"]
env = {{ PYTHONPATH = "{ROOT}" }}
replicas = 2
retries = 1
max_queue = 100000
start_timeout = 120

[agents.stamp]
command = ["{PY}", "{stamp}"]
env = {{ PYTHONPATH = "{ROOT}" }}
replicas = 2
max_queue = 100000
start_timeout = 120

[workflows.one]
[[workflows.one.steps]]
name = "s"
agent = "stamp"
"""


class Clients:
    """Control-socket connections, one per thread that calls (a Client is one call at a
    time)."""

    def __init__(self, sock: Path) -> None:
        self.sock = sock
        self.local = threading.local()
        self.all: list[Client] = []

    def call(self, method: str, params: dict[str, Any]) -> Any:
        c = getattr(self.local, "client", None)
        if c is None:
            c = self.local.client = Client(self.sock)
            self.all.append(c)
        return c.call(method, params)

    def close(self) -> None:
        for c in self.all:
            c.close()


async def start_corral(d: Path, steps: dict[str, One], runs: dict[str, One],
                       stops: list[Any], syncs: tuple[str, ...] = ("normal", "full"),
                       tree: Path | None = None, label: str = "corral") -> None:
    """`tree`: another checkout's daemon (--vs), its entries named `label`."""
    for sync in syncs:
        sub = d / sync
        sub.mkdir()
        daemon = CorralDaemon(sub, corral_config(),
                              extra=f'journal_sync = "{sync}"\ndrain_timeout = 0',
                              launcher=launcher_of(tree))
        daemon.start()
        stops.append(daemon.stop)
        clients = Clients(daemon.sock)
        stops.append(clients.close)

        def task(n: int, clients: Clients = clients) -> None:
            res = clients.call("tasks.run", {"agent": "durable", "timeout": 600,
                                             "input": {"calls": n, "mode": "step"}})
            assert res["status"] == "succeeded", res

        def run(n: int, clients: Clients = clients) -> None:
            res = clients.call("workflows.run", {"name": "one", "input": n, "wait": 600})
            assert res["status"] == "succeeded", res.get("error")

        steps[f"{label} ({sync}): ctx.step"] = threaded(task)
        runs[f"{label} ({sync}): a workflow of one step"] = threaded(run)
        assert daemon.proc is not None
        CPU[f"{label} ({sync}): ctx.step"] = CPU[f"{label} ({sync}): a workflow of one step"] \
            = cpu_of(daemon.proc.pid)
        LOOP[f"{label} ({sync}): ctx.step"] = LOOP[f"{label} ({sync}): a workflow of one step"] \
            = Path(f"/proc/{daemon.proc.pid}/task/{daemon.proc.pid}/schedstat")


class Threaded:
    """A blocking engine's call (corral's control socket, DBOS): `drive` runs each lane in
    a thread of its own for the whole window, a call after the last, with no hop through
    the loop and back at each call (two wake-ups of this process a run, its CPU taken from
    the engines); awaited alone (a warm-up) it goes to a thread."""

    def __init__(self, fn: Callable[[int], Any]) -> None:
        self.fn = fn

    async def __call__(self, n: int) -> None:
        await asyncio.to_thread(self.fn, n)


def threaded(fn: Callable[[int], Any]) -> One:
    return Threaded(fn)


async def start_dbos(d: Path, steps: dict[str, One], runs: dict[str, One],
                     stops: list[Any]) -> None:
    from .peers import dbos_peer
    dbos_peer.launch(d)
    stops.append(dbos_peer.stop)
    steps["DBOS (SQLite): @DBOS.step"] = threaded(dbos_peer.steps)
    runs["DBOS (SQLite): a workflow of one step"] = threaded(dbos_peer.stamps)


async def start_dbos_pg(d: Path, steps: dict[str, One], runs: dict[str, One],
                        stops: list[Any]) -> None:
    from .peers import dbos_peer
    server = await asyncio.to_thread(Postgres, d)
    stops.append(server.stop)
    dbos_peer.launch(d, server.url)
    stops.append(dbos_peer.stop)
    steps["DBOS (Postgres): @DBOS.step"] = threaded(dbos_peer.steps)
    runs["DBOS (Postgres): a workflow of one step"] = threaded(dbos_peer.stamps)
    assert server.proc is not None
    postgres = cpu_of(server.proc.pid)
    # (its server's CPU: Postgres's processes, every backend; DBOS itself runs in this
    # process, its CPU in `bench_cpu_us` with the clients')
    CPU["DBOS (Postgres): @DBOS.step"] = CPU["DBOS (Postgres): a workflow of one step"] \
        = lambda: (sum(postgres()), 0.0)


async def start_restate(d: Path, steps: dict[str, One], runs: dict[str, One],
                        stops: list[Any]) -> None:
    import aiohttp

    server = await asyncio.to_thread(Restate, d)
    stops.append(server.stop)
    session = aiohttp.ClientSession()
    stops.append(lambda: asyncio.get_event_loop().create_task(session.close()))
    url = f"http://127.0.0.1:{server.ingress}/bench/steps"

    async def one(n: int) -> None:
        async with session.post(url, json=n, timeout=aiohttp.ClientTimeout(600)) as r:
            assert r.status == 200, await r.text()
            await r.read()
    steps["Restate: ctx.run"] = one
    runs["Restate: a handler of one ctx.run"] = one


async def start_temporal(d: Path, steps: dict[str, One], runs: dict[str, One],
                         stops: list[Any]) -> None:
    from temporalio.client import Client as TClient
    from temporalio.worker import UnsandboxedWorkflowRunner, Worker

    from .peers import temporal_peer as tp

    server = await asyncio.to_thread(Temporal, d)
    stops.append(server.stop)
    client = await TClient.connect(f"127.0.0.1:{server.port}")
    worker = Worker(client, task_queue="bench", workflows=tp.WORKFLOWS,
                    activities=tp.ACTIVITIES, workflow_runner=UnsandboxedWorkflowRunner())
    task = asyncio.ensure_future(worker.run())
    stops.append(lambda: task.cancel())

    def steps_of(local: bool) -> One:
        async def one(n: int) -> None:
            await client.execute_workflow(tp.Steps.run, args=[n, local],
                                          id=f"steps-{uuid.uuid4()}", task_queue="bench")
        return one

    async def chain(n: int) -> None:
        await client.execute_workflow(tp.Chain.run, args=[n], id=f"run-{uuid.uuid4()}",
                                      task_queue="bench")
    steps["Temporal: local activity"] = steps_of(True)
    steps["Temporal: activity"] = steps_of(False)
    runs["Temporal: a workflow of one activity"] = chain


PEERS = {"corral": start_corral, "dbos": start_dbos, "restate": start_restate,
         "temporal": start_temporal, "dbos-pg": start_dbos_pg}
DEFAULT = "corral,dbos,restate,temporal"  # DBOS is one per process: dbos-pg in a run of its own


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def _sched(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    on, waited = path.read_text().split()[:2]
    return int(on), int(waited)


async def drive(one: One, n: int, conc: int, window: float,
                cpu: Callable[[], tuple[float, float]] | None = None,
                loop: Path | None = None) -> dict[str, Any]:
    """CONC lanes, each its next as its last ends, for `window` seconds: what finished,
    and with `cpu`, the engine's CPU a step (or run), its server's and its workers'."""
    ends: list[float] = []
    took: list[float] = []
    every: list[float] = []  # those past the window too (the CPU's count)
    t0 = time.perf_counter()
    deadline = t0 + window

    def timed(end: float, t: float) -> None:
        every.append(end)
        if end <= deadline:
            ends.append(end - t0)
            took.append(end - t)

    def lane_in_thread(fn: Callable[[int], Any]) -> None:
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            fn(n)
            timed(time.perf_counter(), t)

    async def lane() -> None:
        if isinstance(one, Threaded):
            await asyncio.to_thread(lane_in_thread, one.fn)
            return
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            await one(n)
            timed(time.perf_counter(), t)

    load = os.getloadavg()[0]
    cpu0 = cpu() if cpu is not None else None
    loop0 = _sched(loop)
    own0 = _own_cpu()
    await asyncio.gather(*(lane() for _ in range(conc)))
    own1 = _own_cpu()
    loop1 = _sched(loop)
    cpu1 = cpu() if cpu is not None else None
    slices = [0] * max(1, int(window // SLICE))  # whole slices only
    for e in ends:
        if int(e // SLICE) < len(slices):
            slices[int(e // SLICE)] += n
    rates = [s / min(SLICE, window) for s in slices]
    return {"per_s": round(len(ends) * n / window, 1), "finished": len(ends),
            "slice_median_per_s": round(statistics.median(rates), 1),
            "slice_lowest_per_s": round(min(rates), 1),
            "p50_ms": round(statistics.median(took) * 1000, 2) if took else None,
            "p99_ms": round(pct(took, 0.99) * 1000, 2) if took else None,
            "load": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
            "bench_cpu_us": round((own1 - own0) / max(1, len(every) * n) * 1e6)} | ({
                "server_cpu_us": round((cpu1[0] - cpu0[0]) / max(1, len(every) * n) * 1e6),
                "workers_cpu_us": round((cpu1[1] - cpu0[1]) / max(1, len(every) * n) * 1e6)}
                if cpu0 is not None and cpu1 is not None else {}) | ({
                "loop_cpu_us": round((loop1[0] - loop0[0]) / max(1, len(every) * n) / 1e3),
                "loop_wait_us": round((loop1[1] - loop0[1]) / max(1, len(every) * n) / 1e3)}
                if loop0 is not None and loop1 is not None else {})


def _own_cpu() -> float:
    """This process's CPU seconds so far: its clients' (and DBOS's, which runs in it)."""
    t = os.times()
    return t.user + t.system


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    # a thread for each client (`threaded`): the loop's default pool has cpu_count + 4,
    # six on two cores, so eight clients were six at once
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(args.conc, "client"))
    d = workdir("throughput")
    steps: dict[str, One] = {}
    runs: dict[str, One] = {}
    stops: list[Any] = []
    out: dict[str, Any] = {"load_before": os.getloadavg(), "skipped": {}, "steps": {},
                           "runs": {}, "conc": args.conc, "steps_a_task": args.steps,
                           "window_s": args.window, "runs_window_s": args.runs_window}
    try:
        for name in args.only.split(","):
            sub = d / name
            sub.mkdir()
            try:
                if name == "corral":
                    await start_corral(sub, steps, runs, stops, tuple(args.sync.split(",")))
                else:
                    await PEERS[name](sub, steps, runs, stops)
            except (Missing, ImportError, RuntimeError) as e:
                out["skipped"][name] = f"{type(e).__name__}: {e}"
                print(f"skipped {name}: {e}", flush=True)
        if args.vs is not None:
            (d / "before").mkdir()
            await start_corral(d / "before", steps, runs, stops, tuple(args.sync.split(",")),
                               args.vs.resolve(), "before")
        for what, engines, n, window in (("steps", steps, args.steps, args.window),
                                         ("runs", runs, 1, args.runs_window)):
            if what not in args.what:
                continue
            for one in engines.values():
                await one(n)  # warm
            keys = list(engines)
            for chunk in range(args.chunks):
                # (with --vs, each sync's pair in turn, each chunk the other one first)
                order = keys if chunk % 2 == 0 else _swapped(keys)
                for key in order:
                    got = await drive(engines[key], n, args.conc, window, CPU.get(key),
                                      LOOP.get(key))
                    out[what].setdefault(key, []).append(got)
                    print(f"{what:<5} {key:<40} {got}", flush=True)
        for what in ("steps", "runs"):
            out[what] = {k: v[0] if len(v) == 1 else chunked(v) for k, v in out[what].items()}
        if args.vs is not None:
            out["vs"] = {"tree": str(args.vs), "pairs": paired(out)}
            print(json.dumps(out["vs"], indent=1))
    finally:
        for stop in reversed(stops):
            try:
                stop()
            except Exception as e:  # one peer's failed stop must not leave the others
                print("stop:", e)
        await asyncio.sleep(0.1)
        shutil.rmtree(d, ignore_errors=True)
    out["load_after"] = os.getloadavg()
    return out


def _swapped(keys: list[str]) -> list[str]:
    """The keys with each "before" entry moved ahead of this tree's of the same sync."""
    out = list(keys)
    for i, key in enumerate(keys):
        if key.startswith("corral ") and "before " + key[len("corral "):] in keys:
            j = keys.index("before " + key[len("corral "):])
            out[i], out[j] = keys[j], keys[i]
    return out


def chunked(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """An engine's chunks: each as measured, and their medians."""
    med = {k: round(statistics.median(c[k] for c in chunks), 2)
           for k in ("per_s", "p50_ms", "p99_ms", "server_cpu_us", "load")
           if all(c.get(k) is not None for c in chunks)}
    return {"median": med, "chunks": chunks}


def paired(out: dict[str, Any]) -> dict[str, Any]:
    """This tree against --vs, chunk by chunk: the median of the per-chunk ratios."""
    pairs: dict[str, Any] = {}
    for what in ("steps", "runs"):
        for key, mine in out[what].items():
            theirs = out[what].get("before " + key[len("corral "):])
            if not key.startswith("corral ") or theirs is None or "chunks" not in mine:
                continue
            ratios = {k: _ratio(mine["chunks"], theirs["chunks"], k)
                      for k in ("per_s", "server_cpu_us", "p50_ms")}
            pairs[f"{what} {key}"] = {"this/before": ratios, "this": mine["median"],
                                      "before": theirs["median"]}
    return pairs


def _ratio(mine: list[dict[str, Any]], theirs: list[dict[str, Any]], k: str
           ) -> float | None:
    """The median of the per-chunk ratios of `k`, a chunk whose other side measured none
    (no CPU in a chunk its process spent waiting, no run finished) left out: None when
    every one was."""
    ratios = [a[k] / b[k] for a, b in zip(mine, theirs, strict=True) if b[k]]
    return round(statistics.median(ratios), 3) if ratios else None


def pycount(tree: Path | None, total: int, conc: int, what: str = "runs", steps: int = 100,
            top: int = 0) -> dict[str, Any]:
    """The bytecode instructions the daemon's main thread runs a workflow run of one step
    (`what` runs), or a `ctx.step` (steps: over tasks of `steps` each), `normal`, over
    `total` runs (or steps) at `conc` clients, warmed first (bench_a2a's --pycount: what the
    load does not change; a daemon of its own, this tree's or `tree`'s); with `top`, the
    functions that ran the most of them, each's count a run (or step)."""
    d = workdir("runs-pycount")
    counts = d / "counts"
    daemon = CorralDaemon(d, corral_config(), extra='journal_sync = "normal"\ndrain_timeout = 0',
                          launcher=["env", f"PYTHONPATH={PYCOUNT_SITE}:{tree or ROOT}",
                                    f"CORRAL_PYCOUNT={counts}", "CORRAL_PYCOUNT_MODE=ops",
                                    *(launcher_of(tree or ROOT) or [])])
    daemon.start()
    assert daemon.proc is not None
    clients = Clients(daemon.sock)

    def runs(n: int) -> None:
        def one(i: int) -> None:
            if what == "steps":
                res = clients.call("tasks.run", {"agent": "durable", "timeout": 600,
                                                 "input": {"calls": steps, "mode": "step"}})
                assert res["status"] == "succeeded", res
                return
            res = clients.call("workflows.run", {"name": "one", "input": i, "wait": 600})
            assert res["status"] == "succeeded", res.get("error")
        if what == "steps":  # tasks of `steps` each
            n = max(conc, n // steps)
        lanes = [threading.Thread(target=lambda k=k: [one(i) for i in range(k, n, conc)])
                 for k in range(conc)]
        for t in lanes:
            t.start()
        for t in lanes:
            t.join()

    try:
        runs(300)
        os.kill(daemon.proc.pid, signal.SIGRTMIN + 5)
        _appears(Path(f"{counts}.on"))
        runs(total)
        os.kill(daemon.proc.pid, signal.SIGRTMIN + 6)
        _appears(counts)
        lines = [line.split("\t") for line in counts.read_text().splitlines()]
        ops = sum(int(n) for n, kind, *_ in lines if kind == "py")
    finally:
        clients.close()
        daemon.stop()
        shutil.rmtree(d, ignore_errors=True)
    done = max(conc, total // steps) * steps if what == "steps" else total
    return {what: done, "ops": round(ops / done, 1)} | ({"top": [
        (round(int(n) / done, 1), f"{Path(path).name}:{name}")
        for n, kind, name, path in lines[:top] if kind == "py"]} if top else {})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--runs-window", type=float, default=20.0)
    ap.add_argument("--conc", type=int, default=8)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--only", default=DEFAULT)
    ap.add_argument("--sync", default="normal,full", help="corral's journal_sync values")
    ap.add_argument("--what", default="steps,runs", help="steps, runs, or both")
    ap.add_argument("--vs", type=Path, help="another checkout's corral beside this one's, "
                    "chunk by chunk (with --only corral)")
    ap.add_argument("--chunks", type=int, default=1,
                    help="windows an engine is measured in, alternated with the others'")
    ap.add_argument("--pycount", type=int, default=0, metavar="N",
                    help="only the bytecodes a run (--what runs) or a step (--what steps) on "
                    "the daemon's loop, over N of them (with --vs: that tree's too)")
    ap.add_argument("--out", default="durable_throughput",
                    help="the name of its JSON in bench/results (a paired sitting's own)")
    ap.add_argument("--top", type=int, default=0, metavar="N",
                    help="with --pycount: the N functions that ran the most bytecodes")
    args = ap.parse_args()
    if args.pycount:
        trees = {"corral": None} | ({} if args.vs is None else {"before": args.vs.resolve()})
        print(json.dumps({name: pycount(tree, args.pycount, args.conc,
                                        "steps" if args.what == "steps" else "runs",
                                        args.steps, args.top)
                          for name, tree in trees.items()}, indent=1))
        return
    out = asyncio.run(measure(args))
    report(args.out, out)
    print(json.dumps({"skipped": out["skipped"]}))


if __name__ == "__main__":
    main()
