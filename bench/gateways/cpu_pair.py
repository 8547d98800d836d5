"""Two trees' daemons' CPU a call, paired within seconds (issue 90): where cpu.py starts a
new daemon for each run (a run of 8,000 calls and a start every ~20 s, so a loaded shared
machine's drift between A's run and B's is as large as a cut of a few percent), this starts
both daemons once, beside the one mock, and drives them in turn with short chunks of the
same load (A B B A ...), each chunk's CPU read from the kernel's per-thread run time
(/proc/PID/task/*/schedstat, in nanoseconds: no clock tick's 10 ms in the figure). The
ratio is each pair's B/A, their median; the daemons' figures are the medians of the
chunks' µs a call, the mock's its own over the same chunks (the floor: one Python HTTP
exchange, where a proxy makes two).

    bench/gateways/cpu_pair.sh --trees A,B [--chunks 40] [-n 1000] [-c 10]
                               [--work model|stream|mcp] [--mock floor|aiohttp]

A tree is a checkout of corral, its daemon on this tree's venv with the tree first on
PYTHONPATH (cpu.py's `on_tree`); with CORRAL_BENCH_RULES=N every daemon judges N policy
rules and traces (targets.py `_links`). The load generator is loadgen.c at concurrency c.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .cpu import MOCKS, WORK, on_tree
from .run import load as load_once
from .run import percentile
from .targets import ENV, HERE, PY, Target, free_port


def run_ns(pid: int) -> int:
    """The process's threads' time on a CPU so far, in nanoseconds (a thread gone since
    is not counted: the daemon's live for the whole run)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def chunk(target: Target, extra: dict[str, Any], n: int, c: int, mock: int
          ) -> dict[str, Any]:
    pid = target.procs[0].pid
    spec = {**target.spec(), **extra, "c": c, "seconds": 120.0, "n": n, "warmup": 0}
    before, mock_before = run_ns(pid), run_ns(mock)
    out = load_once(spec, "c")
    spent, mock_spent = run_ns(pid) - before, run_ns(mock) - mock_before
    answered = max(len(out["latencies"]), 1)
    return {"us": spent / answered / 1e3, "mock_us": mock_spent / answered / 1e3,
            "errors": out["errors"], "first_error": out["first_error"],
            "p50_ms": percentile(out["latencies"], 0.5) * 1e3,
            "p99_ms": percentile(out["latencies"], 0.99) * 1e3,
            "load": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trees", required=True, help="two checkouts, comma-separated")
    ap.add_argument("--chunks", type=int, default=40, help="pairs of chunks")
    ap.add_argument("-n", type=int, default=1000, help="calls a chunk")
    ap.add_argument("-c", type=int, default=10)
    ap.add_argument("--work", choices=["model", "stream", "mcp"], default="model")
    ap.add_argument("--mock", choices=sorted(MOCKS), default="floor")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    if len(trees) != 2:
        ap.error("--trees: two checkouts")
    kind, extra = WORK[args.work]
    port = free_port()
    mock = subprocess.Popen([PY, str(HERE / MOCKS[args.mock]), str(port)], env=ENV,
                            stdout=subprocess.PIPE, start_new_session=True)
    targets: list[Target] = []
    runs: list[list[dict[str, Any]]] = [[], []]
    try:
        assert mock.stdout is not None
        upstream = mock.stdout.readline().decode().strip()
        with tempfile.TemporaryDirectory(prefix="corral-bench-pair-") as tmp:
            for i, tree in enumerate(trees):
                work = Path(tmp) / "AB"[i]
                work.mkdir()
                targets.append(on_tree(kind, tree)(work, upstream))
                targets[-1].start()
            for t in targets:  # (warm: every path's first call, its imports, its caches)
                chunk(t, extra, max(300, args.n), args.c, mock.pid)
            for k in range(args.chunks):
                order = (0, 1) if k % 2 == 0 else (1, 0)
                for i in order:
                    run = chunk(targets[i], extra, args.n, args.c, mock.pid)
                    runs[i].append(run)
                    print(f"{args.work}-{'AB'[i]}-{k:<3} {run['us']:7.1f} us/call mock "
                          f"{run['mock_us']:5.1f} p50 {run['p50_ms']:.2f} ms errors "
                          f"{run['errors']} load {run['load']:.1f}"
                          + (f" ({run['first_error']})" if run["errors"] else ""),
                          file=sys.stderr, flush=True)
    finally:
        for t in targets:
            t.stop()
        os.killpg(mock.pid, signal.SIGTERM)
        mock.wait(30)
    report(args, trees, runs)


def report(args: argparse.Namespace, trees: list[Path], runs: list[list[dict[str, Any]]]
           ) -> None:
    def med(rs: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in rs))

    loads = [r["load"] for rs in runs for r in rs]
    print(f"daemon CPU per call ({args.work}), c={args.c}, {args.chunks} pairs of "
          f"{args.n} calls, mock {MOCKS[args.mock]}, load {min(loads):.1f}-{max(loads):.1f}:")
    for tree, rs in zip(trees, runs, strict=True):
        us = sorted(r["us"] for r in rs)
        mocked = "" if args.work == "mcp" else (  # (the MCP call reaches no mock)
            f"mock {med(rs, 'mock_us'):.1f} us, daemon/mock "
            f"{statistics.median(r['us'] / max(r['mock_us'], 1e-9) for r in rs):.2f}, ")
        print(f"  {tree.name}: {med(rs, 'us'):.1f} us (chunks {us[0]:.0f}-{us[-1]:.0f}), "
              f"{mocked}"
              f"p50 {med(rs, 'p50_ms'):.2f} ms, p99 {med(rs, 'p99_ms'):.2f} ms, "
              f"errors {sum(r['errors'] for r in rs)}")
    pairs = sorted(b["us"] / a["us"] for a, b in zip(*runs, strict=True))
    q = len(pairs) // 4
    print(f"  B/A paired {statistics.median(pairs):.3f} (middle half "
          f"{pairs[q]:.3f}-{pairs[-q - 1]:.3f})")
    print(json.dumps({"A": [r["us"] for r in runs[0]], "B": [r["us"] for r in runs[1]]}))


if __name__ == "__main__":
    main()
