"""Issue 21: the HTTP API beside its peers, in one run.

(a) list 1000 agents: `GET /api/v1/agents` (a bearer token, one keep-alive connection)
    beside supervisord 4.3.0's XML-RPC `supervisor.getAllProcessInfo` with 1000 programs
    (its own transport over its unix socket); both answers decoded. Goal <= 0.5x.
(b) a task's round trip: `POST /api/v1/tasks?wait=10` (one keep-alive connection) beside
    `tasks.run` on the control socket (`corral.cli.client.Client`), one at a time, to an
    echo agent of 2 replicas. Goal <= 1.5x. Then throughput: CONC keep-alive HTTP
    connections each sending its next task when the last is answered (HTTP/1.1 has no
    useful pipelining) beside the socket pipelined 256 deep (harness.pipelined_tasks).
(c) an event to SSE clients: `events.publish` on the control socket -> the event read
    by each of STREAMS clients of `/api/v1/events/stream`, with 1000 agents running.
    Goal: p99 <= 100 ms. (An agent's state change -> the fleet's stream,
    `/api/v1/replicas/stream`, is bench/bench_watch.py.)

The 1000 agents (SDK hello, one replica each, `warm = true`) run first under corral, then
under supervisord (never both at once: 2000 interpreters would be the measure). The load
average before each figure is in the output.

    .venv/bin/python -m bench.bench_http [--agents 1000] [--calls 30] [--tasks 500]
        [--streams 100] [--events 50] [--no-peer]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import aiohttp
import msgspec

from corral.cli.client import Client

from .bench_scale import loadavg
from .harness import (
    BIN,
    HELLO,
    ROOT,
    CorralDaemon,
    Supervisord,
    cleanup,
    free_port,
    hello_agents,
    pipelined_tasks,
    report,
    workdir,
)

ECHO = ROOT / "bench" / "echo_agent.py"


def config(n: int, port: int) -> str:
    return hello_agents(n) + f"""
[agents.echo]
command = ["{sys.executable}", "{ECHO}"]
env = {{ PYTHONPATH = "{ROOT}" }}
replicas = 2
start_timeout = 120

