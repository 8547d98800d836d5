"""The gateways' daemon CPU a call (issue 77): what a loaded shared machine moves least.
corral's daemon started from each tree in turn (A B A B ..., a new daemon each run), the
same mock provider and stdio server, N calls at concurrency C after a warm-up; the
daemon process's user+system CPU seconds before and after the N calls, divided by N.
The medians of the rounds, per tree and workload, and B/A.

    bench/gateways/cpu.sh [--trees A,B] [--rounds 3] [-n 3000] [-c 10]
                          [--work model,stream,mcp] [--loadgen c|py]

A tree is a checkout of corral (`git worktree add /tmp/gwA HEAD` for a baseline); its
daemon runs on this tree's venv with the tree first on PYTHONPATH. Prints one line a
run, then the table; `--profile DIR` also records each run's daemon with py-spy (PY_SPY,
default `py-spy` on PATH) into DIR, as speedscope JSON. The load generator (run.py's,
--loadgen, default c) is only the daemon's client: its own CPU is in no figure.
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

import psutil

from .run import LOADGENS
from .run import load as load_once
from .targets import ENV, HERE, PY, ROOT, CorralMcp, CorralModel, Target, free_port

WORK = {"model": (CorralModel, {"stream": False}), "stream": (CorralModel, {"stream": True}),
        "mcp": (CorralMcp, {})}


def on_tree(kind: type[Target], tree: Path) -> type[Target]:
    """`kind` whose processes import corral from `tree` (first on PYTHONPATH)."""

    class OnTree(kind):  # type: ignore[valid-type,misc]
        def popen(self, cmd: list[str], env: dict[str, str] | None = None,
                  cwd: Path | None = None) -> subprocess.Popen[bytes]:
            p: subprocess.Popen[bytes] = super().popen(
                cmd, {**(env or ENV), "PYTHONPATH": str(tree)}, cwd)
            return p

    OnTree.name = kind.name
    return OnTree


def load(spec: dict[str, Any], pid: int, gen: str) -> tuple[dict[str, Any], float, float]:
    """run.py's load, and the CPU seconds process `pid` and its main thread spent
    meanwhile (only the main thread's share limits the rate: the store's writer thread
    runs beside it)."""
    before = cpu_of(pid)
    out = load_once(spec, gen)
    after = cpu_of(pid)
    return out, after[0] - before[0], after[1] - before[1]


def cpu_of(pid: int) -> tuple[float, float]:
    proc = psutil.Process(pid)
    t = proc.cpu_times()
    main = next((th for th in proc.threads() if th.id == pid), None)
    return (float(t.user + t.system),
            float(main.user_time + main.system_time) if main else 0.0)


def one_run(kind: type[Target], extra: dict[str, Any], tree: Path, work: Path,
            upstream: str, n: int, c: int, profile: Path | None, label: str, gen: str
            ) -> dict[str, Any]:
    target = on_tree(kind, tree)(_fresh(work, label), upstream)
    spy: subprocess.Popen[bytes] | None = None
    try:
        target.start()
        daemon = target.procs[0].pid
        base = {**target.spec(), **extra, "c": c, "seconds": 120.0}
        load({**base, "n": max(300, n // 5), "warmup": 0}, daemon, gen)  # the warm-up
        if profile is not None:
            spy = subprocess.Popen(
                [os.environ.get("PY_SPY", "py-spy"), "record", "-r", "500", "-f",
                 "speedscope", "-o", str(profile / f"{label}.json"), "-p", str(daemon)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
        load_before = os.getloadavg()[0]
        out, spent, main = load({**base, "n": n, "warmup": 0}, daemon, gen)
        answered = len(out["latencies"])
        return {"us_per_call": spent / max(answered, 1) * 1e6, "answered": answered,
                "main_us_per_call": main / max(answered, 1) * 1e6,
                "errors": out["errors"], "first_error": out["first_error"],
                "req_per_s": answered / max(out["wall_s"], 1e-9), "load": load_before}
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        target.stop()


def _fresh(work: Path, label: str) -> Path:
    path = work / label
    path.mkdir(parents=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trees", default=str(ROOT), help="checkouts, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=3000)
    ap.add_argument("-c", type=int, default=10)
    ap.add_argument("--work", default="model,stream,mcp")
    ap.add_argument("--profile", type=Path)
    ap.add_argument("--loadgen", choices=sorted(LOADGENS), default="c")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    works = args.work.split(",")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    got: dict[tuple[str, int], list[float]] = {}
    mains: dict[tuple[str, int], list[float]] = {}
    port = free_port()
    mock = subprocess.Popen([PY, str(HERE / "mock_provider.py"), str(port)], env=ENV,
                            stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert mock.stdout is not None
        upstream = mock.stdout.readline().decode().strip()
        with tempfile.TemporaryDirectory(prefix="corral-bench-cpu-") as tmp:
            for r in range(args.rounds):
                for w in works:
                    for i, tree in enumerate(trees):
                        kind, extra = WORK[w]
                        label = f"{w}-{'AB'[i] if len(trees) == 2 else i}-r{r}"
                        run = one_run(kind, extra, tree, Path(tmp), upstream, args.n,
                                      args.c, args.profile, label, args.loadgen)
                        got.setdefault((w, i), []).append(run["us_per_call"])
                        mains.setdefault((w, i), []).append(run["main_us_per_call"])
                        print(f"{label:<14} {run['us_per_call']:7.1f} us/call "
                              f"(main thread {run['main_us_per_call']:6.1f}) "
                              f"{run['req_per_s']:7.0f} req/s errors {run['errors']} "
                              f"load {run['load']:.1f}"
                              + (f" ({run['first_error']})" if run["errors"] else ""),
                              file=sys.stderr, flush=True)
    finally:
        os.killpg(mock.pid, signal.SIGTERM)
        mock.wait(30)
    print(f"daemon CPU per call, c={args.c}, n={args.n}, medians of {args.rounds}, "
          f"load generator {LOADGENS[args.loadgen]}:")
    for w in works:
        meds = [statistics.median(got[(w, i)]) for i in range(len(trees))]
        # each round's B over its A, the median of those: what drifts between rounds
        # (the machine's load) cancels within a pair
        ratio = ""
        if len(meds) == 2:
            paired = statistics.median(b / a for a, b in zip(got[(w, 0)], got[(w, 1)],
                                                             strict=True))
            ratio = f"  B/A {meds[1] / meds[0]:.2f} (paired {paired:.2f})"
        print(f"  {w:<7} " + "  ".join(f"{t.name or t}: {m:.0f} us" for t, m in
                                        zip(trees, meds, strict=True)) + ratio)
        mm = [statistics.median(mains[(w, i)]) for i in range(len(trees))]
        print("  main thread " + "  ".join(f"{t.name or t}: {m:.0f} us" for t, m in
                                           zip(trees, mm, strict=True)))
    print(json.dumps({f"{w}/{i}": v for (w, i), v in got.items()}))


if __name__ == "__main__":
    main()
