"""Issue 26: the floor under a warm start, without the daemon.

1. The bare fork: a Python process with nothing imported forks N children; each writes one
   line (an `initialize` answer's size) to its own pipe and waits for EOF on another.
2. A fork from the zygote: corral's zygote program (corral/worker/zygote.py, or the file
   given) forks N `examples/hello.py` agents, as the daemon asks it (the same request and
   SCM_RIGHTS pipes), and each answers `initialize`; no cgroup gate, no records.

For each: wall seconds from the first fork to the last answer read, and the children's
CPU milliseconds each (their own start-up, from the parent's accounting of reaped
children). The daemon's own work per agent is the rest of bench_scale's time to Ready.

    .venv/bin/python -m bench.bench_fork_floor [-n 1000] [--zygote PATH]
"""

from __future__ import annotations

import argparse
import array
import json
import os
import resource
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

from .harness import HELLO, ROOT, report

ANSWER = b'{"jsonrpc":"2.0","id":1,"result":{"protocol_version":"1","capabilities":{}}}\n'


def read_all(fds: list[int], timeout: float = 120.0) -> None:
    """Read one line's worth from each fd (each child's answer)."""
    ep = select.epoll()
    pending = set(fds)
    for fd in fds:
        ep.register(fd, select.EPOLLIN)
    deadline = time.monotonic() + timeout
    while pending:
        assert time.monotonic() < deadline, f"{len(pending)} children never answered"
        for fd, _ in ep.poll(1.0):
            os.read(fd, 4096)
            ep.unregister(fd)
            pending.discard(fd)
    ep.close()


def bare_fork(n: int) -> dict[str, float]:
    """In a child process of its own, so that its accounting of children is only these."""
    code = f"""
import os, sys, json, time, resource
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
sys.path.insert(0, {str(ROOT)!r})
from bench.bench_fork_floor import read_all, ANSWER
t0 = time.perf_counter()
kids = []
for _ in range({n}):
    ir, iw = os.pipe(); orr, ow = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(iw); os.close(orr)
        os.write(ow, ANSWER)
        os.read(ir, 1)
        os._exit(0)
    os.close(ir); os.close(ow)
    kids.append((pid, iw, orr))
read_all([k[2] for k in kids])
wall = time.perf_counter() - t0
for pid, iw, orr in kids:
    os.close(iw)
for pid, iw, orr in kids:
    os.waitpid(pid, 0); os.close(orr)
t = os.times()
print(json.dumps({{"wall_s": round(wall, 3),
                  "child_cpu_ms": round(1000 * (t.children_user + t.children_system) / {n}, 3)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    result: dict[str, float] = json.loads(out.stdout)
    return result


def drain(sock: socket.socket) -> None:
    """Take the zygote's "spawned" answers, so that its sends never block."""
    while True:
        try:
            sock.recv(1 << 20)
        except BlockingIOError:
            return


def zygote_fork(n: int, program: Path) -> dict[str, float]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = {**os.environ, "CORRAL_ZYGOTE_FD": str(theirs.fileno()), "PYTHONPATH": str(ROOT)}
    z = subprocess.Popen([sys.executable, str(program)], env=env, pass_fds=[theirs.fileno()],
                         start_new_session=True)
    theirs.close()
    try:
        ours.settimeout(60)
        assert "ready" in json.loads(ours.recv(1 << 20))
        ours.setblocking(False)
        t0 = time.perf_counter()
        kids = []
        for i in range(n):
            ir, iw = os.pipe()
            orr, ow = os.pipe()
            er, ew = os.pipe()
            req = {"id": i, "argv": [sys.executable, str(HELLO)], "cwd": "/tmp", "rlimits": [],
                   "gate": False,
                   "env": {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT),
                           "CORRAL_PROCTITLE": f"corral: agent w#{i}", "CORRAL_AGENT": "w",
                           "CORRAL_REPLICA": str(i)}}
            while True:
                try:
                    ours.sendmsg([json.dumps(req).encode()],
                                  [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                    array.array("i", [ir, ow, ew]).tobytes())])
                    break
                except BlockingIOError:  # the zygote is behind: take its answers, retry
                    drain(ours)
                    time.sleep(0.001)
            for fd in (ir, ow, ew):
                os.close(fd)
            os.write(iw, b'{"jsonrpc":"2.0","id":1,"method":"initialize",'
                         b'"params":{"agent":"w","replica":%d}}\n' % i)
            kids.append((iw, orr, er))
            drain(ours)
        read_all([k[1] for k in kids])
        wall = time.perf_counter() - t0
        for iw, _, _ in kids:
            os.close(iw)  # EOF: each agent exits
        ours.setblocking(True)
        exits = 0
        while exits < n:
            exits += "exit" in json.loads(ours.recv(1 << 20))
        with open(f"/proc/{z.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        children = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
        for _, orr, er in kids:
            os.close(orr)
            os.close(er)
    finally:
        ours.close()
        z.wait(30)
    return {"wall_s": round(wall, 3), "child_cpu_ms": round(1000 * children / n, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--zygote", type=Path, default=ROOT / "corral" / "worker" / "zygote.py")
    ap.add_argument("--out", default="fork_floor")
    args = ap.parse_args()
    # four pipes' ends per child held at once
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    load = os.getloadavg()[0]
    out = {"n": args.n, "load": round(load, 2), "bare_fork": bare_fork(args.n),
           "zygote_fork": zygote_fork(args.n, args.zygote),
           "load_after": round(os.getloadavg()[0], 2)}
    report(args.out, out)


if __name__ == "__main__":
    main()
