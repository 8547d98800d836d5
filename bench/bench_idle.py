"""Issue 38, items 4 and 5: a fleet of N agents to Ready, then idle, corral beside
supervisord, runners alternating in one run.

    .venv/bin/python -m bench.bench_idle [--agents 1000] [--window 30] [--rounds 2]
        [--cold] [--runners corral,supervisord] [--tree DIR]

- corral: the daemon with N SDK hello agents (`warm = true` unless `--cold`), 1 s
  heartbeat: launch -> READY=1, then 5 s to settle and a window of `--window` seconds:
  the daemon's CPU, and what its heartbeat did a round (`corral stats`: visits, looks
  at parked workers, usage samples; `look_every`, the seconds between two looks at a
  quiet worker);
- supervisord 4.3.0: launch -> N programs RUNNING (startsecs=0), 2 s, the same window.

`--tree DIR` adds a runner `tree`: the corral of another checkout (a base exported with
`git archive`), its daemon started with DIR first on its path; A/B in one sitting.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from . import harness
from .harness import BIN, HELLO, ROOT, CorralDaemon, Supervisord, corral_agents, report, workdir

ARGS = sys.argv[1:]


def arg(name: str, default: str) -> str:
    return ARGS[ARGS.index(name) + 1] if name in ARGS else default


N = int(arg("--agents", "1000"))
WINDOW = float(arg("--window", "30"))
ROUNDS = int(arg("--rounds", "2"))
COLD = "--cold" in ARGS
TREE = arg("--tree", "")
RUNNERS = arg("--runners", "corral,supervisord" + (",tree" if TREE else "")).split(",")


def cpu_of(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def supervisord() -> dict[str, Any]:
    s = Supervisord(workdir(f"idle-sd{N}"), N, f"{sys.executable} {HELLO}")
    up = s.start(N)
    assert s.proc is not None
    time.sleep(2)
    p = psutil.Process(s.proc.pid)
    c0, t0 = cpu_of(p), time.perf_counter()
    time.sleep(WINDOW)
    cpu = 100 * (cpu_of(p) - c0) / (time.perf_counter() - t0)
    s.proc.send_signal(signal.SIGTERM)
    s.proc.wait(300)
    return {"up_s": round(up, 2), "idle_cpu_percent": round(cpu, 3),
            "load": round(os.getloadavg()[0], 2)}


def corral(tree: Path) -> dict[str, Any]:
    harness.ENV["PYTHONPATH"] = str(tree)
    launcher = [sys.executable, "-c",
                f"import sys; sys.path.insert(0, {str(tree)!r}); sys.argv[0] = 'corral'; "
                "from corral.cli.entry import main; main()", "daemon"]
    c = CorralDaemon(workdir(f"idle-{tree.name}{N}"),
                     corral_agents(N, [sys.executable, str(HELLO)],
                                   extra="" if COLD else "warm = true"),
                     extra="heartbeat_interval = 1.0", launcher=launcher)
    try:
        up = c.start()
        assert c.proc is not None
        p = psutil.Process(c.proc.pid)

        def beat() -> dict[str, Any]:
            out = subprocess.run([str(BIN / "corral"), "--socket", str(c.sock), "stats",
                                  "--json"], capture_output=True, check=True).stdout
            hb: dict[str, Any] = json.loads(out)["heartbeat"]
            return hb

        time.sleep(5)
        h0, c0, t0 = beat(), cpu_of(p), time.perf_counter()
        time.sleep(WINDOW)
        cpu = 100 * (cpu_of(p) - c0) / (time.perf_counter() - t0)
        h1 = beat()
    finally:
        c.stop()
    rounds = max(1, h1["rounds"] - h0["rounds"])
    return {"up_s": round(up, 2), "idle_cpu_percent": round(cpu, 3),
            "load": round(os.getloadavg()[0], 2),
            "per_round": {k: round((h1[k] - h0[k]) / rounds, 1)
                          for k in ("visits", "parked", "pings", "samples")},
            "look_every_s": round(h1.get("look_every", 0.0), 1),
            "heartbeat_busy_ms_a_round": round(
                1000 * (h1["busy_seconds"] - h0["busy_seconds"]) / rounds, 2)}


def main() -> dict[str, Any]:
    out: dict[str, Any] = {"agents": N, "cold": COLD, "window_s": WINDOW,
                           "loadavg_start": os.getloadavg()[0]}
    runs: dict[str, list[dict[str, Any]]] = {r: [] for r in RUNNERS}
    for _ in range(ROUNDS):
        for r in RUNNERS:
            got = (supervisord() if r == "supervisord"
                   else corral(Path(TREE) if r == "tree" else ROOT))
            runs[r].append(got)
            print(f"{r}: {got}", flush=True)
    out["runs"] = runs
    out["loadavg_end"] = os.getloadavg()[0]
    return out


if __name__ == "__main__":
    report(f"idle_{N}{'_cold' if COLD else ''}", main())
