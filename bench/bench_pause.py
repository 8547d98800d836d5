"""Issue 24: pause -> resume of a replica, round trip (goal: at most 10 ms), side by side
with the kernel's own floor for the same mechanism, in one run.

    .venv/bin/python -m bench.bench_pause [--quick]

N replicas of the hello agent, K round trips each (pause returns once the process is
stopped, or its cgroup frozen; resume once it serves again), one at a time, through
`Supervisor.pause` / `resume` (what `agents.pause` runs, without the socket). Two paths:

- SIGSTOP of the process group (no delegated cgroup: `cgroups = "off"`); beside it, by
  hand on the same processes, `kill -STOP`, a look at /proc until it says stopped, then
  `kill -CONT`.
- cgroup.freeze (a delegated cgroup per replica): run in a child process placed in a
  cgroup made for it and marked delegated as systemd marks one (root and a writable
  cgroup v2 needed; skipped otherwise); beside it, by hand, cgroup.freeze 1, wait for
  `frozen 1` in cgroup.events, cgroup.freeze 0. (`docker pause` is this: runc writes
  the container's cgroup.freeze and waits for frozen.)
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from corral.supervisor import AgentSpec, State, Supervisor
from corral.supervisor.containment import (
    cgroup_kill,
    cgroup_pids,
    own_cgroup,
    read_stat,
    remove_cgroup,
    set_frozen,
    wait_frozen,
)

from .harness import HELLO, PY, ROOT

QUICK = "--quick" in sys.argv
N = 4 if QUICK else 20
K = 20 if QUICK else 100


def stats(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"median_ms": round(statistics.median(ms), 3),
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 3),
            "max_ms": round(ms[-1], 3), "n": len(ms)}


async def timed(fn: Callable[[], Awaitable[None]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return (time.perf_counter() - t0) * 1000


async def stopped(pid: int) -> None:
    delay = 0.0002
    while (st := read_stat(pid)) is not None and st.state not in ("T", "t"):
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def measure(cgroups: str) -> dict[str, dict[str, float]]:
    async with Supervisor(heartbeat_interval=1.0, heartbeat_timeout=10.0,
                          cgroups=cgroups) as sup:  # type: ignore[arg-type]
        sup.add(AgentSpec(name="p", command=[PY, str(HELLO)], replicas=N,
                          env={"PYTHONPATH": str(ROOT)}, stop_timeout=5.0))
        for i in range(N):
            await sup.wait_state("p", State.READY, replica=i, timeout=120)
        reps = sup.agent("p").replicas
        ours: list[float] = []
        raw: list[float] = []
        for _ in range(K):
            for r in reps:
                async def trip(i: int = r.index) -> None:
                    await sup.pause("p", i)
                    sup.resume("p", i)

                ours.append(await timed(trip))
                assert r.state == State.READY and r.restarts == 0
        for _ in range(K):
            for r in reps:
                assert r.process is not None
                pid, cg = r.process.pid, sup.containment.cgroup_of(r.process.token)

                async def by_hand(pid: int = pid, cg: str | None = cg) -> None:
                    if cg is None:
                        os.killpg(pid, signal.SIGSTOP)
                        await stopped(pid)
                        os.killpg(pid, signal.SIGCONT)
                    else:
                        set_frozen(cg, True)
                        assert await wait_frozen(cg, 2.0)
                        set_frozen(cg, False)

                raw.append(await timed(by_hand))
        mode = "cgroup" if sup.containment.cgroup_of(reps[0].process.token) else "sigstop"  # type: ignore[union-attr]
        # a task after all that: every replica still serves, nothing restarted
        outs = await asyncio.gather(*(sup.tasks.run("p", {"name": "x"}) for _ in range(N)))
        assert all(o.status == "succeeded" for o in outs)
        assert sum(r.restarts for r in reps) == 0
    return {"mode": mode, "corral": stats(ours), "by_hand": stats(raw)}  # type: ignore[dict-item]


def in_delegated_cgroup() -> dict[str, dict[str, float]] | str:
    """The cgroup path, measured by a child process in a delegated cgroup of its own."""
    if os.geteuid() != 0:
        return "skipped: needs root to make a cgroup"
    own = own_cgroup()
    if own is None or not os.access(own, os.W_OK):
        return "skipped: no writable cgroup v2"
    cg = Path(own) / f"corral-bench-pause-{os.getpid()}-{secrets.token_hex(3)}"
    cg.mkdir()
    try:
        os.setxattr(cg, "trusted.delegate", b"1")
        argv = ["/bin/sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$@"', "in-cgroup",
                PY, "-m", "bench.bench_pause", "--child", *sys.argv[1:]]
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        if out.returncode != 0:
            return f"failed: {out.stderr[-2000:]}"
        return json.loads(out.stdout.splitlines()[-1])  # type: ignore[no-any-return]
    finally:
        for sub in sorted(cg.rglob("*"), reverse=True):
            if sub.is_dir():
                cgroup_kill(str(sub))
        cgroup_kill(str(cg))
        deadline = time.monotonic() + 10
        while any(cgroup_pids(str(p)) for p in [cg, *cg.rglob("*")] if p.is_dir()) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        remove_cgroup(str(cg))


def main() -> None:
    if "--child" in sys.argv:
        print(json.dumps(uvloop.run(measure("on"))))
        return
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    sig = uvloop.run(measure("off"))
    frz = in_delegated_cgroup()
    print(f"# pause -> resume round trip, {N} replicas x {K} each, one at a time; "
          f"load {load}")
    for name, res in (("SIGSTOP of the group", sig), ("cgroup.freeze", frz)):
        if isinstance(res, str):
            print(f"{name}: {res}")
            continue
        c, h = res["corral"], res["by_hand"]
        print(f"{name} ({res['mode']}): corral pause+resume median {c['median_ms']} ms, "
              f"p99 {c['p99_ms']} ms, max {c['max_ms']} ms; by hand median "
              f"{h['median_ms']} ms, p99 {h['p99_ms']} ms")
    with open("/proc/loadavg") as f:
        print(f"# load after {' '.join(f.read().split()[:3])}")


if __name__ == "__main__":
    main()
