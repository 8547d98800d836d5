"""The Python work a call costs the daemon's loop, counted, not timed (issue 90): on a
shared machine at load 20 a daemon's CPU a call moves ±20 % from one run to the next, more
than a cut of a few percent, where what the interpreter runs a call is the same at any
load. Each tree's daemon is started with pycount_site/ first on its PYTHONPATH (its
sitecustomize counts the main thread on a signal), beside the one mock, warmed, then
counted over N calls of the load: the bytecode instructions it ran a call (`--mode ops`,
sys.settrace's opcode events; `--mode lines`: by line) or its Python functions' calls and
resumes and the C functions called (`--mode calls`, sys.setprofile's events), in all and
by function.
What it leaves out is the C work (httptools, msgspec, uvloop, the kernel's sockets):
cpu.py and cpu_pair.py time the whole.

    bench/gateways/pycount.sh --trees A[,B] [-n 1000] [--work model|stream|mcp]
                              [--mode ops|lines|calls] [--top 40]

With CORRAL_BENCH_RULES=N every daemon judges N policy rules and traces (targets.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .cpu import MOCKS, WORK
from .run import load as load_once
from .targets import ENV, HERE, PY, ROOT, Target, free_port

SITE = HERE / "pycount_site"
START, STOP = signal.SIGRTMIN + 5, signal.SIGRTMIN + 6


def counted(kind: type[Target], extra: dict[str, Any], tree: Path, work: Path,
            upstream: str, n: int, mode: str) -> tuple[Counter[str], Counter[str], int]:
    """(Python functions' counts, C functions' calls, calls answered) of `n` calls."""
    out = work / "counts"

    class Counted(kind):  # type: ignore[valid-type,misc]
        def popen(self, cmd: list[str], env: dict[str, str] | None = None,
                  cwd: Path | None = None) -> subprocess.Popen[bytes]:
            p: subprocess.Popen[bytes] = super().popen(cmd, {
                **(env or ENV), "PYTHONPATH": f"{SITE}:{tree}", "CORRAL_PYCOUNT": str(out),
                "CORRAL_PYCOUNT_MODE": mode}, cwd)
            return p

    Counted.name = kind.name
    target = Counted(work, upstream)
    try:
        target.start()
        pid = target.procs[0].pid
        spec = {**target.spec(), **extra, "c": 10, "seconds": 120.0, "warmup": 0}
        load_once({**spec, "n": max(300, n)}, "c")  # (warm: first calls, imports, caches)
        os.kill(pid, START)
        _wait_for(Path(f"{out}.on"))
        answered = len(load_once({**spec, "n": n}, "c")["latencies"])
        os.kill(pid, STOP)
        _wait_for(out)
    finally:
        target.stop()
    py: Counter[str] = Counter()
    c: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        count, kind_of, name, path = line.split("\t")
        if kind_of == "py":
            py[f"{name} {_short(path)}"] += int(count)
        else:
            c[name] += int(count)
    return py, c, answered


def _short(path: str) -> str:
    for root in (str(ROOT), *sys.path):
        if root and path.startswith(root + "/"):
            return path[len(root) + 1:]
    return path


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the daemon did not write {path} in {timeout:g} s")
        time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trees", default=str(ROOT), help="checkouts, comma-separated")
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--work", choices=["model", "stream", "mcp"], default="model")
    ap.add_argument("--mode", choices=["ops", "lines", "calls"], default="ops")
    ap.add_argument("--mock", choices=sorted(MOCKS), default="floor")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    kind, extra = WORK[args.work]
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    port = free_port()
    mock = subprocess.Popen([PY, str(HERE / MOCKS[args.mock]), str(port)], env=ENV,
                            stdout=subprocess.PIPE, start_new_session=True)
    results = []
    try:
        assert mock.stdout is not None
        upstream = mock.stdout.readline().decode().strip()
        with tempfile.TemporaryDirectory(prefix="corral-bench-pycount-") as tmp:
            for i, tree in enumerate(trees):
                work = Path(tmp) / str(i)
                work.mkdir()
                results.append(counted(kind, extra, tree, work, upstream, args.n,
                                       args.mode))
    finally:
        os.killpg(mock.pid, signal.SIGTERM)
        mock.wait(30)
    what = "bytecode instructions" if args.mode != "calls" else "Python calls and resumes"
    print(f"{what} a {args.work} call in the daemon's main thread, {args.n} calls, "
          f"load {os.getloadavg()[0]:.1f}:")
    totals = []
    for tree, (py, c, answered) in zip(trees, results, strict=True):
        per = max(answered, 1)
        totals.append(sum(py.values()) / per)
        extra_c = f", C calls {sum(c.values()) / per:.1f}" if c else ""
        print(f"  {tree.name or tree}: {totals[-1]:.1f}{extra_c} ({answered} answered)")
        for name, count in py.most_common(args.top):
            print(f"    {count / per:8.2f}  {name}")
    if len(totals) == 2:
        print(f"  B/A {totals[1] / totals[0]:.3f}")


if __name__ == "__main__":
    main()
