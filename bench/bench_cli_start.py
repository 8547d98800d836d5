"""The CPU of one `corral` command as a whole process (issue 53: the suite starts the CLI
~1,900 times, and an operator waits on each): two trees' CLI A/B, the same venv.

Each tree is a copy of corral's sources (`git archive`d into a directory and byte-compiled
with `python -m compileall -q corral`: where PYTHONDONTWRITEBYTECODE is set a source with
no current .pyc is compiled on every run). A command is run as the suite runs it,
`python -m corral ...` with PYTHONPATH set to the tree (and, for `status`, also through
the venv's `corral` console script), against one real daemon (tree B's, two hello agents)
or an unreachable socket; N rounds, each running every command with A then B. A run's
CPU is the user+sys its process tree used (`getrusage(RUSAGE_CHILDREN)` before and
after). Usage:

    .venv/bin/python -m bench.bench_cli_start --a /tmp/A --b /tmp/B [-n 40]
        -> bench/results/cli_start.json, and a table on stdout
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from .harness import BIN, PY, CorralDaemon, cleanup, report, workdir


def cpu(argv: list[str], tree: Path) -> tuple[float, int]:
    """The user+sys seconds of one run of `argv` with `tree` on PYTHONPATH, and its exit
    code."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, env=env, cwd=tree, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            done.returncode)


def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def median(xs: list[float]) -> float:
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", type=Path, required=True, help="tree A (this branch)")
    ap.add_argument("--b", type=Path, required=True, help="tree B (main)")
    ap.add_argument("-n", type=int, default=40)
    args = ap.parse_args()
    d = workdir("cli_start")
    agents = "".join(f"""
[agents.{name}]
command = ["{PY}", "{args.b}/examples/hello.py"]
env = {{ PYTHONPATH = "{args.b}" }}
""" for name in ("hello", "other"))
    daemon = CorralDaemon(d, agents, launcher=["env", f"PYTHONPATH={args.b}", PY, "-m",
                                               "corral", "daemon"])
    daemon.start()
    sock = str(daemon.sock)
    try:
        submitted = subprocess.run(
            [PY, "-m", "corral", "--socket", sock, "submit", "hello", "--input", '"x"'],
            capture_output=True, text=True, check=True, cwd=args.b).stdout.split()
        task = submitted[-1]
        m = [PY, "-m", "corral"]
        commands: dict[str, list[str]] = {
            "status": [*m, "--socket", sock, "status"],
            "status (console script)": [str(BIN / "corral"), "--socket", sock, "status"],
            "tasks": [*m, "--socket", sock, "tasks"],
            "task ID": [*m, "--socket", sock, "task", task],
            "submit": [*m, "--socket", sock, "submit", "hello", "--input", '"x"'],
            "logs hello": [*m, "--socket", sock, "logs", "hello"],
            "--help": [*m, "--help"],
            "status, unreachable (exit 3)": [*m, "--socket", f"{d}/none.sock", "status"],
            "python -c pass": [PY, "-c", "pass"],
            # what every command imports before any of corral's own: the floor under it
            "python -c 'import click, msgspec'": [PY, "-c", "import click, msgspec"],
        }
        for _ in range(5):  # the daemon's agents settle (their start is CPU beside ours)
            for tree in (args.a, args.b):
                cpu(commands["status"], tree)
        got = {name: {"A": [], "B": []} for name in commands}
        codes: dict[str, set[tuple[str, int]]] = {name: set() for name in commands}
        # round by round, every command in each: the machine's load (other suites) drifts,
        # and each row, the floors' too, sees the same of it
        for _ in range(args.n):
            for name, argv in commands.items():
                for label, tree in (("A", args.a), ("B", args.b)):
                    seconds, code = cpu(argv, tree)
                    got[name][label].append(seconds)
                    codes[name].add((label, code))
        rows: dict[str, Any] = {}
        for name, runs in got.items():
            ratio = median([a / b for a, b in zip(runs["A"], runs["B"], strict=True) if b])
            rows[name] = {"a_median": median(runs["A"]), "a_p90": quantile(runs["A"], 0.9),
                          "b_median": median(runs["B"]), "b_p90": quantile(runs["B"], 0.9),
                          "a_over_b": ratio, "exit_codes": sorted(codes[name])}
            print(f"| `{name}` | {rows[name]['a_median'] * 1000:.1f} | "
                  f"{rows[name]['a_p90'] * 1000:.1f} | {rows[name]['b_median'] * 1000:.1f} | "
                  f"{rows[name]['b_p90'] * 1000:.1f} | {ratio:.2f} | "
                  f"{' '.join(f'{lb}:{c}' for lb, c in sorted(codes[name]))} |", flush=True)
        with open("/proc/loadavg") as f:
            load = f.read().split()[:3]
        report("cli_start", {"n": args.n, "load": load, "commands": rows,
                             "python": sys.version.split()[0]})
    finally:
        daemon.stop()
        cleanup(d)


if __name__ == "__main__":
    main()
