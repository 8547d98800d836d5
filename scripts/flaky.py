"""Find the next flaky test before CI does.

Runs test files again and again, each round in a new random order (pytest-randomly, which
the README's test command keeps off with `-p no:randomly`) and, with --load, beside busy
loops on every core, as a loaded CI machine is. Which files: those named, else the
slowest that earlier runs timed (tests/conftest.py keeps each file's time in pytest's
cache; the slow files are the ones that wait on processes, beats and deadlines), else the
files that wait on time by their nature (TIMING below).

    .venv/bin/python scripts/flaky.py                  # 3 rounds of the slowest 12 files
    .venv/bin/python scripts/flaky.py -n 5 --load tests/test_pause.py tests/chaos
    .venv/bin/python scripts/flaky.py --seed 1234 tests/test_stop.py   # replay a round
    .venv/bin/python scripts/flaky.py -j 3 --load tests/cluster  # files side by side

Each round prints its seed: `-p randomly --randomly-seed=SEED -o addopts=` on a pytest
command line replays its order. Exit 1 when any round failed, with the failures of each round.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".pytest_cache" / "v" / "corral" / "durations"
# files that wait on time by their nature, when no run has timed the suite yet
TIMING = ["tests/chaos", "tests/cluster/test_redis_faults.py",
          "tests/cluster/test_takeover.py", "tests/cluster/test_cluster_memory.py",
          "tests/test_pause.py", "tests/test_timeouts.py", "tests/test_stop.py",
          "tests/test_sleep.py", "tests/test_autoscale.py", "tests/test_health.py",
          "tests/test_supervisor_faults.py", "tests/test_writer_here.py"]


def slowest(count: int) -> list[str]:
    """The `count` files the cached durations name as slowest, those still there."""
    try:
        times: dict[str, float] = json.loads(CACHE.read_text())
    except (OSError, ValueError):
        return []
    ranked = sorted(times, key=lambda f: -times[f])
    return [f for f in ranked if (ROOT / f).exists()][:count]


def spinners() -> list[subprocess.Popen[bytes]]:
    """A busy loop per core, at the tests' own priority: the load a shared CI host has."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(os.cpu_count() or 1)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="*", help="test files or directories (default: the "
                   "slowest files of earlier runs)")
    p.add_argument("-n", "--rounds", type=int, default=3)
    p.add_argument("--slowest", type=int, default=12, metavar="K",
                   help="without paths: how many of the slowest files (default 12)")
    p.add_argument("--load", action="store_true", help="a busy loop on every core meanwhile")
    p.add_argument("--seed", type=int, help="one round in this order (replays a failure)")
    p.add_argument("-x", "--exitfirst", action="store_true", help="stop at a failed round")
    p.add_argument("-j", "--workers", type=int, default=0, metavar="N",
                   help="run the files in N pytest-xdist workers side by side, as ./test.sh "
                   "does with CORRAL_TEST_WORKERS (default 0: one process)")
    args = p.parse_args()
    try:
        import pytest  # noqa: F401
        import pytest_randomly  # noqa: F401
    except ImportError as exc:
        sys.exit(f"flaky: {exc.name} is not installed in {sys.prefix}: the test tools come "
                 "with ./test.sh (or `. scripts/venv.sh test`); ./run.sh installs the daemon "
                 "alone")
    paths = args.paths or slowest(args.slowest) or TIMING
    seeds = [args.seed] if args.seed is not None else [
        random.randrange(1, 2**31) for _ in range(args.rounds)]
    print(f"flaky: {len(seeds)} round(s) of {' '.join(paths)}"
          f"{' beside a busy loop per core' if args.load else ''}", flush=True)
    load = spinners() if args.load else []
    failed: list[tuple[int, int, str]] = []
    try:
        for n, seed in enumerate(seeds, 1):
            t0 = time.monotonic()
            cmd = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "randomly",
                   f"--randomly-seed={seed}", *paths]
            if args.workers:
                cmd[3:3] = ["-n", str(args.workers), "--dist", "loadfile"]
            run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            tail = run.stdout.strip().splitlines()[-1:] or ["(no output)"]
            print(f"round {n} seed {seed}: exit {run.returncode} in "
                  f"{time.monotonic() - t0:.0f} s: {tail[0]}", flush=True)
            if run.returncode != 0:
                said = [line for line in run.stdout.splitlines()
                        if line.startswith(("FAILED", "ERROR"))]
                # nothing collected or a crash: pytest's own words, from stderr
                # the round's whole output kept: a summary line is cut at the terminal's
                # width, and a failure under load may not come again
                fd, kept = tempfile.mkstemp(prefix=f"flaky-{seed}-", suffix=".log")
                with os.fdopen(fd, "w") as f:
                    f.write(run.stdout + run.stderr)
                failed.append((n, seed, "\n".join(
                    (said or run.stderr.strip().splitlines()[-5:]
                     or [f"(run it: {' '.join(cmd)})"]) + [f"(its whole output: {kept})"])))
                if args.exitfirst:
                    break
    finally:
        for s in load:
            s.send_signal(signal.SIGKILL)
            s.wait()
    for n, seed, lines in failed:
        print(f"\nround {n} (replay: scripts/flaky.py --seed {seed} {' '.join(paths)}):\n"
              f"{lines or '(see pytest -q of the command)'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
