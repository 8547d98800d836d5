"""Issue 23: what a quiet pair loses when a neighbour keeps every core busy, and why.

Two measurements, each with the busy processes placed in turn:

1. *Gaps*: a busy loop per placed core, each timing how long it is kept off its core
   (gaps of over 0.5 ms between two readings of the clock). With one core busy and the
   other idle, the host's own threads run on the idle one; with every core busy they must
   take one from somebody.
2. *Round trips*: a request/answer pair (a client and a server that burns 0.1 ms an
   answer, 2 ms apart) pinned to core 0, beside two busy nice-19 processes: both on core
   0 with the pair (core 1 idle), or one on each core (every core busy).

The processes run in a session of their own (the bench re-executes itself after
setsid), so nothing here changes its caller's autogroup.

    .venv/bin/python -m bench.bench_busy_cores [--seconds 5] [-n 3000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

GAP = 0.0005  # a reading of the clock this long after the last: the loop was kept off
LOOP = """
import json, os, sys, time
end = time.perf_counter() + {seconds}
last = time.perf_counter()
gaps = []
while last < end:
    now = time.perf_counter()
    if now - last > {gap}:
        gaps.append(now - last)
    last = now
print(json.dumps(gaps))
"""
BUSY = "import os; os.nice(19)\nwhile True: pass"


def gaps(cores: list[int], seconds: float) -> dict[int, list[float]]:
    """Each core's busy loop's gaps, the loops run at once."""
    procs = {c: subprocess.Popen(
        ["taskset", "-c", str(c), sys.executable, "-c",
         LOOP.format(seconds=seconds, gap=GAP)], stdout=subprocess.PIPE)
        for c in cores}
    return {c: json.loads(p.communicate()[0]) for c, p in procs.items()}


def round_trips(busy_cores: list[int], n: int) -> list[float]:
    """n round trips of a pair pinned to core 0, beside busy processes on `busy_cores`."""
    busy = [subprocess.Popen(["taskset", "-c", str(c), sys.executable, "-c", BUSY])
            for c in busy_cores]
    try:
        os.sched_setaffinity(0, {0})
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(w1)
            os.close(r2)
            while os.read(r1, 1):
                t = time.perf_counter()
                while time.perf_counter() - t < 0.0001:
                    pass
                os.write(w2, b"x")
            os._exit(0)
        os.close(r1)
        os.close(w2)
        out = []
        for _ in range(n):
            t = time.perf_counter()
            os.write(w1, b"x")
            os.read(r2, 1)
            out.append(time.perf_counter() - t)
            time.sleep(0.002)
        os.close(w1)
        os.waitpid(pid, 0)
        os.close(r2)
        return out
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        for p in busy:
            p.kill()
            p.wait()


def ms(x: float) -> str:
    return f"{x * 1000:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("-n", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if os.environ.get("_BUSY_CORES_SESSION") != "1":
        os.execvpe("setsid", ["setsid", "-w", sys.executable, "-m", "bench.bench_busy_cores",
                              *sys.argv[1:]], {**os.environ, "_BUSY_CORES_SESSION": "1"})
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs two cores")
    print(f"load {os.getloadavg()[0]:.2f}")
    for r in range(args.rounds):
        for cores in ([0], [1], [0, 1]):
            got = gaps(cores, args.seconds)
            for c, g in got.items():
                worst = ms(max(g)) if g else "-"
                print(f"round {r + 1} gaps, busy cores {cores}: core {c} {len(g)} gaps over "
                      f"{ms(GAP)} ms, {ms(sum(g))} ms kept off in {args.seconds:g} s, "
                      f"worst {worst} ms")
        for busy, name in (([0, 0], "both on core 0 (core 1 idle)"),
                           ([0, 1], "one on each core (every core busy)")):
            lat = sorted(round_trips(busy, args.n))
            over = sum(x > 0.002 for x in lat)
            print(f"round {r + 1} round trips, busy {name}: p50 {ms(lat[len(lat) // 2])} "
                  f"p99 {ms(lat[int(0.99 * len(lat))])} p99.9 "
                  f"{ms(lat[int(0.999 * len(lat))])} max {ms(lat[-1])} ms, {over} of "
                  f"{len(lat)} over 2 ms")
    print(f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
