"""Issues 13 and 15: a fleet of 100/300/1000 agents, corral beside supervisord, in one run.

For each N:
1. corral daemon, N SDK hello agents with `warm = true`: launch -> READY=1 (every agent
   answered initialize); supervisord 4.3.0: launch -> N programs RUNNING (startsecs=0).
2. idle, 1 s heartbeat, a window of IDLE s: the daemon's CPU (and the agents' CPU, the
   cost of answering pings) and RSS, beside supervisord's.
3. `corral status` / `supervisorctl status` wall time.
4. stop: SIGTERM -> the daemon has exited (every agent stopped).
5. the loop-lag probe: a control call (`daemon.info`) every 5 ms on one connection during
   start, idle and stop; the worst and p99 round trip per phase is the loop's stall.
Then: crash -> Ready of an agent with a synthetic 1 s import (examples/heavy.py), cold
and with `preload`, through the Python API.

    .venv/bin/python -m bench.bench_scale [--quick] [--sizes 100,300,1000]
        [--no-peer] [--no-heavy] [--profile DIR]

`--no-peer` and `--no-heavy` skip supervisord and the crash-to-Ready part (quick rounds
while working on the loop; the figures in RESULTS.md come from the full run).
`--profile DIR` runs the daemon under bench/loop_profile.py (cProfile of the loop and
its turns over 20 ms, per phase, in DIR/N/) on the standard asyncio loop: slower than
uvloop, so its timings are for finding causes, not for RESULTS.md's tables; with
`--stalls`, on uvloop, the main thread's stacks sampled during each stall instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from .harness import BIN, HELLO, ROOT, CorralDaemon, Supervisord, corral_agents, report, workdir

IDLE = 10.0


class Probe(threading.Thread):
    """A control call every 5 ms; round trips by phase."""

    def __init__(self, sock: Path) -> None:
        super().__init__(daemon=True)
        self.sock_path = sock
        self.phase = "start"
        self.samples: dict[str, list[float]] = {}
        self.done = threading.Event()
        self.paused = False  # while the idle CPU is measured: the probe costs CPU too

    def run(self) -> None:
        s = None
        rid = 0
        while not self.done.is_set():
            if self.paused:
                time.sleep(0.005)
                continue
            if s is None:
                try:
                    s = socket.socket(socket.AF_UNIX)
                    s.connect(str(self.sock_path))
                    f = s.makefile("rb")
                except OSError:
                    s = None
                    time.sleep(0.005)
                    continue
            rid += 1
            t0 = time.perf_counter()
            try:
                s.sendall(json.dumps({"jsonrpc": "2.0", "id": rid, "method": "daemon.info",
                                      "params": {}}).encode() + b"\n")
                if not f.readline():
                    raise OSError("closed")
            except OSError:
                s = None
                continue
            self.samples.setdefault(self.phase, []).append(time.perf_counter() - t0)
            time.sleep(max(0.0, 0.005 - (time.perf_counter() - t0)))

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for phase, seq in self.samples.items():
            xs = sorted(seq)
            out[phase] = {"calls": len(xs), "worst_ms": round(xs[-1] * 1000, 1),
                          "p99_ms": round(xs[int(len(xs) * 0.99) - 1] * 1000, 1),
                          # which call was the worst (0: the first, answered only once
                          # the daemon's start-up let the loop turn)
                          "worst_call": seq.index(xs[-1])}
        return out


def cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def children_cpu(pid: int) -> float:
    total = 0.0
    for c in psutil.Process(pid).children(recursive=True):
        try:
            t = c.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def idle_window(pid: int) -> tuple[float, float, float]:
    """(daemon CPU %, children CPU %, daemon RSS MiB) over IDLE seconds."""
    c0, k0, t0 = cpu(pid), children_cpu(pid), time.perf_counter()
    time.sleep(IDLE)
    c1, k1, t1 = cpu(pid), children_cpu(pid), time.perf_counter()
    rss = psutil.Process(pid).memory_info().rss / 2**20
    return (100 * (c1 - c0) / (t1 - t0), 100 * (k1 - k0) / (t1 - t0), rss)


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


def stop_time(proc: subprocess.Popen[bytes]) -> float:
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    proc.wait(300)
    return time.perf_counter() - t0


def corral_fleet(n: int, profile: Path | None = None, stalls: bool = False
                 ) -> dict[str, Any]:
    d = workdir(f"scale{n}")
    launcher = None
    if profile is not None:
        launcher = [sys.executable, "-m", "bench.loop_profile", "--out", str(profile / str(n)),
                    *(["--uvloop"] if stalls else [])]
    c = CorralDaemon(d, corral_agents(n, [sys.executable, str(HELLO)], extra="warm = true"),
                     extra="heartbeat_interval = 1.0", launcher=launcher)
    probe = Probe(c.sock)
    probe.start()
    ready = c.start()
    assert c.proc is not None

    def next_phase(name: str) -> None:
        if profile is not None and c.proc is not None:
            c.proc.send_signal(signal.SIGUSR1)  # loop_profile: the phase's profile
        probe.phase = name

    next_phase("idle")
    info = json.loads(subprocess.run(
        [str(BIN / "corral"), "--socket", str(c.sock), "stats", "--json"],
        capture_output=True, check=True).stdout)
    time.sleep(5)  # the loop lag while idle
    probe.paused = True
    daemon_cpu, agents_cpu, rss = idle_window(c.proc.pid)
    probe.paused = False
    hb0 = info["heartbeat"]
    hb1 = json.loads(subprocess.run(
        [str(BIN / "corral"), "--socket", str(c.sock), "stats", "--json"],
        capture_output=True, check=True).stdout)["heartbeat"]
    status = statistics.median(
        timed([str(BIN / "corral"), "--socket", str(c.sock), "status", "--json"])
        for _ in range(3))
    next_phase("stop")
    stop = stop_time(c.proc)
    probe.done.set()
    probe.join(5)
    c.notify.close()
    rounds = max(1, hb1["rounds"] - hb0["rounds"])
    return {
        "ready_s": round(ready, 3), "idle_cpu_percent": round(daemon_cpu, 2),
        "agents_cpu_percent": round(agents_cpu, 2), "rss_mb": round(rss, 1),
        "status_s": round(status, 3), "stop_s": round(stop, 3),
        "loop_lag": probe.summary(),
        "heartbeat_per_round": {
            "busy_ms": round(1000 * (hb1["busy_seconds"] - hb0["busy_seconds"]) / rounds, 2),
            "pings": round((hb1["pings"] - hb0["pings"]) / rounds, 1),
            # pings not sent: the worker was seen parked on its stdin
            "parked": round((hb1.get("parked", 0) - hb0.get("parked", 0)) / rounds, 1),
            "samples": round((hb1["samples"] - hb0["samples"]) / rounds, 1),
            "slices": hb1["slices_per_round"],
            "longest_slice_ms": round(1000 * hb1["longest_slice"], 2),
        },
    }


def supervisord_fleet(n: int) -> dict[str, Any]:
    d = workdir(f"sd{n}")
    s = Supervisord(d, n, f"{sys.executable} {HELLO}")
    running = s.start(n)
    assert s.proc is not None
    time.sleep(2)
    daemon_cpu, agents_cpu, rss = idle_window(s.proc.pid)
    status = statistics.median(
        timed([str(BIN / "supervisorctl"), "-c", str(s.conf), "status"]) for _ in range(3))
    stop = stop_time(s.proc)
    return {"running_s": round(running, 3), "idle_cpu_percent": round(daemon_cpu, 2),
            "agents_cpu_percent": round(agents_cpu, 2), "rss_mb": round(rss, 1),
            "status_s": round(status, 3), "stop_s": round(stop, 3)}


async def heavy_recovery(preload: bool, rounds: int) -> list[float]:
    from corral.supervisor import AgentSpec, State, Supervisor

    times = []
    async with Supervisor(heartbeat_interval=1.0) as sup:
        sup.add(AgentSpec(
            name="heavy", command=[sys.executable, str(ROOT / "examples" / "heavy.py")],
            env={"PYTHONPATH": f"{ROOT}:{ROOT / 'examples'}"}, backoff_initial=0.001,
            backoff_max=0.001, max_restarts=100, start_timeout=30,
            preload=["heavy_import"] if preload else []))
        r = await sup.wait_state("heavy", State.READY, timeout=60)
        for _ in range(rounds):
            assert r.pid is not None
            t0 = time.perf_counter()
            os.kill(r.pid, signal.SIGKILL)
            await sup.wait_event(lambda e: e.name == "heavy" and e.state == "ready", 60)
            times.append(time.perf_counter() - t0)
        assert sup.stats.cold_fallbacks == 0
    return times


def loadavg() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", default="100,300,1000")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--no-peer", action="store_true", help="skip supervisord")
    ap.add_argument("--no-heavy", action="store_true", help="skip crash -> Ready")
    ap.add_argument("--profile", type=Path, help="profile the daemon's loop into DIR")
    ap.add_argument("--stalls", action="store_true",
                    help="with --profile: uvloop and a stack sampler of stalls, no cProfile")
    ap.add_argument("--out", default="scale", help="bench/results/OUT.json")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    if args.quick:
        sizes = [s for s in sizes if s <= 300]
    out: dict[str, Any] = {"loadavg_before": loadavg(),
                           "fleet": {}}
    for n in sizes:
        runs = []
        for _ in range(args.runs):
            load = loadavg()[0]
            run: dict[str, Any] = {"load": load,
                                   "corral": corral_fleet(n, args.profile, args.stalls)}
            if not args.no_peer:
                run["supervisord"] = supervisord_fleet(n)
            runs.append(run)
        out["fleet"][str(n)] = runs
    if not args.no_heavy:
        cold = asyncio.run(heavy_recovery(False, 3))
        warm = asyncio.run(heavy_recovery(True, 5))
        out["heavy_crash_to_ready"] = {
            "cold_s": round(statistics.median(cold), 3),
            "preload_s": round(statistics.median(warm), 3),
            "ratio": round(statistics.median(warm) / statistics.median(cold), 3)}
    out["loadavg_after"] = loadavg()
    report(args.out, out)


if __name__ == "__main__":
    main()
