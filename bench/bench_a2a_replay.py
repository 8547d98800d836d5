"""Issue 90: a resubscribe's replay of 1,000 events at the A2A door (goal <= 50 ms).

    .venv/bin/python -m bench.bench_a2a_replay [--events 1000] [--subscribes 30]

`corral daemon` serving bench/replay_agent.py at /a2a/replay (anonymous on loopback, its
tasks durable in the journal). One message starts a task that emits EVENTS chunks of live
output at once and then stays open; once a first stream has seen them all, the task is
subscribed to again (`SubscribeToTask`, JSON-RPC binding, its SSE stream) SUBSCRIBES
times, one after another. A replay's time is from the request sent to the last of the
EVENTS chunks read (every one counted, in order); the median and p99 of them, and the
first subscribe's (the live one) beside them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from typing import Any

import aiohttp
import uvloop

from .bench_a2a import wait_listening
from .bench_scale import loadavg
from .harness import PY, ROOT, CorralDaemon, cleanup, free_port, report, workdir

AGENT = ROOT / "bench" / "replay_agent.py"
HEADERS = {"Content-Type": "application/json", "A2A-Version": "1.0"}


def config(port: int) -> str:
    return f"""
[agents.replay]
command = ["{PY}", "{AGENT}"]
env = {{ PYTHONPATH = "{ROOT}" }}
retries = 1

[http]
listen = "127.0.0.1:{port}"
rate_per_minute = 0
[a2a]
anonymous = ["replay"]
"""


def rpc(method: str, params: dict[str, Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                       "params": params}).encode()


async def start(http: aiohttp.ClientSession, url: str, events: int) -> str:
    body = rpc("SendMessage", {"message": {
        "messageId": uuid.uuid4().hex, "role": "ROLE_USER",
        "parts": [{"text": str(events)}]},
        "configuration": {"returnImmediately": True}})
    async with http.post(url, data=body, headers=HEADERS) as r:
        got = json.loads(await r.read())
    return str(got["result"]["task"]["id"])


async def replay(http: aiohttp.ClientSession, url: str, task_id: str, events: int) -> float:
    """Seconds from the request to the EVENTS-th chunk read, each in its order."""
    seen = 0
    t0 = time.perf_counter()
    async with http.post(url, data=rpc("SubscribeToTask", {"id": task_id}),
                         headers=HEADERS | {"Accept": "text/event-stream"}) as r:
        async for line in r.content:
            if not line.startswith(b"data:"):
                continue
            event = json.loads(line[5:])["result"]
            update = event.get("artifactUpdate")
            if update is None:
                continue
            text = update["artifact"]["parts"][0].get("text", "")
            assert text == f"chunk {seen}", (text, seen)
            seen += 1
            if seen == events:
                return time.perf_counter() - t0
    raise AssertionError(f"the stream ended after {seen} of {events} chunks")


async def measure(url: str, events: int, subscribes: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        task_id = await start(http, url, events)
        first = await replay(http, url, task_id, events)
        times = sorted([await replay(http, url, task_id, events) for _ in range(subscribes)])
    return {"events": events, "subscribes": subscribes,
            "first_ms": round(first * 1000, 1),
            "p50_ms": round(statistics.median(times) * 1000, 1),
            "p99_ms": round(times[max(0, int(len(times) * 0.99) - 1)] * 1000, 1),
            "min_ms": round(times[0] * 1000, 1), "max_ms": round(times[-1] * 1000, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--subscribes", type=int, default=30)
    args = ap.parse_args()
    port = free_port()
    d = workdir("replay")
    daemon = CorralDaemon(d, config(port))
    result: dict[str, Any] = {"load_before": loadavg()}
    try:
        daemon.start()
        wait_listening(port)
        result |= uvloop.run(measure(f"http://127.0.0.1:{port}/a2a/replay", args.events,
                                     args.subscribes))
    finally:
        daemon.stop()
        cleanup(d)
    result["load_after"] = loadavg()
    report("a2a_replay", result)


if __name__ == "__main__":
    main()
