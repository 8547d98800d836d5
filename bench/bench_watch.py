"""Issue 21: a replica's state change -> the dashboard's stream, at 1000 agents.

1000 SDK hello agents (one replica each, `warm = true`) under corral with `[http]`; STREAMS
clients read `GET /api/v1/replicas/stream` (agents.watch as Server-Sent Events, as the
dashboard does). Replicas are then changed through the control socket, and each client
times every `agents.transition` it receives: its receipt (this machine's clock) minus the
change's own `time` (when the daemon made the transition). Three loads:

- one at a time: `agents.restart` of ONE agents, one after the other, each once the last
  is ready again (4 changes each: shutting_down, terminated, starting, ready);
- a burst: `agents.stop --all`, then `agents.start --all`: every replica changes at once,
  twice (4000 changes while the daemon reaps and spawns 1000 processes);
- restart all: `agents.restart --all` (the same 4000 changes, in one call).

Goal: p99 <= 100 ms. Beside each figure: the 1-minute load average before it, and the
round trips of a `daemon.info` call every 5 ms on the control socket meanwhile
(bench_scale's probe): how late the daemon's loop itself answered. `--profile DIR` runs
the daemon under bench/loop_profile.py's stall sampler (uvloop), a file per phase.

    .venv/bin/python -m bench.bench_watch [--agents 1000] [--streams 1] [--one 100]
        [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from .bench_http import stats
from .bench_scale import Probe, loadavg
from .harness import BIN, CorralDaemon, cleanup, free_port, hello_agents, report, workdir


class Change(msgspec.Struct):
    time: float
    agent: str
    replica: int
    state: str


class Reader:
    """One SSE client of the fleet: every transition's delay, and its states by agent."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.snapshot = asyncio.Event()
        self.ready: dict[str, asyncio.Event] = {}
        self.count = 0
        self.wanted = 0
        self.all_in = asyncio.Event()
        self.decode = msgspec.json.Decoder(Change)

    async def read(self, session: aiohttp.ClientSession, url: str, token: str) -> None:
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200, r.status
            kind = b""
            async for line in r.content:
                if line.startswith(b"event: "):
                    kind = line[7:].strip()
                elif line.startswith(b"data: "):
                    if kind == b"agents.transition":
                        now = time.time()
                        c = self.decode.decode(line[6:])
                        self.delays.append(now - c.time)
                        self.count += 1
                        if c.state == "ready" and c.agent in self.ready:
                            self.ready[c.agent].set()
                        if self.wanted and self.count >= self.wanted:
                            self.all_in.set()
                    elif kind == b"agents.snapshot":
                        self.snapshot.set()

    def expect(self, n: int) -> None:
        """Count from zero again, until `n` transitions are in."""
        self.delays = []
        self.count = 0
        self.wanted = n
        self.all_in = asyncio.Event()


class Control:
    """The control socket, one call at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.n = 0

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        self.n += 1
        self.writer.write(msgspec.json.encode({"jsonrpc": "2.0", "id": self.n,
                                               "method": method, "params": params}) + b"\n")
        while True:
            msg = msgspec.json.decode(await self.reader.readline())
            if msg.get("id") == self.n:
                assert "error" not in msg, msg
                return msg["result"]


async def run(port: int, sock: str, token: str, agents: int, streams: int, one: int,
              phase: Callable[[str], None]) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/v1/replicas/stream"
    out: dict[str, Any] = {"streams": streams}
    readers = [Reader() for _ in range(streams)]
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=timeout) as session:
        tasks = [asyncio.ensure_future(r.read(session, url, token)) for r in readers]
        await asyncio.wait_for(asyncio.gather(*(r.snapshot.wait() for r in readers)), 60)
        control = Control(*await asyncio.open_unix_connection(sock, limit=1 << 26))

        # one at a time
        phase("one_at_a_time")
        load = loadavg()[0]
        for r in readers:
            r.expect(4 * one)
        for i in range(one):
            name = f"w{i * (agents // one)}"
            for r in readers:
                r.ready[name] = asyncio.Event()
            await control.call("agents.restart", {"names": [name]})
            await asyncio.wait_for(asyncio.gather(*(r.ready[name].wait() for r in readers)),
                                   60)
        await asyncio.wait_for(asyncio.gather(*(r.all_in.wait() for r in readers)), 60)
        out["one_at_a_time"] = {"load": load, "restarts": one,
                                **stats([d for r in readers for d in r.delays])}

        # a burst: every replica stopped, then started
        phase("stop_start_all")
        for r in readers:
            r.ready.clear()
        load = loadavg()[0]
        for r in readers:
            r.expect(4 * agents)
        t0 = time.perf_counter()
        await control.call("agents.stop", {"all": True})
        await control.call("agents.start", {"all": True})
        await asyncio.wait_for(asyncio.gather(*(r.all_in.wait() for r in readers)), 300)
        out["stop_start_all"] = {"load": load, "changes": 4 * agents,
                                 "seconds": round(time.perf_counter() - t0, 2),
                                 **stats([d for r in readers for d in r.delays])}

        # restart all, in one call
        phase("restart_all")
        load = loadavg()[0]
        for r in readers:
            r.expect(4 * agents)
        t0 = time.perf_counter()
        await control.call("agents.restart", {"all": True})
        await asyncio.wait_for(asyncio.gather(*(r.all_in.wait() for r in readers)), 300)
        out["restart_all"] = {"load": load, "changes": 4 * agents,
                              "seconds": round(time.perf_counter() - t0, 2),
                              **stats([d for r in readers for d in r.delays])}
        phase("end")
        control.writer.close()
        for t in tasks:
            t.cancel()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--one", type=int, default=100)
    ap.add_argument("--profile", type=Path, help="the daemon's loop stalls into DIR")
    args = ap.parse_args()
    out: dict[str, Any] = {"agents": args.agents, "loadavg_before": loadavg()}
    d = workdir("watch")
    port = free_port()
    launcher = None
    if args.profile is not None:
        launcher = [sys.executable, "-m", "bench.loop_profile", "--out", str(args.profile),
                    "--uvloop", "--phases", "start,one_at_a_time,stop_start_all,"
                    "restart_all,end"]
    c = CorralDaemon(d, hello_agents(args.agents) + f"""
[http]
listen = "127.0.0.1:{port}"
rate_per_minute = 0
""", extra="heartbeat_interval = 1.0", launcher=launcher)
    probe = Probe(c.sock)

    def phase(name: str) -> None:
        if args.profile is not None and c.proc is not None:
            c.proc.send_signal(signal.SIGUSR1)  # loop_profile: the phase before is done
        probe.phase = name

    try:
        out["corral_ready_s"] = round(c.start(), 2)
        token = json.loads(subprocess.run(
            [str(BIN / "corral"), "--socket", str(c.sock), "token", "create", "bench",
             "--scope", "admin", "--json"], capture_output=True, check=True).stdout)["token"]
        time.sleep(3)
        probe.phase = "idle"
        probe.start()
        out.update(asyncio.run(run(port, str(c.sock), token, args.agents, args.streams,
                                   args.one, phase)))
        probe.done.set()
        out["control_round_trips"] = probe.summary()
    finally:
        probe.done.set()
        c.stop()
        cleanup(d)
    out["loadavg_after"] = loadavg()
    report("watch", out)


if __name__ == "__main__":
    main()
