"""The gateways' daemon CPU a call (issue 77): what a loaded shared machine moves least.
corral's daemon started from each tree in turn (A B A B ..., a new daemon each run), the
same mock provider and stdio server, N calls at concurrency C after a warm-up; the
daemon process's user+system CPU seconds before and after the N calls, divided by N.
The medians of the rounds, per tree and workload, and B/A.

    bench/gateways/cpu.sh [--trees A,B] [--rounds 3] [-n 3000] [-c 10]
                          [--work model,stream,mcp,direct,proxy,proxystream]
                          [--loadgen c,hey,py]
                          [--mock aiohttp|floor]

A tree is a checkout of corral (`git worktree add /tmp/gwA HEAD` for a baseline); its
daemon runs on this tree's venv with the tree first on PYTHONPATH. Prints one line a
run, then the table; `--profile DIR` also records each run's daemon with py-spy (PY_SPY,
default `py-spy` on PATH) into DIR, as speedscope JSON. The load generator (run.py's,
--loadgen, default c; several, comma-separated, are alternated within each round) is only
the daemon's client: its own CPU is in no figure. The mock provider's CPU a call over the
same calls is measured beside the daemon's (the floor: one Python HTTP exchange, where a
proxy makes two), and their ratio a run; `direct` is the same load straight at the mock.
`--mock floor` serves it with mock_floor.py (uvloop and httptools, no web framework)
instead of mock_provider.py (aiohttp's server on uvloop).
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

from .run import LOADGENS, percentile
from .run import load as load_once
from .targets import (
    ENV,
    HERE,
    PY,
    ROOT,
    CorralMcp,
    CorralModel,
    Direct,
    ProxyFloor,
    Target,
    free_port,
)

WORK = {"model": (CorralModel, {"stream": False}), "stream": (CorralModel, {"stream": True}),
        "mcp": (CorralMcp, {}), "direct": (Direct, {"stream": False}),
        "proxy": (ProxyFloor, {"stream": False}), "proxystream": (ProxyFloor, {"stream": True})}
MOCKS = {"aiohttp": "mock_provider.py", "floor": "mock_floor.py"}


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


def load(spec: dict[str, Any], pid: int | None, gen: str, mock: int
         ) -> tuple[dict[str, Any], float, float, float]:
    """run.py's load, and the CPU seconds process `pid` (none for `direct`) and its main
    thread spent meanwhile (only the main thread's share limits the rate: the store's
    writer thread runs beside it), and the mock provider's."""
    before, mock_before = cpu_of(pid) if pid else (0.0, 0.0), cpu_of(mock)[0]
    out = load_once(spec, gen)
    after, mock_after = cpu_of(pid) if pid else (0.0, 0.0), cpu_of(mock)[0]
    return out, after[0] - before[0], after[1] - before[1], mock_after - mock_before


def cpu_of(pid: int) -> tuple[float, float]:
    proc = psutil.Process(pid)
    t = proc.cpu_times()
    main = next((th for th in proc.threads() if th.id == pid), None)
    return (float(t.user + t.system),
            float(main.user_time + main.system_time) if main else 0.0)


