"""Issue 87/90: A2A `SendMessage` (JSON-RPC binding, blocking) to a trivial agent, corral's
door beside the A2A TCK's reference server (`sut/a2a-python`, `a2a-sdk` 1.3.0, patched as
the kit's ORIGIN.md says), in one run, driven by the same load generator.

corral: `corral daemon` serving bench/echo_agent.py (REPLICAS workers) at /a2a/echo, every
message a durable task (journaled, its output an artifact), anonymous on loopback. The
reference: its own process (uvicorn, in-memory task store), its default branch completing
each task with a message. The load generator: CONC clients on one uvloop in a process of its
own, each sending its next message when the last is answered (one keep-alive connection
each), every messageId new (corral's idempotency key: a repeated one would be a replay);
each answer checked for a completed task or a message.

    .venv/bin/python -m bench.bench_a2a [--messages 5000] [--conc 10,50] [--replicas 2]
        [--memory 100000] [--no-peer]

`--memory N` sends N messages to corral alone at c=10 and reports the daemon's RSS after
a tenth of them (warm) and at the end. The reference server's venv is made once under
$CORRAL_PEERS (default ~/.cache/corral-peers/a2a-sut) with pinned packages.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from .bench_scale import loadavg
from .harness import ROOT, CorralDaemon, cleanup, free_port, report, workdir

ECHO = ROOT / "bench" / "echo_agent.py"
# the kit beside the checkout, as scripts/a2a-tck.sh finds it
TCK = next((p for p in (Path(os.environ.get("CORRAL_A2A_TCK", "/nonexistent")),
                        ROOT.parent / "shared" / "a2a-tck",
                        ROOT.parent.parent / "shared" / "a2a-tck")
            if (p / "run_tck.py").exists()), ROOT.parent / "shared" / "a2a-tck")
PEERS = Path(os.environ.get("CORRAL_PEERS", Path.home() / ".cache" / "corral-peers"))
SUT_PINS = ["a2a-sdk[http-server,grpc]==1.3.0", "grpcio==1.78.0", "uvicorn==0.54.0",
            "starlette==1.10.0", "sse-starlette==3.7.0", "packaging==26.3"]


def sut_python() -> Path:
    """The reference server's interpreter: a venv of its own, made once under its pins."""
    venv = PEERS / "a2a-sut"
    stamp = venv / ".pins"
    if not stamp.exists() or stamp.read_text() != " ".join(SUT_PINS):
        shutil.rmtree(venv, ignore_errors=True)
        uv = Path(sys.executable).parent / "uv"
        subprocess.run([str(uv), "venv", "-q", "-p", sys.executable, str(venv)], check=True)
        subprocess.run([str(uv), "pip", "install", "-q", *SUT_PINS],
                       env={**os.environ, "VIRTUAL_ENV": str(venv)}, check=True)
        stamp.write_text(" ".join(SUT_PINS))
    return venv / "bin" / "python"


def sut_agent(into: Path) -> Path:
    """The kit's reference agent, patched for a2a-sdk 1.3.0 as its ORIGIN.md says."""
    agent = into / "sut_agent.py"
    shutil.copy(TCK / "sut" / "a2a-python" / "sut_agent.py", agent)
    patch = TCK / "sut-patches" / "sut_agent-sdk1.3.0.patch"
    subprocess.run(["patch", "-s", str(agent), str(patch)], check=True)
    return agent


LOADGEN = r"""
import asyncio, json, sys, time, uuid
import aiohttp, uvloop
url, total, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lat, bad = [], []
async def client(http, n):
    for _ in range(n):
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {
            "message": {"messageId": "bench-" + uuid.uuid4().hex, "role": "ROLE_USER",
                        "parts": [{"text": "hi"}]}}})
        t = time.perf_counter()
        async with http.post(url, data=body, headers={"Content-Type": "application/json",
                                                      "A2A-Version": "1.0"}) as r:
            got = await r.read()
        lat.append(time.perf_counter() - t)
        res = json.loads(got).get("result") or {}
        state = (res.get("task") or {}).get("status", {}).get("state")
        if "message" not in res and state != "TASK_STATE_COMPLETED":
            bad.append(got[:300].decode(errors="replace"))
async def main():
    conn = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=conn) as http:
        t = time.perf_counter()
        await asyncio.gather(*(client(http, total // conc) for _ in range(conc)))
        wall = time.perf_counter() - t
    print(json.dumps({"wall": wall, "lat": lat, "bad": len(bad), "first_bad": bad[:1]}))
uvloop.run(main())
"""


