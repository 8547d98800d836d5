"""Issue 37, item 2: `corral upgrade` at N agents, beside a stop and start of the same fleet.

A corral daemon with N SDK hello replicas (`warm = true`: forked by a zygote, so their
adoption is the subreaper's case), and a submitter thread handing it an echo task every
INTERVAL s on the control socket (`tasks.submit`; a call cut by the exec is made again).
Per round:

1. upgrade: `daemon.upgrade` -> the report says "done" (the new image serves: every
   worker adopted), `seconds`; the report's own `seconds` (`handover_s`: from dispatch
   held, after the new install's check, to the new image serving); and the longest
   pause of dispatch across it: the largest gap between the starts of consecutive tasks
   (their first attempts' `started`), in the window from a second before the upgrade to
   a second after it served;
2. restart: SIGTERM -> exited -> a new `corral daemon` -> READY=1 (every agent started
   again), and the same pause measured across it.

    .venv/bin/python -m bench.bench_upgrade [--agents 1000] [--rounds 5]
        [--kinds upgrade,restart] [--http] [--out bench_upgrade]
    .venv/bin/python -m bench.bench_upgrade --floor 20 [--out bench_upgrade_floor]

`--floor N`: the pause's floor on this machine at its load, N runs of each case
alternating (medians): a bare interpreter (with and without `site`), asyncio and uvloop,
the fewest modules the adopt-and-dispatch path needs (the engine, the handoff, the
control socket, the store, the journal, the fleet), the new image's imports as they are
(BOOT's and boot.resume's), what a dispatch-first set-up would import only after the
first adoption (workflows, teams, schedules, the definitions catalog, packages,
tracing, history), and the new image's imports with no byte-code to read (every module
compiled).

`--http`: the daemon serves [http] too (on a unix socket), so the new image has the HTTP
server and the gateway to start again (aiohttp to import) besides its agents.

Each round notes the 1-minute load average at its end (`load`): the machine is shared.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from corral import methods as m
from corral.cli.client import CallFailed, Client, Unreachable

from .harness import ENV, HELLO, CorralDaemon, corral_agents, report, workdir

INTERVAL = 0.01  # one task submitted every 10 ms


class Submitter(threading.Thread):
    """Echo tasks at a steady rate; the ids accepted, in order."""

    def __init__(self, sock: Path) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.ids: list[str] = []
        self.refused = 0
        self.stop = threading.Event()

    def run(self) -> None:
        c: Client | None = None
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                if c is None:
                    c = Client(self.sock)
                res = c.ask("tasks.submit", {"agent": "w", "input": {"n": len(self.ids)}},
                            result=m.TaskAccepted)
                self.ids.append(res.task_id)
            except (Unreachable, OSError, TimeoutError, CallFailed):
                self.refused += 1
                if c is not None:
                    c.close()
                c = None
            time.sleep(max(0.0, INTERVAL - (time.monotonic() - t)))
        if c is not None:
            c.close()


def pause(sock: Path, ids: list[str], since: float, until: float) -> float:
    """The longest gap between consecutive task starts within [since, until] (wall)."""
    starts = []
    with Client(sock) as c:
        for tid in ids:
            info = c.ask("tasks.get", {"task_id": tid})
            if info.attempts:
                starts.append(info.attempts[0].started)
    starts = sorted(s for s in starts if since <= s <= until)
    return max((b - a for a, b in itertools.pairwise(starts)), default=0.0)


def upgrade(d: CorralDaemon) -> tuple[float, m.UpgradeReport]:
    with Client(d.sock, timeout=None) as c:
        t0 = time.perf_counter()
        began = c.ask("daemon.upgrade", m.DaemonUpgrade())
    while True:
        try:
            with Client(d.sock) as c:
                r: m.UpgradeReport = c.ask("daemon.upgrade", m.DaemonUpgrade(report=True))
        except (Unreachable, OSError, TimeoutError, CallFailed):
            continue
        if r.attempt == began.attempt and r.state != "handing_over":
            assert r.state == "done", r
            return time.perf_counter() - t0, r
        time.sleep(0.005)


def restart(d: CorralDaemon) -> float:
    assert d.proc is not None
    t0 = time.perf_counter()
    d.proc.terminate()
    d.proc.wait(300)
    d.start()
    return time.perf_counter() - t0


def round_of(n: int, kind: str, http: bool = False) -> dict[str, Any]:
    w = workdir("upgrade")
    agents = corral_agents(n, [sys.executable, str(HELLO)], extra="warm = true")
    if http:
        agents += f'\n[http]\nlisten = "unix:{w}/http.sock"\n'
    d = CorralDaemon(w, agents, extra="drain_timeout = 5")
    try:
        ready = d.start()
        sub = Submitter(d.sock)
        sub.start()
        time.sleep(1.0)
        before = time.time() - 1.0
        handover: float | None = None
        if kind == "upgrade":
            seconds, r = upgrade(d)
            kept, handover = r.kept, r.seconds
            print("restarted:", r.restarted, file=sys.stderr)
        else:
            seconds, kept = restart(d), 0
        time.sleep(1.0)
        sub.stop.set()
        sub.join(30)
        gap = pause(d.sock, sub.ids, before, time.time())
        return {"ready_s": round(ready, 3), "seconds": round(seconds, 3),
                "handover_s": handover,
                "dispatch_pause_s": round(gap, 3), "kept": kept,
                "tasks": len(sub.ids), "submit_errors": sub.refused,
                "load": round(os.getloadavg()[0], 1), "http": http}
    finally:
        d.stop()


# what the new image cannot start dispatch without: the engine and its config, the
# handoff and adoption, the control socket and its dispatcher, the store and the journal,
# the fleet that adds the agents
DISPATCH = ("uvloop", "corral.daemon.handoff", "corral.supervisor.core",
            "corral.supervisor.configload", "corral.daemon.control", "corral.daemon.api",
            "corral.daemon.store", "corral.daemon.taskjournal", "corral.daemon.logs",
            "corral.daemon.fleet", "corral.daemon.notify")
# what a dispatch-first set-up would build (and import) after the first adoption
DEFERRABLE = ("corral.daemon.workflows", "corral.daemon.teams", "corral.daemon.schedules",
              "corral.daemon.schedulehandlers", "corral.daemon.definitions",
              "corral.daemon.defcatalog", "corral.daemon.packages.service",
              "corral.daemon.traces", "corral.supervisor.tracing", "corral.daemon.history",
              "corral.daemon.sessionjournal", "corral.daemon.gatewayaccess",
              "corral.daemon.filewatch", "corral.daemon.fleetwatch")
BOOT_IMPORTS = ("uvloop", "corral.daemon.boot", "corral.supervisor.configload",
                "corral.daemon.daemon", "corral.daemon.upgrade")


def timed_imports(first: tuple[str, ...], then: tuple[str, ...] = ()) -> str:
    """A program that imports `first`, then prints how long `then` took to import."""
    return ("import gc, time; gc.disable(); " + "".join(f"import {m}; " for m in first)
            + "t = time.perf_counter(); " + "".join(f"import {m}; " for m in then)
            + "print(time.perf_counter() - t)")


def floor(runs: int) -> dict[str, Any]:
    """Each case `runs` times, alternating; wall-clock of the whole interpreter unless
    the case prints its own figure (the deferrable imports after the rest)."""
    py = sys.executable
    cases: dict[str, list[str]] = {
        "bare interpreter": [py, "-c", "pass"],
        "bare interpreter, -S (no site)": [py, "-S", "-c", "pass"],
        "asyncio + uvloop": [py, "-c", timed_imports(("uvloop",))],
        "adopt-and-dispatch imports (the floor)": [py, "-c", timed_imports(DISPATCH)],
        "the new image's imports today": [py, "-c", timed_imports(BOOT_IMPORTS)],
        "deferrable imports, after the floor's (printed)": [
            py, "-c", timed_imports(DISPATCH, DEFERRABLE)],
    }
    with tempfile.TemporaryDirectory() as empty:
        nopyc = {**os.environ, "PYTHONPYCACHEPREFIX": empty, "PYTHONDONTWRITEBYTECODE": "1"}
        times: dict[str, list[float]] = {name: [] for name in [*cases, "no byte-code"]}
        for _ in range(runs):
            for name, argv in cases.items():
                t = time.perf_counter()
                out = subprocess.run(argv, check=True, capture_output=True, text=True,
                                     env=ENV).stdout.strip()
                took = time.perf_counter() - t
                times[name].append(float(out) if name.endswith("(printed)") else took)
            t = time.perf_counter()
            subprocess.run([py, "-c", timed_imports(BOOT_IMPORTS)], check=True, env={
                **nopyc, "PYTHONPATH": ENV["PYTHONPATH"]}, capture_output=True)
            times["no byte-code"].append(time.perf_counter() - t)
    return {"runs": runs, "load": round(os.getloadavg()[0], 1),
            **{name: {"median_ms": round(statistics.median(v) * 1e3, 1),
                      "min_ms": round(min(v) * 1e3, 1)} for name, v in times.items()}}


def summary(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    return {"median": round(statistics.median(s), 3),
            "p99": round(s[min(len(s) - 1, int(0.99 * len(s)))], 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--kinds", default="upgrade,restart")
    ap.add_argument("--http", action="store_true", help="the daemon serves [http] too")
    ap.add_argument("--out", default=None)
    ap.add_argument("--floor", type=int, default=0, metavar="N",
                    help="measure the pause's floor instead, N runs of each case")
    args = ap.parse_args()
    if args.floor:
        report(args.out or "bench_upgrade_floor", floor(args.floor))
        return
    out: dict[str, Any] = {"agents": args.agents, "rounds": args.rounds,
                           "interval_s": INTERVAL}
    for kind in args.kinds.split(","):
        runs = [round_of(args.agents, kind, args.http) for _ in range(args.rounds)]
        out[kind] = {"runs": runs,
                     "seconds": summary([r["seconds"] for r in runs]),
                     "handover_s": summary([r["handover_s"] or 0.0 for r in runs]),
                     "dispatch_pause_s": summary([r["dispatch_pause_s"] for r in runs])}
    report(args.out or "bench_upgrade", out)


if __name__ == "__main__":
    main()
