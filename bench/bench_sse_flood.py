"""Issue 21's hostile rule for streams: 1000 `/events/stream` clients that never read (a
4 KiB receive buffer each, as tests/test_http_hostile.py opens them), a burst of 300
events of 2 KiB published on the control socket, then every client closing at once.

For each phase (open, publish, close): the control socket's worst round trip (a probe
process calls `daemon.info` every 5 ms, as the hostile test's), and the loop's CPU time
in its longest stretch between two ticks of a 1 ms timer (`--daemon` mode below: the
daemon with that tick, reading the loop thread's CPU clock), which a loaded machine
inflates far less than the wall-clock figures; and the cyclic collector's passes over
5 ms. Also the bytes the kernel held for the server's side of the streams after the
burst (`ss`), and the daemon's RSS growth.

    .venv/bin/python -m bench.bench_sse_flood [--streams 1000] [--events 300]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from .harness import PY, CorralDaemon, free_port, report, workdir

PROBE = r"""
import json, socket, sys, time, os
path, stop = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX); s.connect(path); f = s.makefile("rb")
worst, n = 0.0, 0
while not os.path.exists(stop):
    n += 1
    t0 = time.perf_counter()
    s.sendall(json.dumps({"jsonrpc": "2.0", "id": n, "method": "daemon.info",
                          "params": {}}).encode() + b"\n")
    f.readline()
    worst = max(worst, time.perf_counter() - t0)
    time.sleep(max(0.0, 0.005 - (time.perf_counter() - t0)))
print(json.dumps({"worst_ms": round(worst * 1000, 1), "calls": n}))
"""


def daemon(out: Path, config: Path) -> None:
    """`corral daemon` under uvloop with a 1 ms tick recording the loop thread's CPU
    time; SIGUSR1 writes the phase's longest stretches to OUT/N.json (N counts up)."""
    import uvloop

    from corral.daemon.daemon import Daemon
    from corral.supervisor.caps import disable_own_core_dumps, raise_own_open_files

    stretches: list[float] = []
    passes: list[tuple[float, int]] = []
    last = [time.thread_time()]
    started = [0.0]
    phase = [0]

    def on_gc(what: str, info: dict[str, int]) -> None:
        if what == "start":
            started[0] = time.thread_time()
        elif (took := time.thread_time() - started[0]) > 0.005:
            passes.append((took, info["generation"]))

    def tick(loop: asyncio.AbstractEventLoop) -> None:
        now = time.thread_time()
        stretches.append(now - last[0])
        last[0] = now
        loop.call_later(0.001, tick, loop)

    def dump(*_: Any) -> None:
        top = sorted(stretches, reverse=True)[:5]
        (out / f"{phase[0]}.json").write_text(json.dumps({
            "longest_cpu_ms": [round(t * 1000, 1) for t in top],
            "gc_passes_over_5ms": [(round(t * 1000, 1), g) for t, g in passes]}))
        phase[0] += 1
        stretches.clear()
        passes.clear()

    async def run() -> int:
        loop = asyncio.get_running_loop()
        tick(loop)
        loop.add_signal_handler(signal.SIGUSR1, dump)
        return await Daemon(config, freeze_heap=True).run()

    gc.callbacks.append(on_gc)
    disable_own_core_dumps()
    raise_own_open_files()
    uvloop.run(run())


def request(token: str) -> bytes:
    return (f"GET /api/v1/events/stream?pattern=* HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\n\r\n").encode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--events", type=int, default=300)
    # the launcher's mode: `--daemon OUT --config PATH` (CorralDaemon appends --config)
    ap.add_argument("--daemon", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.daemon:
        return daemon(args.daemon, args.config)
    d = workdir("sse-flood")
    port = free_port()
    phases = d / "phases"
    phases.mkdir()
    c = CorralDaemon(d, f"""
[http]
listen = "127.0.0.1:{port}"
rate_per_minute = 0
max_streams = {args.streams}
max_streams_per_token = {args.streams}
""", launcher=[PY, "-m", "bench.bench_sse_flood", "--daemon", str(phases)])
    out: dict[str, Any] = {"streams": args.streams, "events": args.events}
    socks: list[socket.socket] = []
    try:
        c.start()
        assert c.proc is not None
        ps = psutil.Process(c.proc.pid)
        made = subprocess.run([PY, "-m", "corral", "--socket", str(c.sock), "token",
                               "create", "flood", "--scope", "events", "--json"],
                              capture_output=True, text=True, check=True)
        token = json.loads(made.stdout)["token"]
        rss0 = ps.memory_info().rss
        os.kill(c.proc.pid, signal.SIGUSR1)  # the start-up is a phase of its own
        deadline = time.monotonic() + 10
        while not (phases / "0.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

        def phase(name: str, act: Any) -> None:
            stop = d / f"{name}.stop"
            probe = subprocess.Popen([PY, "-c", PROBE, str(c.sock), str(stop)],
                                     stdout=subprocess.PIPE, text=True)
            time.sleep(0.3)
            t0 = time.perf_counter()
            act()
            took = time.perf_counter() - t0
            time.sleep(1.0)  # what the phase set off, settled
            stop.touch()
            seen = json.loads(probe.communicate(timeout=30)[0])
            assert c.proc is not None
            n = len(list(phases.glob("*.json")))
            os.kill(c.proc.pid, signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while not (phases / f"{n}.json").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            loop = json.loads((phases / f"{n}.json").read_text())
            out[name] = {"took_s": round(took, 2), "probe_worst_ms": seen["worst_ms"],
                         **loop, "rss_growth_mib": round((ps.memory_info().rss - rss0)
                                                         / (1 << 20), 1)}

        def open_all() -> None:
            for _ in range(args.streams):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.connect(("127.0.0.1", port))
                s.sendall(request(token))
                socks.append(s)
            for s in socks:
                s.settimeout(10)
                assert s.recv(1024).startswith(b"HTTP/1.1 200")

        def publish() -> None:
            with socket.socket(socket.AF_UNIX) as ctl:
                ctl.connect(str(c.sock))
                f = ctl.makefile("rb")
                ctl.sendall(b"".join(json.dumps({
                    "jsonrpc": "2.0", "id": i, "method": "events.publish",
                    "params": {"topic": "flood", "data": "x" * 2048}}).encode() + b"\n"
                    for i in range(args.events)))
                for _ in range(args.events):
                    assert b'"result"' in f.readline()

        def close_all() -> None:
            for s in socks:
                s.close()
            socks.clear()

        phase("open", open_all)
        phase("publish", publish)
        held = subprocess.run(["ss", "-tnH", "state", "established", f"( sport = :{port} )"],
                              capture_output=True, text=True).stdout.splitlines()
        out["publish"]["kernel_send_queues_mib"] = round(
            sum(int(line.split()[1]) for line in held if line.strip()) / (1 << 20), 1)
        phase("close", close_all)
        out["load_1min"] = os.getloadavg()[0]
        report("bench_sse_flood", out)
    finally:
        for s in socks:
            s.close()
        c.stop()


if __name__ == "__main__":
    sys.exit(main())