def drive(url: str, total: int, conc: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", LOADGEN, url, str(total), str(conc)],
                         capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    lat = sorted(got["lat"])
    return {"messages": len(lat), "per_s": round(len(lat) / got["wall"]),
            "p50_ms": round(statistics.median(lat) * 1000, 2),
            "p99_ms": round(lat[max(0, int(len(lat) * 0.99) - 1)] * 1000, 2),
            "errors": got["bad"], "first_error": got["first_bad"]}


def corral_config(port: int, replicas: int) -> tuple[str, str]:
    agents = f"""
[agents.echo]
command = ["{sys.executable}", "{ECHO}"]
env = {{ PYTHONPATH = "{ROOT}" }}
description = "returns its input"
replicas = {replicas}
max_concurrent_tasks = 64
"""
    extra = f"""
[http]
listen = "127.0.0.1:{port}"
rate_per_minute = 0
[a2a]
anonymous = ["echo"]
"""
    return agents, extra


def wait_listening(port: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    import socket
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def run_corral(args: argparse.Namespace, concs: list[int]) -> dict[str, Any]:
    port = free_port()
    d = workdir("a2a")
    agents, extra = corral_config(port, args.replicas)
    # (the [http] and [a2a] tables after the agents: CorralDaemon's `extra` is inside its
    # [supervisor] table)
    daemon = CorralDaemon(d, agents + extra)
    daemon.start()
    try:
        url = f"http://127.0.0.1:{port}/a2a/echo"
        drive(url, 200, 10)  # warm: the workers' first tasks, the door's first routes
        out: dict[str, Any] = {f"c{c}": drive(url, args.messages, c) for c in concs}
        if args.memory:
            assert daemon.proc is not None
            proc = psutil.Process(daemon.proc.pid)
            warm = drive(url, args.memory // 10, 10)
            rss_warm = proc.memory_info().rss
            rest = drive(url, args.memory - args.memory // 10, 10)
            rss_end = proc.memory_info().rss
            out["memory"] = {"messages": warm["messages"] + rest["messages"],
                             "errors": warm["errors"] + rest["errors"],
                             "rss_warm_mb": round(rss_warm / 2**20, 1),
                             "rss_end_mb": round(rss_end / 2**20, 1),
                             "ratio": round(rss_end / rss_warm, 3)}
        return out
    finally:
        daemon.stop()
        cleanup(d)


def run_peer(args: argparse.Namespace, concs: list[int]) -> dict[str, Any]:
    python = sut_python()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        agent = sut_agent(Path(tmp))
        proc = subprocess.Popen([str(python), str(agent)], cwd=tmp,
                                env={**os.environ, "SUT_HOST": f"127.0.0.1:{port}",
                                     "GRPC_PORT": str(free_port())},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening(port, proc)
            url = f"http://127.0.0.1:{port}/"
            drive(url, 200, 10)
            return {f"c{c}": drive(url, args.messages, c) for c in concs}
        finally:
            proc.kill()
            proc.wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--conc", default="10,50")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--memory", type=int, default=0)
    p.add_argument("--no-peer", action="store_true")
    args = p.parse_args()
    concs = [int(c) for c in args.conc.split(",")]
    result: dict[str, Any] = {"load_before": loadavg(), "messages": args.messages,
                              "replicas": args.replicas, "id": uuid.uuid4().hex[:8]}
    result["corral"] = run_corral(args, concs)
    if not args.no_peer:
        result["reference"] = run_peer(args, concs)
        result["ratio"] = {c: round(result["corral"][c]["per_s"] /
                                    result["reference"][c]["per_s"], 2)
                           for c in result["reference"]}
    result["load_after"] = loadavg()
    report("a2a", result)


if __name__ == "__main__":
    main()
