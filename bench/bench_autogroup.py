"""Issue 23: what a session of its own per replica costs a quiet tenant's wake-ups.

Every replica is a session of its own (process.py), so on a kernel with autogroups the
scheduler weighs each replica as one group, at its autogroup's nice value (decision 132).
This bench measures the wake-up latency of a request/answer pair (a client and a server
that burns 0.3 ms an answer, as the daemon and an agent) beside a noisy tenant's three
busy processes and a nice-0 process busy 30 % of the time (a flood's client), with the
busy processes arranged two ways:

- `sessions`: each busy process a session of its own, its nice and its autogroup's at 19
  (what corral does today);
- `shared`: the busy processes in the pair's session, nice 19 each, the autogroup left
  as it is (replicas that stay in the daemon's session, in process groups of their own).

The bench runs in a session of its own (it re-executes itself after setsid), so the
autogroup it shares with its processes is never its caller's. Rounds take turns; each
prints the pair's p50/p99/p99.9 round trips.

    .venv/bin/python -m bench.bench_autogroup [--rounds 3] [-n 2000]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

BUSY = """
import os
os.nice(19)
if {own}:
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write("19")
    except OSError:
        pass
while True:
    pass
"""
FLOOD = """
import time
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < 0.003:
        pass
    time.sleep(0.007)
"""


def pair(n: int) -> list[float]:
    """n round trips, 2 ms apart, to a forked server that burns 0.3 ms an answer."""
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        a.close()
        while b.recv(1):
            t = time.perf_counter()
            while time.perf_counter() - t < 0.0003:
                pass
            b.send(b"x")
        os._exit(0)
    b.close()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        a.send(b"x")
        a.recv(1)
        out.append(time.perf_counter() - t0)
        time.sleep(0.002)
    a.close()
    os.waitpid(pid, 0)
    return sorted(out)


def one(arrangement: str, n: int) -> str:
    own = arrangement == "sessions"
    procs = [subprocess.Popen([sys.executable, "-c", BUSY.format(own=own)],
                              start_new_session=own) for _ in range(3)]
    procs.append(subprocess.Popen([sys.executable, "-c", FLOOD]))
    try:
        time.sleep(0.5)  # every busy process running
        lat = pair(n)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    ms = [lat[int(q * len(lat))] * 1000 for q in (0.5, 0.99, 0.999)]
    return f"{arrangement:8s} p50 {ms[0]:.2f} p99 {ms[1]:.2f} p99.9 {ms[2]:.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--in-session", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.in_session:
        # a session (and autogroup) of its own: nothing here touches the caller's
        sys.exit(subprocess.call([sys.executable, "-m", "bench.bench_autogroup",
                                  "--in-session", "--rounds", str(args.rounds), "-n",
                                  str(args.n)], start_new_session=True))
    group = Path("/proc/self/autogroup")
    print(f"load {os.getloadavg()[0]:.2f}, "
          + (f"autogroup {group.read_text().strip()}" if group.exists()
             else "no autogroups on this kernel"))
    for _ in range(args.rounds):
        for arrangement in ("sessions", "shared"):
            print(one(arrangement, args.n), flush=True)


if __name__ == "__main__":
    main()
