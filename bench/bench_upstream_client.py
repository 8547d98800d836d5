"""Does the model gateway's own HTTP/1.1 client (corral/daemon/models/http1.py) earn its
place against aiohttp's ClientSession, already a dependency (issue 72, decision 628)?

Both make the same upstream call, a small Chat Completions POST answered whole, to the
same local stand-in provider (tests/servers/model_upstream.py, a separate process that
answers at once), kept-alive connections, on uvloop as the daemon runs: N calls at
concurrency 1 and 10, each client in turn, ROUNDS rounds. Per call: the CPU of this
process (the daemon's share of an upstream call: `time.process_time`), and p50 / p99 of
the latency (post to the body read).

    .venv/bin/python -m bench.bench_upstream_client [--quick]  # -> results/upstream_client.json
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import uvloop

from corral.daemon.models.http1 import UpstreamClient

ROOT = Path(__file__).resolve().parent.parent
QUICK = "--quick" in sys.argv
CALLS = 1000 if QUICK else 4000
ROUNDS = 3 if QUICK else 5
BODY = json.dumps({"model": "gpt-small",
                   "messages": [{"role": "user", "content": "hello there"}]}).encode()
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
TIMEOUT = 30.0

Call = Callable[[], Awaitable[bytes]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(call: Call, n: int, concurrency: int) -> dict[str, float]:
    """n calls, `concurrency` at once: CPU µs a call, latency p50/p99 in µs."""
    latencies: list[float] = []
    left = iter(range(n))

    async def worker() -> None:
        for _ in left:
            t0 = time.perf_counter()
            answer = await call()
            latencies.append(time.perf_counter() - t0)
            assert answer.startswith(b"{"), answer[:80]

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    latencies.sort()
    return {"cpu_us": cpu / n * 1e6, "p50_us": latencies[n // 2] * 1e6,
            "p99_us": latencies[int(n * 0.99)] * 1e6, "per_s": n / wall}


async def measure(url: str) -> dict[str, dict[str, list[dict[str, float]]]]:
    own = UpstreamClient()

    async def corral_call() -> bytes:
        answer = await own.post(url, BODY, HEADERS, TIMEOUT)
        try:
            return await answer.read()
        finally:
            answer.release()

    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT))

    async def aiohttp_call() -> bytes:
        async with session.post(url, data=BODY, headers=HEADERS) as r:
            return await r.read()

    clients = {"http1": corral_call, "aiohttp": aiohttp_call}
    out: dict[str, dict[str, list[dict[str, float]]]] = {
        name: {"1": [], "10": []} for name in clients}
    try:
        for call in clients.values():  # warm: connections made, code paths hot
            await run(call, 200, 10)
        for _ in range(ROUNDS):
            for c in (1, 10):
                for name, call in clients.items():
                    out[name][str(c)].append(await run(call, CALLS, c))
    finally:
        own.close()
        await session.close()
    return out


def main() -> None:
    port = free_port()
    upstream = subprocess.Popen([sys.executable, str(ROOT / "tests/servers/model_upstream.py"),
                                 str(port)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        got = uvloop.run(measure(f"http://127.0.0.1:{port}/v1/chat/completions"))
    finally:
        upstream.kill()
        upstream.wait()
    result: dict[str, object] = {"calls_per_round": CALLS, "rounds": ROUNDS}
    for c in ("1", "10"):
        row = {name: {k: round(statistics.median(r[k] for r in got[name][c]), 1)
                      for k in ("cpu_us", "p50_us", "p99_us", "per_s")} for name in got}
        row["aiohttp_over_http1"] = {k: round(row["aiohttp"][k] / row["http1"][k], 2)
                                     for k in ("cpu_us", "p50_us")}
        result[f"concurrency_{c}"] = row
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "upstream_client.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
