"""Issue 15 item 4 (no host scan per exit), side by side in one run.

    .venv/bin/python -m bench.bench_contain [--quick]

N hello-world agents are started, then stopped all at once. Before containment, every
graceful stop and every exit walked the host's process table with psutil's recursive
`children()` (one full /proc scan each: 2 per agent). Now an exit asks containment for a
/proc pass, at most one per heartbeat tick for all agents, in a thread. Reported, on the
same live fleet: the old way's scans and their time (measured by running them), beside
the passes containment made during the stop and their time, and the loop's worst stall
while stopping (a probe timer every 5 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

import psutil
import uvloop

from corral.supervisor import AgentSpec, State, Supervisor
from corral.supervisor import containment as containment_mod

from .harness import HELLO, PY, ROOT

QUICK = "--quick" in sys.argv
N = 50 if QUICK else 300


async def probe(stalls: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t = loop.time()
        await asyncio.sleep(0.005)
        stalls.append(loop.time() - t - 0.005)


async def run() -> None:
    scan_time = [0.0]
    real_scan = containment_mod.scan_processes

    def timed_scan():  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        out = list(real_scan())
        scan_time[0] += time.perf_counter() - t0
        return iter(out)

    containment_mod.scan_processes = timed_scan  # type: ignore[assignment]
    async with Supervisor(heartbeat_interval=1.0, heartbeat_timeout=10.0) as sup:
        sup.add(AgentSpec(name="fleet", command=[PY, str(HELLO)], replicas=N,
                          env={"PYTHONPATH": str(ROOT)}, stop_timeout=5.0))
        for i in range(N):
            await sup.wait_state("fleet", State.READY, replica=i, timeout=120)
        pids = [r.pid for r in sup.agent("fleet").replicas if r.pid]
        host = len(psutil.pids())

        # the old way, on this very fleet: 2 recursive children() scans per agent
        t0 = time.perf_counter()
        for pid in pids:
            for _ in range(2):
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).children(recursive=True)
        old_seconds = time.perf_counter() - t0
        old_scans = 2 * len(pids)

        sweeps0 = sup.containment.sweeps
        scan_time[0] = 0.0
        stalls: list[float] = []
        done = asyncio.Event()
        p = asyncio.ensure_future(probe(stalls, done))
        t0 = time.perf_counter()
        await sup.stop("fleet")
        stop_seconds = time.perf_counter() - t0
        await asyncio.sleep(2.5)  # the passes the last exits asked for (next ticks)
        done.set()
        await p
        passes = sup.containment.sweeps - sweeps0
        new_seconds = scan_time[0]
    containment_mod.scan_processes = real_scan  # type: ignore[assignment]
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    stalls.sort()
    print(f"# {N} agents stopped at once; {host} processes on the host; load {' '.join(load)}")
    print(f"before (psutil children(recursive=True) x2 per agent): {old_scans} host scans, "
          f"{old_seconds:.3f} s on the loop")
    print(f"containment: {passes} /proc passes in a thread, {new_seconds:.3f} s "
          f"(stop took {stop_seconds:.2f} s)")
    print(f"ratio: {old_scans / max(passes, 1):.0f}x fewer host scans, "
          f"{old_seconds / max(new_seconds, 1e-9):.0f}x less scan time")
    print(f"loop during the stop: worst stall {stalls[-1] * 1000:.1f} ms, "
          f"p99 {stalls[int(len(stalls) * 0.99)] * 1000:.1f} ms")


if __name__ == "__main__":
    uvloop.run(run())