def one_run(kind: type[Target], extra: dict[str, Any], tree: Path, work: Path,
            upstream: str, n: int, c: int, profile: Path | None, label: str, gen: str,
            mock: int) -> dict[str, Any]:
    target = on_tree(kind, tree)(_fresh(work, label), upstream)
    spy: subprocess.Popen[bytes] | None = None
    try:
        target.start()
        daemon = target.procs[0].pid if target.procs else None
        base = {**target.spec(), **extra, "c": c, "seconds": 120.0}
        load({**base, "n": max(300, n // 5), "warmup": 0}, daemon, gen, mock)  # the warm-up
        if profile is not None and daemon is not None:
            spy = subprocess.Popen(
                [os.environ.get("PY_SPY", "py-spy"), "record", "-r", "500", "-f",
                 "speedscope", "-o", str(profile / f"{label}.json"), "-p", str(daemon)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
        load_before = os.getloadavg()[0]
        out, spent, main, upstream_cpu = load({**base, "n": n, "warmup": 0}, daemon, gen,
                                              mock)
        answered = len(out["latencies"])
        return {"us_per_call": spent / max(answered, 1) * 1e6, "answered": answered,
                "main_us_per_call": main / max(answered, 1) * 1e6,
                "mock_us_per_call": upstream_cpu / max(answered, 1) * 1e6,
                "p50_ms": percentile(out["latencies"], 0.5) * 1e3,
                "p99_ms": percentile(out["latencies"], 0.99) * 1e3,
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
    ap.add_argument("--mock", choices=sorted(MOCKS), default="aiohttp")
    ap.add_argument("--loadgen", default="c", help=f"of {', '.join(sorted(LOADGENS))}, "
                    "comma-separated: alternated within each round")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    works, gens = args.work.split(","), args.loadgen.split(",")
    if unknown := [g for g in gens if g not in LOADGENS]:
        ap.error(f"--loadgen: unknown {unknown}; one of {sorted(LOADGENS)}")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    port = free_port()
    mock = subprocess.Popen([PY, str(HERE / MOCKS[args.mock]), str(port)], env=ENV,
                            stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert mock.stdout is not None
        upstream = mock.stdout.readline().decode().strip()
        with tempfile.TemporaryDirectory(prefix="corral-bench-cpu-") as tmp:
            for r in range(args.rounds):
                for w in works:
                    for gen in gens:
                        for i, tree in enumerate(trees):
                            kind, extra = WORK[w]
                            label = (f"{w}-{gen}-{'AB'[i] if len(trees) == 2 else i}-r{r}")
                            run = one_run(kind, extra, tree, Path(tmp), upstream, args.n,
                                          args.c, args.profile, label, gen, mock.pid)
                            runs.setdefault((w, gen, i), []).append(run)
                            print(f"{label:<18} {run['us_per_call']:7.1f} us/call "
                                  f"(main thread {run['main_us_per_call']:6.1f}) "
                                  f"mock {run['mock_us_per_call']:5.1f} "
                                  f"{run['req_per_s']:7.0f} req/s p50 {run['p50_ms']:.2f} "
                                  f"p99 {run['p99_ms']:.2f} ms errors {run['errors']} "
                                  f"load {run['load']:.1f}"
                                  + (f" ({run['first_error']})" if run["errors"] else ""),
                                  file=sys.stderr, flush=True)
    finally:
        os.killpg(mock.pid, signal.SIGTERM)
        mock.wait(30)
    print(f"daemon CPU per call, c={args.c}, n={args.n}, medians of {args.rounds}, "
          f"mock {MOCKS[args.mock]}:")
    for w in works:
        for gen in gens:
            print(f"  {w} by {LOADGENS[gen]}:")
            report(trees, [runs[(w, gen, i)] for i in range(len(trees))])
    print(json.dumps({f"{w}/{gen}/{i}": [r["us_per_call"] for r in v]
                      for (w, gen, i), v in runs.items()}))


def report(trees: list[Path], runs: list[list[dict[str, Any]]]) -> None:
    def med(rs: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in rs)

    for tree, rs in zip(trees, runs, strict=True):
        if not med(rs, "us_per_call"):  # `direct`: the mock alone
            print(f"    mock {med(rs, 'mock_us_per_call'):.0f} us, "
                  f"{med(rs, 'req_per_s'):.0f} req/s, p50 {med(rs, 'p50_ms'):.2f} ms, "
                  f"p99 {med(rs, 'p99_ms'):.2f} ms")
            continue
        # the daemon over the mock a run, the median of those: the load moves both alike
        ratio = statistics.median(r["us_per_call"] / max(r["mock_us_per_call"], 1e-9)
                                  for r in rs)
        print(f"    {tree.name or tree}: {med(rs, 'us_per_call'):.0f} us (main thread "
              f"{med(rs, 'main_us_per_call'):.0f}), mock {med(rs, 'mock_us_per_call'):.0f} "
              f"us, daemon/mock {ratio:.2f} (paired), {med(rs, 'req_per_s'):.0f} req/s, "
              f"p50 {med(rs, 'p50_ms'):.2f} ms, p99 {med(rs, 'p99_ms'):.2f} ms")
    if len(runs) == 2:
        # each round's B over its A, the median of those: what drifts between rounds
        # (the machine's load) cancels within a pair
        a, b = (med(rs, "us_per_call") for rs in runs)
        paired = statistics.median(y["us_per_call"] / x["us_per_call"]
                                   for x, y in zip(runs[0], runs[1], strict=True))
        print(f"    B/A {b / a:.2f} (paired {paired:.2f})")


if __name__ == "__main__":
    main()
