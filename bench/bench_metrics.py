"""Issue 21: a scrape of `/metrics` at 1000 agents (each one replica, each with a finished
task, so every per-agent series and histogram is there): the time per scrape, the size
of the exposition, and the loop's worst stall while scraping (bench_scale's probe: a
control call every 5 ms on the socket), beside the same probe while idle; then the
daemon's CPU time per scrape, scraped again with the probe paused (a figure a loaded
machine changes less than the wall-clock ones). Also the cost of one metrics-history
sample at that size (`stats.get`'s figures do not include it: the daemon's own sampler
runs every `history_interval`; here every second).

    .venv/bin/python -m bench.bench_metrics [--agents 1000] [--scrapes 30]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import time
import urllib.request
from typing import Any

from .bench_scale import Probe, cpu
from .harness import CorralDaemon, free_port, hello_agents, report, workdir

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def agents(n: int, port: int) -> str:
    return hello_agents(n) + f"""
[http]
listen = "127.0.0.1:{port}"
metrics_public = true
history_interval = 1.0
"""


def call(sock_path: str, method: str, params: dict[str, Any]) -> Any:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock_path)
        f = s.makefile("rb")
        s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                              "params": params}).encode() + b"\n")
        return json.loads(f.readline())["result"]


def scrape(url: str, accept: str | None) -> tuple[float, int, int]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req) as r:
        body = r.read()
    return time.perf_counter() - t0, len(body), body.count(b"\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--scrapes", type=int, default=30)
    args = ap.parse_args()
    d = workdir("metrics")
    port = free_port()
    c = CorralDaemon(d, agents(args.agents, port), extra="heartbeat_interval = 1.0")
    probe = Probe(c.sock)
    probe.start()
    try:
        ready = c.start()
        probe.phase = "tasks"
        ids = [call(str(c.sock), "tasks.submit", {"agent": f"w{i}",
                                                  "input": {"name": "m"}})["task_id"]
               for i in range(args.agents)]
        for task_id in ids:
            call(str(c.sock), "tasks.get", {"task_id": task_id, "wait": True})
        probe.phase = "idle"
        time.sleep(5)
        url = f"http://127.0.0.1:{port}/metrics"
        out: dict[str, Any] = {"agents": args.agents, "ready_s": round(ready, 2)}
        assert c.proc is not None
        for name, accept in (("text", None), ("openmetrics", OPENMETRICS)):
            probe.phase = f"scrape_{name}"
            runs = [scrape(url, accept) for _ in range(args.scrapes)]
            times = sorted(t for t, _, _ in runs)
            probe.paused = True
            time.sleep(0.1)
            # less what the daemon spends meanwhile without scrapes (a thousand agents'
            # heartbeats): measured just before, over as long
            cpu0, t0 = cpu(c.proc.pid), time.perf_counter()
            for _ in range(args.scrapes):
                scrape(url, accept)
            spent, took = cpu(c.proc.pid) - cpu0, time.perf_counter() - t0
            cpu0 = cpu(c.proc.pid)
            time.sleep(took)
            spent -= cpu(c.proc.pid) - cpu0
            probe.paused = False
            out[name] = {"scrapes": len(runs), "median_ms": round(
                statistics.median(times) * 1000, 1), "worst_ms": round(times[-1] * 1000, 1),
                "bytes": runs[-1][1], "lines": runs[-1][2],
                "daemon_cpu_per_scrape_ms": round(spent / args.scrapes * 1000, 1)}
        probe.phase = "done"
        out["loop_lag"] = {k: v for k, v in probe.summary().items()
                           if k in ("idle", "scrape_text", "scrape_openmetrics")}
        history = call(str(c.sock), "stats.history", {"since": 60})
        out["history_samples_in_the_last_minute"] = len(history["samples"])
        report("bench_metrics", out)
    finally:
        probe.done.set()
        c.stop()


if __name__ == "__main__":
    main()
