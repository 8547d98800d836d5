"""Issue 75: what policy on every call costs the gateway hop, side by side in one sitting.

    .venv/bin/python -m bench.bench_policy [--quick]

One supervisor, the minimal MCP stdio server (`bench/min_mcp_server.py`) and an SDK
agent (`bench/tool_agent.py`) making 20 sequential tool calls a task, one task at a
time; the task path's tool interceptors switched per task, the three modes taking
turns task by task, each first in its turn (so that the machine's load drifts alike
under each):

- bare: no interceptor on the call at all;
- shipped: the approvals interceptor with no rules and the pin gate (the daemon's chain
  before policy rules);
- policy: the same with 20 `[[policy]]` rules (18 that do not match the tool, one that
  matches it and tests an argument, the last allowing it) and the server's taint marks
  (the tool sensitive: each call looks up its task's taint).

A call's cost is (median task) / 20, and a mode's added cost per call its median task
less bare's, / 20. The goal: policy - bare <= 50 us at p50. Beside it, the judging
alone, in process (`PolicyGuard.judge` per call, no I/O).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import uvloop

from corral.supervisor import AgentSpec, McpServerSpec, Supervisor
from corral.supervisor.config import Config, PolicyMatch, PolicyRule, PolicyTest
from corral.supervisor.lifecycle import SERVING
from corral.supervisor.policy import PolicyGuard
from corral.supervisor.tasks.approvals import Approvals
from corral.supervisor.tasks.interceptors import TaskInterceptor, TaskPath, ToolCall
from corral.supervisor.tasks.pingate import PinGate

from .harness import PY, ROOT, report

QUICK = "--quick" in sys.argv
TASKS = 30 if QUICK else 100  # a mode's tasks a round
ROUNDS = 3 if QUICK else 10
CALLS = 20  # tool calls a task
SERVER = ROOT / "bench" / "min_mcp_server.py"
MODES = ("bare", "shipped", "policy")


def twenty_rules() -> list[PolicyRule]:
    others = [PolicyRule(name=f"other {i}", match=PolicyMatch(tool=f"other{i}__*"),
                         when={"arguments.path": PolicyTest(under="/workspace")},
                         effect="deny" if i % 2 else "approve") for i in range(18)]
    return [*others,
            PolicyRule(name="no secret", match=PolicyMatch(tool="min__echo"),
                       when={"arguments.text": PolicyTest(in_=["secret", "password"])},
                       effect="deny"),
            PolicyRule(name="echo", match=PolicyMatch(tool="min__*"), effect="allow")]


def policy_config() -> Config:
    server = McpServerSpec(name="min", command=[PY, str(SERVER)], start="eager",
                           tools_untrusted=["fetch"], tools_sensitive=["echo"])
    return Config(policy=twenty_rules(), mcp_servers={"min": server})


class Switch(TaskInterceptor):
    """The modes' chains, one of them on the call at a time (a bench's switch)."""

    def __init__(self) -> None:
        self.mode = "bare"
        self.shipped = (Approvals(None), PinGate())
        cfg = policy_config()
        self.policy = (Approvals(PolicyGuard(lambda: cfg)), PinGate())

    def bind(self, path: TaskPath) -> None:
        for member in (*self.shipped, *self.policy):
            member.bind(path)

    def intercept_tool_call(self, call: ToolCall, next: Callable[[ToolCall], Any]) -> Any:
        if self.mode == "bare":
            return next(call)
        approvals, pins = self.shipped if self.mode == "shipped" else self.policy
        return approvals.intercept_tool_call(call, partial(pins.intercept_tool_call,
                                                           next=next))


def judging_alone(sup: Supervisor) -> float:
    """µs of `PolicyGuard.judge` a call (the rules, the taint lookup), in process."""
    [replica] = sup.agents["caller"].replicas
    cfg = policy_config()
    guard = PolicyGuard(lambda: cfg)
    arguments = {"text": "7"}
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        guard.judge("task", replica, "default", "tool", "min__echo",
                    {"arguments": arguments})
    return (time.perf_counter() - t0) / n * 1e6


async def main() -> dict[str, Any]:
    env = {"PYTHONPATH": str(ROOT)}
    results: dict[str, Any] = {"loadavg_start": os.getloadavg()[0], "tasks": TASKS,
                               "rounds": ROUNDS, "calls_per_task": CALLS, "rules": 20}
    switch = Switch()
    async with Supervisor(interceptors=[switch]) as sup:
        sup.add_mcp_server(McpServerSpec(name="min", command=[PY, str(SERVER)],
                                         start="eager"))
        sup.add(AgentSpec(name="caller", command=[PY, str(ROOT / "bench" / "tool_agent.py")],
                          env=env, tools=["min__*"], max_tool_calls_per_task=CALLS + 1))
        await sup.wait_state("caller", SERVING)

        async def one(mode: str) -> float:
            switch.mode = mode
            while True:
                t0 = time.perf_counter()
                r = await sup.tasks.run("caller", {"calls": CALLS})
                took = time.perf_counter() - t0
                if r.status == "succeeded":
                    return took
                # (a loaded machine's server may be taken for hung and restarted: the
                # task is run again, counted, never timed)
                assert r.error is not None and "MCP server min" in r.error.message, r.error
                results["tasks_run_again"] = results.get("tasks_run_again", 0) + 1
                await sup.wait_state("caller", SERVING)

        for _ in range(10):  # warm every path
            for mode in MODES:
                await one(mode)
        acc: dict[str, list[float]] = {m: [] for m in MODES}
        for i in range(ROUNDS * TASKS):
            # each mode first, second and third in turn (none always follows another)
            for mode in MODES[i % 3:] + MODES[:i % 3]:
                acc[mode].append(await one(mode))
        results["judged_alone_us"] = round(judging_alone(sup), 2)
    per_call = {m: statistics.median(v) / CALLS * 1e6 for m, v in acc.items()}
    results.update({f"{m}_call_p50_us": round(v, 1) for m, v in per_call.items()})
    for m in ("shipped", "policy"):
        results[f"{m}_added_p50_us"] = round(per_call[m] - per_call["bare"], 1)
    results["loadavg_end"] = os.getloadavg()[0]
    print(f"a call's p50: bare {per_call['bare']:.0f} us, shipped chain "
          f"{per_call['shipped']:.0f} us, 20 rules + pins + taint {per_call['policy']:.0f} "
          f"us: policy adds {results['policy_added_p50_us']} us (goal <= 50); judging "
          f"alone {results['judged_alone_us']} us; load {results['loadavg_end']:.1f}",
          flush=True)
    return results


if __name__ == "__main__":
    report("bench_policy", uvloop.run(main()))
