"""Teams (docs/teams.md): what a team's call adds over its members' tasks.

    .venv/bin/python -m bench.bench_teams [--quick]

The real daemon in this process (its SQLite state database, `journal_sync` normal), SDK
workers (examples/hello.py, 4 replicas; a leader that calls a member once per task).
Measured, each the median (p50) and p99 of sequential calls:

- a task alone: `tasks.run` through the engine
- a route call by rule: the call's row, the member's step (two commits), the member's task
- a broadcast of 4 members, against the same 4 tasks gathered
- a coordinate call whose leader calls one member: two tasks in sequence (the leader's,
  the member's inside it), against two tasks alone
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .harness import supervisor_section

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

LEADER = '''
from corral.worker import run

def handle(inp, ctx):
    got = ctx.call_tool("desk__m0", {"input": {"name": "x"}})
    return got["structuredContent"]["output"]

run(handle)
'''


def config(state: Path) -> str:
    (state / "leader.py").write_text(LEADER)
    members = "".join(textwrap.dedent(f"""
        [agents.m{i}]
        command = ["{PY}", "{ROOT}/examples/hello.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        replicas = 2
    """) for i in range(4))
    return supervisor_section(state) + textwrap.dedent(f"""

        [agents.lead]
        command = ["{PY}", "{state}/leader.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        replicas = 2

        [teams.pick]
        mode = "route"
        members = ["m0", "m1"]
        default = "m1"
        [[teams.pick.rules]]
        ref = "$input.name"
        equals = "x"
        member = "m0"

        [teams.all]
        mode = "broadcast"
        members = ["m0", "m1", "m2", "m3"]

        [teams.desk]
        mode = "coordinate"
        leader = "lead"
        members = ["m0"]
    """) + members


def _p(xs: list[float], q: float) -> float:
    return sorted(xs)[max(0, int(len(xs) * q) - 1)] * 1e3


async def _timed(n: int, one: Callable[[], Awaitable[Any]]) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await one()
        out.append(time.perf_counter() - t0)
    return out


async def measure(n: int) -> dict[str, float]:
    from corral.daemon.daemon import Daemon
    from corral.supervisor import State

    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-teams-"))
    try:
        (tmp / "corral.toml").write_text(config(tmp))
        d = Daemon(tmp / "corral.toml")
        run = asyncio.ensure_future(d.run())
        await d.set_up.wait()
        sup = d.sup
        for name, agent in sup.agents.items():
            for i in range(len(agent.replicas)):
                await sup.wait_state(name, State.READY, replica=i, timeout=30)
        teams = d.services.teams

        async def call(team: str, inp: Any) -> None:
            c = await teams.start(team, inp)
            await teams.wait(c.call_id, None)
            assert c.status == "succeeded", c.error

        async def gathered() -> None:
            await asyncio.gather(*(sup.tasks.run(f"m{i}", {"name": "x"}) for i in range(4)))

        for _ in range(20):  # warm
            await sup.tasks.run("m0", {"name": "w"})
            await call("desk", None)
        out: dict[str, float] = {}
        for key, one in (("task", lambda: sup.tasks.run("m0", {"name": "x"})),
                         ("route", lambda: call("pick", {"name": "x"})),
                         ("four_tasks", gathered),
                         ("broadcast4", lambda: call("all", {"name": "x"})),
                         ("coordinate", lambda: call("desk", None))):
            xs = await _timed(n, one)
            out[f"{key}_ms_p50"] = round(statistics.median(xs) * 1e3, 3)
            out[f"{key}_ms_p99"] = round(_p(xs, 0.99), 3)
        out["route_overhead_ms_p50"] = round(out["route_ms_p50"] - out["task_ms_p50"], 3)
        out["broadcast4_overhead_ms_p50"] = round(
            out["broadcast4_ms_p50"] - out["four_tasks_ms_p50"], 3)
        # a coordinate call is two tasks in sequence (the leader's, the member's inside it)
        out["coordinate_overhead_ms_p50"] = round(
            out["coordinate_ms_p50"] - 2 * out["task_ms_p50"], 3)
        d.request_stop()
        await asyncio.wait_for(run, 30)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    for k, v in asyncio.run(measure(100 if args.quick else 400)).items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