[http]
listen = "127.0.0.1:{port}"
rate_per_minute = 0
"""


def stats(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {"n": len(s), "median_ms": round(statistics.median(s) * 1000, 3),
            "p99_ms": round(s[max(0, int(len(s) * 0.99) - 1)] * 1000, 3),
            "worst_ms": round(s[-1] * 1000, 3)}


def timed(fn: Any, n: int, warm: int = 3) -> list[float]:
    for _ in range(warm):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


class Http:
    """One keep-alive connection, as a client library would hold."""

    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port)
        self.headers = {"Authorization": f"Bearer {token}",
                        "Content-Type": "application/json"}

    def ask(self, verb: str, path: str, body: bytes | None = None) -> Any:
        self.conn.request(verb, path, body=body, headers=self.headers)
        r = self.conn.getresponse()
        data = r.read()
        assert r.status in (200, 202), (r.status, data[:300])
        return json.loads(data)


async def http_throughput(port: int, token: str, total: int, conc: int) -> float:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    url = f"http://127.0.0.1:{port}/api/v1/tasks?wait=10"
    per = total // conc
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=conc)) as s:
        async def worker(k: int) -> None:
            for i in range(per):
                body = msgspec.json.encode({"agent": "echo", "input": {"n": k * per + i}})
                async with s.post(url, data=body, headers=headers) as r:
                    await r.read()
                    assert r.status == 200, r.status
        await asyncio.gather(*(worker(k) for k in range(conc)))  # warm the connections
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(conc)))
        return per * conc / (time.perf_counter() - t0)


async def sse_latency(port: int, token: str, sock: str, streams: int, events: int
                      ) -> dict[str, Any]:
    """Each of `streams` clients reads `/events/stream`; `events` events are published
    on the socket 20 ms apart, each carrying its send time; latencies of every
    (event, client) pair."""
    headers = {"Authorization": f"Bearer {token}"}
    url = f"http://127.0.0.1:{port}/api/v1/events/stream?pattern=bench.*"
    lat: list[float] = []
    got = [0] * streams
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as s:
        opened = asyncio.Event()
        ready = [0]

        async def reader(k: int) -> None:
            async with s.get(url, headers=headers) as r:
                assert r.status == 200, r.status
                ready[0] += 1
                if ready[0] == streams:
                    opened.set()
                async for line in r.content:
                    if line.startswith(b"data: "):
                        now = time.time()
                        sent = msgspec.json.decode(line[6:])["data"]["t"]
                        lat.append(now - sent)
                        got[k] += 1
                        if got[k] == events:
                            return

        tasks = [asyncio.ensure_future(reader(k)) for k in range(streams)]
        await asyncio.wait_for(opened.wait(), 60)
        await asyncio.sleep(0.5)
        reader_, writer = await asyncio.open_unix_connection(sock)
        for i in range(events):
            writer.write(msgspec.json.encode({
                "jsonrpc": "2.0", "id": i, "method": "events.publish",
                "params": {"topic": "bench.state", "data": {"t": time.time(), "i": i}}})
                + b"\n")
            await writer.drain()
            await reader_.readline()
            await asyncio.sleep(0.02)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        writer.close()
    return {"streams": streams, "events": events, **stats(lat)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--tasks", type=int, default=500)
    ap.add_argument("--throughput", type=int, default=5000)
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--events", type=int, default=50)
    ap.add_argument("--no-peer", action="store_true")
    args = ap.parse_args()
    out: dict[str, Any] = {"agents": args.agents, "loadavg_before": loadavg()}

    d = workdir("http")
    port = free_port()
    c = CorralDaemon(d, config(args.agents, port), extra="heartbeat_interval = 1.0")
    try:
        out["corral_ready_s"] = round(c.start(), 2)
        token = json.loads(subprocess.run(
            [str(BIN / "corral"), "--socket", str(c.sock), "token", "create", "bench",
             "--scope", "admin", "--json"], capture_output=True, check=True).stdout)["token"]
        time.sleep(3)
        h = Http(port, token)
        sock = Client(c.sock)

        # (a) the listing
        load = loadavg()[0]
        n_listed = len(h.ask("GET", "/api/v1/agents")["agents"])
        out["list"] = {"load": load, "corral_http": stats(timed(
            lambda: h.ask("GET", "/api/v1/agents"), args.calls)), "listed": n_listed}
        load = loadavg()[0]
        out["list"]["corral_socket"] = {"load": load, **stats(timed(
            lambda: sock.call("agents.status", {}), args.calls))}

        # (b) a task's round trip, then throughput
        body = msgspec.json.encode({"agent": "echo", "input": {"n": 1}})
        load = loadavg()[0]
        rt_http = timed(lambda: h.ask("POST", "/api/v1/tasks?wait=10", body), args.tasks, 20)
        load2 = loadavg()[0]
        rt_sock = timed(lambda: sock.call("tasks.run", {"agent": "echo",
                                                        "input": {"n": 1}}),
                        args.tasks, 20)
        out["task_round_trip"] = {
            "http": {"load": load, **stats(rt_http)},
            "socket": {"load": load2, **stats(rt_sock)},
            "ratio_median": round(statistics.median(rt_http) / statistics.median(rt_sock),
                                  2)}
        load = loadavg()[0]
        tp_http = asyncio.run(http_throughput(port, token, args.throughput, args.conc))
        load2 = loadavg()[0]
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(c.sock))
            tp_sock = pipelined_tasks(s, args.throughput)
        out["task_throughput"] = {
            "http": {"load": load, "connections": args.conc, "tasks_per_s": round(tp_http)},
            "socket": {"load": load2, "window": 256, "tasks_per_s": round(tp_sock)},
            "ratio": round(tp_http / tp_sock, 2)}

        # (c) events to SSE clients
        out["sse"] = {}
        for streams in sorted({1, args.streams}):
            load = loadavg()[0]
            out["sse"][str(streams)] = {"load": load, **asyncio.run(sse_latency(
                port, token, str(c.sock), streams, args.events))}
        sock.close()
        h.conn.close()
    finally:
        c.stop()
        cleanup(d)

    if not args.no_peer:
        d = workdir("http-sd")
        sd = Supervisord(d, args.agents, f"{sys.executable} {HELLO}")
        try:
            sd.start(args.agents)
            time.sleep(3)
            rpc = sd.rpc()
            load = loadavg()[0]
            xs = timed(lambda: rpc.supervisor.getAllProcessInfo(), args.calls)
            out["list"]["supervisord_xmlrpc"] = {"load": load, **stats(xs)}
            out["list"]["ratio_median"] = round(
                out["list"]["corral_http"]["median_ms"] / (statistics.median(xs) * 1000), 2)
            out["list"]["ratio_p99"] = round(
                out["list"]["corral_http"]["p99_ms"]
                / out["list"]["supervisord_xmlrpc"]["p99_ms"], 2)
        finally:
            sd.stop()
            cleanup(d)
    out["loadavg_after"] = loadavg()
    report("http", out)


if __name__ == "__main__":
    main()
