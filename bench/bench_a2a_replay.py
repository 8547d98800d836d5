"""Issue 90: a resubscribe's replay of 1,000 events at the A2A door (goal <= 50 ms).

    .venv/bin/python -m bench.bench_a2a_replay [--events 1000] [--subscribes 30]
        [--vs TREE] [--rounds 1]

`corral daemon` serving bench/replay_agent.py at /a2a/replay (anonymous on loopback, its
tasks durable in the journal). One message starts a task that emits EVENTS chunks of live
output at once and then stays open; once a first stream has seen them all, the task is
subscribed to again (`SubscribeToTask`, JSON-RPC binding, its SSE stream) SUBSCRIBES
times, one after another. A replay's time is from the request sent to the last of the
EVENTS chunks read (every one counted, in order); the median and p99 of them (the first
subscribe, the live one, not counted). Where a replay's time went: the daemon's threads'
time on a core and runnable but off one over it, and this client's (/proc's schedstat),
given for the median replay and the slowest (`tail`). `--vs TREE`: another checkout's daemon (a
worktree of the commit before a change) measured the same way, the two alternated A B A B
for `--rounds`, a new daemon each; each tree's figures over all its replays, and the
rounds' paired ratios of the medians (TREE's / this tree's).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
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


class _Frame(msgspec.Struct):
    result: dict[str, Any]


_frame = msgspec.json.Decoder(_Frame)


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
        # what came, split into lines here (aiohttp's read of a line at a time cost this
        # client more CPU than the daemon's whole event), each event's JSON by msgspec
        held = b""
        async for got in r.content.iter_any():
            lines = (held + got).split(b"\n")
            held = lines.pop()
            for line in lines:
                if not line.startswith(b"data:"):
                    continue
                event = _frame.decode(line[5:]).result
                update = event.get("artifactUpdate")
                if update is None:
                    continue
                text = update["artifact"]["parts"][0].get("text", "")
                assert text == f"chunk {seen}", (text, seen)
                seen += 1
                if seen == events:
                    return time.perf_counter() - t0
    raise AssertionError(f"the stream ended after {seen} of {events} chunks")


def sched(pid: int | str) -> tuple[float, float]:
    """A process's threads' seconds on a core and runnable but off one (schedstat)."""
    ran = waited = 0
    for stat in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        with contextlib.suppress(OSError, ValueError):  # (a thread that ended meanwhile)
            on, off, _ = Path(stat).read_text().split()
            ran, waited = ran + int(on), waited + int(off)
    return ran / 1e9, waited / 1e9


# a replay: its seconds, the daemon's on a core and waiting for one, the client's likewise
Spent = tuple[float, float, float, float, float]


async def measure(url: str, events: int, subscribes: int, daemon: psutil.Process
                  ) -> tuple[list[Spent], float, float]:
    """The replays (after a first, live, subscribe that is not counted), sorted, and the
    daemon's and this client's CPU seconds a replay."""
    async with aiohttp.ClientSession() as http:
        task_id = await start(http, url, events)
        await replay(http, url, task_id, events)
        before, mine = daemon.cpu_times(), time.process_time()
        spent = []
        for _ in range(subscribes):
            d0, c0 = sched(daemon.pid), sched("self")
            took = await replay(http, url, task_id, events)
            d1, c1 = sched(daemon.pid), sched("self")
            spent.append((took, d1[0] - d0[0], d1[1] - d0[1], c1[0] - c0[0], c1[1] - c0[1]))
        after, mine = daemon.cpu_times(), time.process_time() - mine
    return (sorted(spent), (after.user + after.system - before.user - before.system)
            / subscribes, mine / subscribes)


def one(tree: Path | None, events: int, subscribes: int
        ) -> tuple[list[Spent], float, float]:
    """One daemon's replays (of `tree`, None: this one), seconds each, sorted, and the
    daemon's CPU seconds a replay (its user + system time over them: what the load moves
    least) and the client's (this process's: its reads and JSON decodes of the events)."""
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


def figures(spent: list[Spent]) -> dict[str, Any]:
    spent = sorted(spent)
    times = [s[0] for s in spent]

    def where(s: Spent) -> dict[str, float]:
        return {k: round(v * 1000, 1) for k, v in zip(
            ("ms", "daemon_on_cpu", "daemon_waiting", "client_on_cpu", "client_waiting"), s,
            strict=True)}
    return {"p50_ms": round(statistics.median(times) * 1000, 1),
            "p99_ms": round(times[max(0, int(len(times) * 0.99) - 1)] * 1000, 1),
            "min_ms": round(times[0] * 1000, 1), "max_ms": round(times[-1] * 1000, 1),
            "median": where(spent[len(spent) // 2]), "tail": [where(s) for s in spent[-3:]]}


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
    times: dict[int, list[Spent]] = {i: [] for i in range(len(trees))}
    cpu: dict[int, list[float]] = {i: [] for i in range(len(trees))}
    clients: dict[int, list[float]] = {i: [] for i in range(len(trees))}
    ratios, cpu_ratios = [], []
    for r in range(args.rounds):
        medians = {}
        for tree in trees if r % 2 == 0 else trees[::-1]:
            i = trees.index(tree)
            got, spent, client = one(tree, args.events, args.subscribes)
            times[i] += got
            cpu[i].append(spent)
            clients[i].append(client)
            medians[i] = statistics.median(s[0] for s in got)
            print(f"round {r} {tree or 'this tree'}: {figures(got)}, daemon CPU "
                  f"{spent * 1000:.1f} ms a replay (the client's {client * 1000:.1f}), "
                  f"load {loadavg()[0]}", flush=True)
        if len(trees) == 2:
            ratios.append(round(medians[1] / medians[0], 2))
            cpu_ratios.append(round(cpu[1][-1] / cpu[0][-1], 2))

    def cpu_ms(i: int) -> dict[str, float]:
        return {"daemon_cpu_ms": round(statistics.median(cpu[i]) * 1000, 2),
                "client_cpu_ms": round(statistics.median(clients[i]) * 1000, 2)}
    result |= figures(times[0]) | cpu_ms(0)
    if args.vs is not None:
        result["vs"] = {"tree": str(args.vs), **figures(times[1]), **cpu_ms(1)}
        result["paired_ratios"] = ratios
        result["paired_cpu_ratios"] = cpu_ratios
    result["load_after"] = loadavg()
    report("a2a_replay", result)


if __name__ == "__main__":
    main()
