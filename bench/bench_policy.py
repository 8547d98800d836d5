"""Issue 75: what 20 policy rules and taint cost a tool call, side by side in one sitting.

    .venv/bin/python -m bench.bench_policy [--quick]

Two daemons of this tree (bench_chain_cpu's: bench/tool_agent.py making sequential calls of
the minimal stdio MCP server's tool over its worker link, one journaled step a call), one
with the config's default links (the pin gate, the approval check with no rules, labels,
the budget's count, the journal) and one with every link a call can be given on: 20
`[[policy]]` rules (18 that do not match the tool, one that matches it and tests an
argument, the last allowing it) and the server's taint marks (the tool sensitive: each
call looks up its task's taint). Their tasks alternate, each daemon first in turn, so the
machine's drift falls on both alike.

A call's cost is (a task's wall time) / CALLS; the rules' added cost is the policy
daemon's median less the default's. The goal: ≤ 50 µs at p50. The daemons' CPU a call is
beside it. There is no "bare" mode since the one chain (issue 86): every call passes every
link, so the rules' cost is what a config can add.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

from .bench_chain_cpu import Daemon
from .bench_scale import loadavg
from .harness import ROOT, report

QUICK = "--quick" in sys.argv
TASKS = 10 if QUICK else 40  # tasks a daemon
CALLS = 300  # tool calls a task (its CPU read in 10-ms ticks)


def main() -> dict[str, Any]:
    results: dict[str, Any] = {"load_before": loadavg(), "tasks": TASKS,
                               "calls_per_task": CALLS, "rules": 20}
    daemons: dict[str, Daemon] = {}
    try:
        daemons["default"] = Daemon(ROOT, with_policy=False)
        daemons["policy"] = Daemon(ROOT, with_policy=True)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in daemons}
        order = list(daemons)
        for i in range(TASKS):
            for name in order[i % 2:] + order[:i % 2]:
                runs[name].append(daemons[name].task(CALLS))
    finally:
        for d in daemons.values():
            d.close()
    for name, got in runs.items():
        results[f"{name}_call_p50_us"] = round(statistics.median(r["wall_us"] for r in got), 1)
        results[f"{name}_cpu_us"] = round(statistics.median(r["cpu_us"] for r in got), 1)
    results["policy_added_p50_us"] = round(
        results["policy_call_p50_us"] - results["default_call_p50_us"], 1)
    results["load_after"] = loadavg()
    print(f"a call's p50: default links {results['default_call_p50_us']:.0f} us, 20 rules + "
          f"pins + taint {results['policy_call_p50_us']:.0f} us: the rules add "
          f"{results['policy_added_p50_us']} us (goal <= 50); the daemon's CPU a call "
          f"{results['default_cpu_us']:.0f} / {results['policy_cpu_us']:.0f} us; load "
          f"{results['load_after']}", flush=True)
    return results


if __name__ == "__main__":
    report("bench_policy", main())
