"""The CPU of one `corral mcp serve` as an MCP host starts it (issue 86: every host pays
it at each launch, the suite 68 times a run): two trees A/B, the same venv, one daemon.

Each run is `python -m corral --socket S mcp serve` in a tree (cwd and PYTHONPATH the
tree's, as bench_cli_start runs a command), its stdin and stdout pipes: the bench writes
one request (`ping`), waits for the line that answers it, closes stdin and waits for the
exit; a run's CPU is its user+sys (`getrusage(RUSAGE_CHILDREN)` before and after). Runs
alternate A B, B A, ... Trees are `git archive`d copies, byte-compiled
(`python -m compileall -q corral`).

    .venv/bin/python -m bench.bench_mcp_serve_start --a /tmp/A --b /tmp/B [-n 20]
        -> bench/results/mcp_serve_start.json
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
from pathlib import Path

from .harness import PY, CorralDaemon, cleanup, median, report, workdir

PING = b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}\n'


def run(sock: Path, tree: Path) -> tuple[float, int, bytes]:
    """One bridge's CPU (seconds), its exit code and the line that answered its ping."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen([PY, "-m", "corral", "--socket", str(sock), "mcp", "serve"],
                            cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(PING)
    proc.stdin.flush()
    answer = proc.stdout.readline()  # the event waited for: its answer
    proc.stdin.close()
    proc.stdout.read()
    code = proc.wait(60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            code, answer)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", type=Path, required=True, help="tree A (this branch)")
    ap.add_argument("--b", type=Path, required=True, help="tree B (the tree before)")
    ap.add_argument("-n", type=int, default=20)
    args = ap.parse_args()
    d = workdir("mcp_serve_start")
    daemon = CorralDaemon(d, "", launcher=["env", f"PYTHONPATH={args.b}", PY, "-m",
                                           "corral", "daemon"])
    daemon.start()
    try:
        got: dict[str, list[float]] = {"A": [], "B": []}
        said: dict[str, set[tuple[int, bytes]]] = {"A": set(), "B": set()}
        trees = [("A", args.a), ("B", args.b)]
        for i in range(args.n):
            for label, tree in trees if i % 2 == 0 else trees[::-1]:
                seconds, code, answer = run(daemon.sock, tree)
                got[label].append(seconds)
                said[label].add((code, answer.strip()[:80]))
        ratio = median([a / b for a, b in zip(got["A"], got["B"], strict=True)])
        with open("/proc/loadavg") as f:
            load = f.read().split()[:3]
        for label in ("A", "B"):
            print(f"{label}: median {median(got[label]) * 1000:.1f} ms of CPU, "
                  f"exits and answers {sorted(said[label])}")
        print(f"A/B (median of the pairs): {ratio:.3f}   load {' '.join(load)}")
        report("mcp_serve_start", {"n": args.n, "load": load, "ratio": ratio,
                                   "a_ms": [round(x * 1000, 2) for x in got["A"]],
                                   "b_ms": [round(x * 1000, 2) for x in got["B"]]})
    finally:
        daemon.stop()
        cleanup(d)


if __name__ == "__main__":
    main()
