"""Issue 2 (supervisor core) benchmarks, side by side in one run.

    .venv/bin/python -m bench.bench_core [--quick]

1. hello-world SDK worker spawn -> Ready, beside a bare `python -c pass` spawn -> exit
2. SIGKILL a Ready worker -> Ready again, beside (1)'s cold start
3. 100 workers from nothing to all Ready (daemon launch -> READY=1), beside supervisord
   4.x launch -> all 100 programs RUNNING with startsecs=0
4. 100 idle workers at a 1 s heartbeat: the supervisor's CPU and RSS, beside supervisord's
   and circus's
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import uvloop

from corral.supervisor import AgentSpec, State, Supervisor

from .harness import (
    HELLO,
    PY,
    ROOT,
    Circusd,
    CorralDaemon,
    Supervisord,
    cleanup,
    corral_agents,
    idle_cost,
    median,
    report,
    workdir,
)

QUICK = "--quick" in sys.argv
N = 10 if QUICK else 40
SLEEPER = f'{PY} -c "import time; time.sleep(10**9)"'


def bare_python() -> list[float]:
    out = []
    for _ in range(N):
        t0 = time.perf_counter()
        subprocess.run([PY, "-c", "pass"], check=True)
        out.append(time.perf_counter() - t0)
    return out


async def sdk_ready_and_recovery() -> tuple[list[float], list[float]]:
    cold: list[float] = []
    recover: list[float] = []
    async with Supervisor(heartbeat_interval=1.0) as sup:
        for i in range(N):
            spec = AgentSpec(name=f"h{i}", command=[PY, str(HELLO)],
                             env={"PYTHONPATH": str(ROOT)}, backoff_initial=0.001,
                             backoff_max=0.001, max_restarts=1000)
            t0 = time.perf_counter()
            sup.add(spec)
            r = await sup.wait_state(spec.name, State.READY)
            cold.append(time.perf_counter() - t0)
            # crash -> Ready again (backoff 0.5-1 ms with these settings)
            assert r.pid is not None
            t0 = time.perf_counter()
            os.kill(r.pid, signal.SIGKILL)
            await sup.wait_state(spec.name, State.BACKOFF)
            await sup.wait_state(spec.name, State.READY)
            recover.append(time.perf_counter() - t0)
            await sup.remove(spec.name)
    return cold, recover


async def hundred_in_process() -> float:
    async with Supervisor(heartbeat_interval=1.0) as sup:
        t0 = time.perf_counter()
        sup.add(AgentSpec(name="w", command=[PY, str(HELLO)], env={"PYTHONPATH": str(ROOT)},
                          replicas=100, start_timeout=120))
        await sup.wait_all_serving(120)
        return time.perf_counter() - t0


def hundred_side_by_side(runs: int) -> dict[str, list[float]]:
    res: dict[str, list[float]] = {"corral_daemon": [], "supervisord": [], "corral_api": []}
    for _ in range(runs):
        d = workdir("c100")
        c = CorralDaemon(d, corral_agents(100, [PY, str(HELLO)]))
        try:
            res["corral_daemon"].append(c.start())
        finally:
            c.stop()
            cleanup(d)
        d = workdir("s100")
        s = Supervisord(d, 100, f"{PY} {HELLO}")
        try:
            res["supervisord"].append(s.start(100))
        finally:
            s.stop()
            cleanup(d)
        res["corral_api"].append(uvloop.run(hundred_in_process()))
    return res


def idle_side_by_side(window: float, runs: int) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {
        k: {"cpu_percent": [], "rss_mb": []} for k in ("corral", "supervisord", "circus")}
    d = workdir("idle")
    (d / "c").mkdir()
    c = CorralDaemon(d / "c",
                     corral_agents(100, [PY, str(HELLO)]), "heartbeat_interval = 1.0")
    s_dir = d / "s"
    s_dir.mkdir()
    s = Supervisord(s_dir, 100, f"{PY} {HELLO}")
    k_dir = d / "k"
    k_dir.mkdir()
    k = Circusd(k_dir, 100, SLEEPER)
    try:
        c.start()
        s.start(100)
        k.start()
        time.sleep(3)  # let start-up settle
        assert c.proc and s.proc and k.proc
        for _ in range(runs):
            for name, pid in (("corral", c.proc.pid), ("supervisord", s.proc.pid),
                              ("circus", k.proc.pid)):
                cpu, rss = idle_cost(pid, window)
                out[name]["cpu_percent"].append(round(cpu, 3))
                out[name]["rss_mb"].append(round(rss / 2**20, 1))
    finally:
        c.stop()
        s.stop()
        k.stop()
        cleanup(d)
    return out


def main() -> None:
    bare = bare_python()
    cold, recover = uvloop.run(sdk_ready_and_recovery())
    hundred = hundred_side_by_side(2 if QUICK else 5)
    idle = idle_side_by_side(5.0 if QUICK else 10.0, 2 if QUICK else 3)
    m_bare, m_cold, m_rec = median(bare), median(cold), median(recover)
    data = {
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]},
        "ready": {
            "bare_python_ms": round(m_bare * 1000, 2),
            "sdk_worker_ready_ms": round(m_cold * 1000, 2),
            "ratio": round(m_cold / m_bare, 2),
            "runs": N,
        },
        "crash_to_ready": {
            "median_ms": round(m_rec * 1000, 2),
            "cold_start_ms": round(m_cold * 1000, 2),
            "ratio": round(m_rec / m_cold, 2),
            "note": "backoff_initial = backoff_max = 0.001 s",
        },
        "hundred_to_ready": {
            "corral_daemon_s": round(median(hundred["corral_daemon"]), 3),
            "supervisord_s": round(median(hundred["supervisord"]), 3),
            "corral_api_s": round(median(hundred["corral_api"]), 3),
            "ratio_corral_over_supervisord": round(
                median(hundred["corral_daemon"]) / median(hundred["supervisord"]), 2),
            "runs": {k: [round(x, 3) for x in v] for k, v in hundred.items()},
        },
        "idle_100": {
            name: {"cpu_percent_median": round(median(v["cpu_percent"]), 3),
                   "rss_mb_median": round(median(v["rss_mb"]), 1),
                   "runs": v}
            for name, v in idle.items()
        },
    }
    report("core", data)


if __name__ == "__main__":
    main()
