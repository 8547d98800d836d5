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

`--http`: the daemon serves [http] too (on a unix socket), so the new image has the HTTP
server and the gateway to start again (aiohttp to import) besides its agents.

Each round notes the 1-minute load average at its end (`load`): the machine is shared.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from corral import methods as m
from corral.cli.client import CallFailed, Client, Unreachable

from .harness import HELLO, CorralDaemon, corral_agents, report, workdir

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
    ap.add_argument("--out", default="bench_upgrade")
    args = ap.parse_args()
    out: dict[str, Any] = {"agents": args.agents, "rounds": args.rounds,
                           "interval_s": INTERVAL}
    for kind in args.kinds.split(","):
        runs = [round_of(args.agents, kind, args.http) for _ in range(args.rounds)]
        out[kind] = {"runs": runs,
                     "seconds": summary([r["seconds"] for r in runs]),
                     "handover_s": summary([r["handover_s"] or 0.0 for r in runs]),
                     "dispatch_pause_s": summary([r["dispatch_pause_s"] for r in runs])}
    report(args.out, out)


if __name__ == "__main__":
    main()
