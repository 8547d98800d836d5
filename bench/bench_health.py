"""Health checks' cost (issue 24): a Supervisor in this process runs N agents of one
replica each, idle, without [health] and then with a readiness and a liveness check of
the worker's (`health/check`, the SDK's @health_check) every INTERVAL seconds; the
supervisor's CPU (this process) and the workers' (its children) are measured over a
window, and the CPU per check is derived. Without [health] the health code does no work
at all: the `off` figure is the idle fleet's own.

    .venv/bin/python -m bench.bench_health [--agents 100] [--window 10] [--interval 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import uvloop

from corral.supervisor import AgentSpec, Supervisor
from corral.supervisor.config import CheckSpec, HealthSpec

from .harness import ROOT, report

AGENT = """\
from corral.worker import health_check, run

@health_check("ready")
def ready():
    return True

@health_check("live")
def live():
    return None

run(lambda task, ctx: task)
"""


def children_cpu() -> float:
    total = 0.0
    for c in psutil.Process().children(recursive=True):
        try:
            t = c.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


async def fleet(n: int, health: HealthSpec | None, window: float, script: Path
                ) -> dict[str, Any]:
    async with Supervisor(heartbeat_interval=1.0) as sup:
        for i in range(n):
            sup.add(AgentSpec(name=f"a{i}", command=[sys.executable, str(script)],
                              env={"PYTHONPATH": str(ROOT)}, start_timeout=120.0,
                              health=health))
        await sup.wait_all_serving(timeout=600)
        if health is not None:
            await sup.wait_for(lambda: all(r.health_ready for r in sup.replicas()), 120)
        await asyncio.sleep(2.0)  # the start's tail (imports, first pings) is not idle
        board = sup.health_board
        checks0, cpu0, kids0 = board.checks, time.process_time(), children_cpu()
        work0 = sup.heartbeat_work.busy_seconds
        t0 = time.perf_counter()
        await asyncio.sleep(window)
        wall = time.perf_counter() - t0
        cpu, kids = time.process_time() - cpu0, children_cpu() - kids0
        checks = board.checks - checks0
        failed = sum(board.failures.values())
        return {"supervisor_cpu_percent": round(100 * cpu / wall, 2),
                "workers_cpu_percent": round(100 * kids / wall, 2),
                "heartbeat_busy_ms_per_s": round(
                    1000 * (sup.heartbeat_work.busy_seconds - work0) / wall, 3),
                "checks_per_s": round(checks / wall, 1), "checks_failed": failed,
                "_cpu": cpu, "_checks": checks}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=1.0)
    args = ap.parse_args()
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    with tempfile.TemporaryDirectory(prefix="corral-bench-health-") as d:
        script = Path(d) / "agent.py"
        script.write_text(AGENT)
        check = {"interval": args.interval, "timeout": 5.0}
        health = HealthSpec(readiness=CheckSpec(check="ready", **check),
                            liveness=CheckSpec(check="live", **check))
        off = uvloop.run(fleet(args.agents, None, args.window, script))
        on = uvloop.run(fleet(args.agents, health, args.window, script))
    per_check = (on["_cpu"] - off["_cpu"]) / on["_checks"] if on["_checks"] else None
    for r in (off, on):
        del r["_cpu"], r["_checks"]
    report("health", {
        "command": "python -m bench.bench_health " + " ".join(sys.argv[1:]),
        "agents": args.agents, "interval": args.interval, "window": args.window,
        "load_before": load, "cpus": os.cpu_count(),
        "health_off": off, "health_on": on,
        "supervisor_cpu_us_per_check": round(1e6 * per_check, 1) if per_check else None,
    })


if __name__ == "__main__":
    main()
