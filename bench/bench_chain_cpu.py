"""Issue 90: the daemon's CPU a worker-link tool call, this tree beside another (the tree
before a change, e.g. the one chain every door's call passes), paired in one sitting.

    .venv/bin/python -m bench.bench_chain_cpu --vs TREE [--calls 2000] [--rounds 5] [--policy]

A daemon from each tree (`corral daemon`, the tree first on PYTHONPATH; the agent, the
tool server and this script are this tree's), each serving bench/tool_agent.py (one
replica, `retries = 1`: every call a journaled step of its task) and the minimal stdio MCP
server (bench/min_mcp_server.py). A round runs, on each daemon in turn, one task making
CALLS sequential `ctx.call_tool("min__echo")` over its worker link; the daemon process's
user + system CPU over the task, divided by CALLS, is the figure (the shared cores' load
moves it least), and the task's wall time by CALLS beside it. Medians of the rounds, per
tree, and A/B. `--policy`: with the links a call can be given on, as bench_policy has
them: 20 `[[policy]]` rules (18 that do not match the tool, one that matches it and tests
an argument, the last allowing it) and the server's taint marks (the tool sensitive: each
call looks up its task's taint). Every daemon is stopped by its pid at the end.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from .bench_cluster import Client
from .bench_scale import loadavg
from .harness import PY, ROOT, CorralDaemon, cleanup, report, workdir

AGENT = ROOT / "bench" / "tool_agent.py"
SERVER = ROOT / "bench" / "min_mcp_server.py"


def policy() -> str:
    """bench_policy's 20 rules and taint marks, as the config file writes them."""
    rules = "".join(f"""
[[policy]]
name = "other {i}"
effect = "{'deny' if i % 2 else 'approve'}"
match = {{ tool = "other{i}__*" }}
when = {{ "arguments.path" = {{ under = "/workspace" }} }}
""" for i in range(18))
    return rules + """
[[policy]]
name = "no secret"
effect = "deny"
match = { tool = "min__echo" }
when = { "arguments.text" = { in = ["secret", "password"] } }

[[policy]]
name = "echo"
effect = "allow"
match = { tool = "min__*" }
"""


def agents(with_policy: bool) -> str:
    marks = 'tools_untrusted = ["fetch"]\ntools_sensitive = ["echo"]\n' if with_policy else ""
    return (policy() if with_policy else "") + f"""
[agents.caller]
command = ["{PY}", "{AGENT}"]
env = {{ PYTHONPATH = "{ROOT}" }}
tools = ["min__*"]
max_tool_calls_per_task = 1000000
retries = 1

[mcp_servers.min]
command = ["{PY}", "{SERVER}"]
start = "eager"
{marks}"""


class Daemon:
    def __init__(self, tree: Path, with_policy: bool) -> None:
        self.tree = tree
        self.dir = workdir("chaincpu")
        subprocess.run([PY, "-m", "compileall", "-q", str(tree / "corral")], check=True)
        launcher = [PY, "-c", "import sys; sys.path.insert(0, sys.argv.pop(1));"
                    " from corral.cli.entry import main; main()", str(tree), "daemon"]
        self.daemon = CorralDaemon(self.dir, agents(with_policy), launcher=launcher)
        self.daemon.start()
        assert self.daemon.proc is not None
        self.proc = psutil.Process(self.daemon.proc.pid)
        self.client = Client(self.daemon.sock)
        self.task(50)  # warm: the worker, the server's session, the first routes

    def task(self, calls: int) -> dict[str, float]:
        t = self.proc.cpu_times()
        before = t.user + t.system
        t0 = time.perf_counter()
        got = self.client.call("tasks.run", {"agent": "caller", "input": {"calls": calls}})
        wall = time.perf_counter() - t0
        t = self.proc.cpu_times()
        assert got.get("status") == "succeeded", got
        return {"cpu_us": (t.user + t.system - before) / calls * 1e6,
                "wall_us": wall / calls * 1e6}

    def close(self) -> None:
        self.client.close()
        self.daemon.stop()
        cleanup(self.dir)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vs", type=Path, required=True, help="the other checkout (B)")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--policy", action="store_true")
    args = ap.parse_args()
    result: dict[str, Any] = {"load_before": loadavg(), "calls": args.calls,
                              "rounds": args.rounds, "policy": args.policy}
    trees = {"A": ROOT, "B": args.vs.resolve()}
    daemons: dict[str, Daemon] = {}
    try:
        for name, tree in trees.items():
            daemons[name] = Daemon(tree, args.policy)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, d in daemons.items():  # A B A B ...: drift falls on both alike
                runs[name].append(d.task(args.calls))
        for name in trees:
            result[name] = {"tree": str(trees[name]),
                            "cpu_us": round(statistics.median(r["cpu_us"] for r in runs[name]), 1),
                            "wall_us": round(statistics.median(r["wall_us"] for r in runs[name]),
                                             1),
                            "rounds": [{k: round(v, 1) for k, v in r.items()}
                                       for r in runs[name]]}
        result["cpu_a_over_b"] = round(statistics.median(
            a["cpu_us"] / b["cpu_us"] for a, b in zip(runs["A"], runs["B"], strict=True)), 3)
    finally:
        for d in daemons.values():
            d.close()
    result["load_after"] = loadavg()
    report("chain_cpu", result)


if __name__ == "__main__":
    main()
