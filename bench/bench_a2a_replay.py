"""Issue 90: a resubscribe's replay of 1,000 events at the A2A door (goal <= 50 ms).

    .venv/bin/python -m bench.bench_a2a_replay [--events 1000] [--subscribes 30]
        [--vs TREE] [--rounds 1]

`corral daemon` serving bench/replay_agent.py at /a2a/replay (anonymous on loopback, its
tasks durable in the journal). One message starts a task that emits EVENTS chunks of live
output at once and then stays open; once a first stream has seen them all, the task is
subscribed to again (`SubscribeToTask`, JSON-RPC binding, its SSE stream) SUBSCRIBES
times, one after another. A replay's time is from the request sent to the last of the
EVENTS chunks read (every one counted, in order); the median and p99 of them (the first
subscribe, the live one, not counted). `--vs TREE`: another checkout's daemon (a
worktree of the commit before a change) measured the same way, the two alternated A B A B
for `--rounds`, a new daemon each; each tree's figures over all its replays, and the
rounds' paired ratios of the medians (TREE's / this tree's).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import uvloop

from .bench_a2a import launcher_of, wait_listening
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


async def measure(url: str, events: int, subscribes: int, daemon: psutil.Process
                  ) -> tuple[list[float], float]:
    """The replays' seconds (after a first, live, subscribe that is not counted), and the
    daemon's CPU seconds a replay."""
    async with aiohttp.ClientSession() as http:
        task_id = await start(http, url, events)
        await replay(http, url, task_id, events)
        before = daemon.cpu_times()
        times = sorted([await replay(http, url, task_id, events) for _ in range(subscribes)])
        after = daemon.cpu_times()
    return times, (after.user + after.system - before.user - before.system) / subscribes


def one(tree: Path | None, events: int, subscribes: int) -> tuple[list[float], float]:
    """One daemon's replays (of `tree`, None: this one), seconds each, sorted, and the
    daemon's CPU seconds a replay (its user + system time over them: what the load moves
    least)."""
    port = free_port()
    d = workdir("replay")
    daemon = CorralDaemon(d, config(port), launcher=launcher_of(tree))
    try:
        daemon.start()
        wait_listening(port)
        assert daemon.proc is not None
        proc = psutil.Process(daemon.proc.pid)
        return uvloop.run(measure(f"http://127.0.0.1:{port}/a2a/replay", events, subscribes,
                                  proc))
    finally:
        daemon.stop()
        cleanup(d)


def figures(times: list[float]) -> dict[str, Any]:
    times = sorted(times)
    return {"p50_ms": round(statistics.median(times) * 1000, 1),
            "p99_ms": round(times[max(0, int(len(times) * 0.99) - 1)] * 1000, 1),
            "min_ms": round(times[0] * 1000, 1), "max_ms": round(times[-1] * 1000, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--subscribes", type=int, default=30)
    ap.add_argument("--vs", type=Path, help="another checkout's daemon beside this one's")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    trees: list[Path | None] = [None] if args.vs is None else [None, args.vs.resolve()]
    result: dict[str, Any] = {"events": args.events, "subscribes": args.subscribes,
                              "load_before": loadavg()}
    times: dict[int, list[float]] = {i: [] for i in range(len(trees))}
    cpu: dict[int, list[float]] = {i: [] for i in range(len(trees))}
    ratios, cpu_ratios = [], []
    for r in range(args.rounds):
        medians = {}
        for tree in trees if r % 2 == 0 else trees[::-1]:
            i = trees.index(tree)
            got, spent = one(tree, args.events, args.subscribes)
            times[i] += got
            cpu[i].append(spent)
            medians[i] = statistics.median(got)
            print(f"round {r} {tree or 'this tree'}: {figures(got)}, daemon CPU "
                  f"{spent * 1000:.1f} ms a replay, load {loadavg()[0]}", flush=True)
        if len(trees) == 2:
            ratios.append(round(medians[1] / medians[0], 2))
            cpu_ratios.append(round(cpu[1][-1] / cpu[0][-1], 2))

    def cpu_ms(i: int) -> float:
        return round(statistics.median(cpu[i]) * 1000, 2)
    result |= figures(times[0]) | {"daemon_cpu_ms": cpu_ms(0)}
    if args.vs is not None:
        result["vs"] = {"tree": str(args.vs), **figures(times[1]),
                        "daemon_cpu_ms": cpu_ms(1)}
        result["paired_ratios"] = ratios
        result["paired_cpu_ratios"] = cpu_ratios
    result["load_after"] = loadavg()
    report("a2a_replay", result)


if __name__ == "__main__":
    main()
