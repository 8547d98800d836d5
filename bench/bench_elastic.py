"""Issue 24, elastic fleets: what a wake costs, and what the autoscaler costs.

1. Wake from zero to the task running (the task's queue wait: accepted -> started on a
   woken replica), an SDK hello agent with `warm = true`, beside a warm restart of the
   same agent measured in the same run (SIGKILL -> Ready, backoff 1 ms); the cold wake
   (no zygote) reported too. Python API, in this process.
2. The autoscaler's cost at N agents: a daemon with N warm hello agents, idle, 1 s
   heartbeat; its CPU over IDLE s with no autoscale, then a daemon with every agent
   under `[agents.NAME.autoscale]` (min 1, max 2: the decider runs for each, every
   second, and decides "steady"), the two one after the other in one run.

    .venv/bin/python -m bench.bench_elastic [--rounds 5] [--agents 100] [--idle 10]
        [--repeat 1] [--no-fleet]

The 1000-agent figure: `--agents 1000 --idle 20 --repeat 2` (a few minutes: four
daemons of 1000 agents, one after the other, off and on alternated).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from typing import Any

from .harness import (
    HELLO,
    ROOT,
    CorralDaemon,
    cleanup,
    hello_agents,
    idle_cost,
    report,
    workdir,
)


async def wake_and_restart(rounds: int) -> dict[str, Any]:
    from corral.supervisor import AgentSpec, State, Supervisor
    from corral.supervisor.config import Autoscale
    from corral.supervisor.elastic import Scaling

    def spec(name: str, warm: bool, auto: bool) -> AgentSpec:
        return AgentSpec(
            name=name, command=[sys.executable, str(HELLO)], env={"PYTHONPATH": str(ROOT)},
            warm=warm, backoff_initial=0.001, backoff_max=0.001, max_restarts=1000,
            start_timeout=60,
            autoscale=Autoscale(min_replicas=0, max_replicas=1, upscale_delay=0.0,
                                downscale_delay=0.05, idle_after=0.05) if auto else None)

    out: dict[str, Any] = {}
    async with Supervisor(heartbeat_interval=0.05) as sup:
        slept = asyncio.Event()

        def on_scaling(s: Scaling) -> None:
            if s.direction == "sleep":
                slept.set()

        sup.stream.subscribe(on_scaling, Scaling)
        # a warm restart: SIGKILL -> Ready again (a fork from the zygote)
        sup.add(spec("restart", warm=True, auto=False))
        r = await sup.wait_state("restart", State.READY, timeout=60)
        restarts = []
        for _ in range(rounds):
            assert r.pid is not None
            t0 = time.perf_counter()
            os.kill(r.pid, signal.SIGKILL)
            await sup.wait_event(lambda e: e.name == "restart" and e.state == "ready", 60)
            restarts.append(time.perf_counter() - t0)
        for warm in (True, False):
            name = "warm" if warm else "cold"
            sup.add(spec(name, warm=warm, auto=True))
            waits = []
            for _ in range(rounds):
                slept.clear()
                await asyncio.wait_for(slept.wait(), 60)
                assert not sup.agent(name).replicas
                res = await sup.tasks.run(name, {"name": "wake"})
                assert res.status == "succeeded", res
                info = await sup.tasks.info(res.task_id)
                assert info.queue_wait is not None
                waits.append(info.queue_wait)
            out[f"wake_{name}_s"] = round(statistics.median(waits), 4)
            await sup.remove(name)
        out["warm_restart_s"] = round(statistics.median(restarts), 4)
        out["ratio_wake_warm_to_warm_restart"] = round(
            out["wake_warm_s"] / out["warm_restart_s"], 2)
        out["rounds"] = rounds
        assert sup.stats.cold_fallbacks == 0
    return out


def fleet(n: int, autoscale: bool) -> str:
    """The harness's N hello agents, each under `[agents.wI.autoscale]` when `autoscale`."""
    auto = "".join(f"""
[agents.w{i}.autoscale]
min_replicas = 1
max_replicas = 2
downscale_delay = 60.0
""" for i in range(n)) if autoscale else ""
    return hello_agents(n) + auto


def idle_cpu(n: int, autoscale: bool, idle: float) -> dict[str, Any]:
    d = workdir("elastic")
    daemon = CorralDaemon(d, fleet(n, autoscale), "heartbeat_interval = 1.0")
    try:
        ready = daemon.start()
        assert daemon.proc is not None
        time.sleep(3.0)  # the start's own work settles (collections, the census)
        cpu, rss = idle_cost(daemon.proc.pid, idle)
        return {"ready_s": round(ready, 2), "idle_cpu_percent": round(cpu, 2),
                "rss_mb": round(rss / 2**20, 1)}
    finally:
        daemon.stop()
        cleanup(d)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=1,
                    help="daemons of each kind, alternated (off, on, on, off, ...): the "
                         "medians are reported")
    ap.add_argument("--no-fleet", action="store_true", help="skip the autoscaler's cost")
    args = ap.parse_args()
    out: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    out["wake"] = asyncio.run(wake_and_restart(args.rounds))
    if not args.no_fleet:
        runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
        for i in range(args.repeat):
            order = (False, True) if i % 2 == 0 else (True, False)
            for autoscale in order:
                runs[autoscale].append(idle_cpu(args.agents, autoscale, args.idle))
        off, on = (statistics.median(r["idle_cpu_percent"] for r in runs[k])
                   for k in (False, True))
        out["fleet"] = {"agents": args.agents, "idle_s": args.idle, "repeat": args.repeat,
                        "autoscale_off": runs[False], "autoscale_on": runs[True],
                        "median_off": off, "median_on": on,
                        "difference_points": round(on - off, 2)}
    out["load_after"] = os.getloadavg()[0]
    report("elastic" if args.agents == 100 else f"elastic-{args.agents}", out)


if __name__ == "__main__":
    main()
