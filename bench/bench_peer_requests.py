"""What `jsonrpc.Peer` holds for each request of the other side in flight (issue 55).

    PYTHONPATH=TREE .venv/bin/python -m bench.bench_peer_requests [--requests 1000] [--runs 5]

A Peer on uvloop reads a socketpair through a LineProtocol, as the supervisor reads a worker's
stdout; the other end writes `--requests` requests whose handler waits on one future
(a worker's `task/ask` waiting for a person). With all of them in flight, tracemalloc's
count of what was allocated since before they were written, per request, and what of
it the handler's own coroutine is (the same on either side of a change to the Peer);
then the future is set and every answer read back, so the run also checks that each
request was answered once. Then the CPU a request costs this process (both ends: writing
it, the Peer's handling, its answer read back) for `--timed` requests whose handler
answers at once, 256 in flight, without tracemalloc.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import socket
import statistics
import time
import tracemalloc
from typing import Any

import msgspec
import uvloop

from corral.jsonrpc import LineProtocol, Peer, Request, encode


async def one_run(n: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    release: asyncio.Future[None] = loop.create_future()

    async def waits() -> str:
        await release
        return "ok"

    def dispatch(method: str, params: Any, peer: Peer) -> Any:
        return waits()

    peer: Peer | None = None
    transport: asyncio.Transport | None = None

    def line(data: bytes) -> None:
        assert peer is not None
        peer.feed_line(data)

    def eof(exc: Exception | None) -> None:
        if peer is not None:
            peer.close("eof")

    transport, _ = await loop.connect_accepted_socket(
        lambda: LineProtocol(line, eof), ours)
    peer = Peer("bench", transport.write, dispatch=dispatch, cancel_method="$/cancel",
                cancel_id_of=lambda raw: None)
    reader, writer = await asyncio.open_connection(sock=theirs)
    lines = b"".join(encode(Request("task/ask", i + 1, {"prompt": "?"})) for i in range(n))
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    writer.write(lines)
    await writer.drain()
    while peer.handling < n:
        await asyncio.sleep(0.001)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    stats = after.compare_to(before, "lineno")
    held = sum(s.size_diff for s in stats)
    coroutine = sum(s.size_diff for s in stats
                    if s.traceback[0].filename == __file__)
    if SHOW:
        for s in stats[:8]:
            print(f"  {s.size_diff / n:7.1f} B/request {s.count_diff / n:5.2f} blocks  "
                  f"{s.traceback[0].filename.rsplit('/', 2)[-1]}:{s.traceback[0].lineno}")
    answers = 0
    release.set_result(None)
    seen: set[int] = set()
    while answers < n:
        got = json.loads(await reader.readline())
        assert got["result"] == "ok", got
        seen.add(got["id"])
        answers += 1
    assert seen == set(range(1, n + 1))
    assert peer.handling == 0
    writer.close()
    transport.close()
    await asyncio.sleep(0)
    return {"bytes_per_request": held / n, "coroutine": coroutine / n}


async def timed_run(n: int) -> float:
    """CPU microseconds a request, both ends, for `n` requests answered at once."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()

    async def answers(params: Any) -> int:
        return 1

    def dispatch(method: str, params: Any, peer: Peer) -> Any:
        return answers(params)

    peer: Peer | None = None

    def line(data: bytes) -> None:
        assert peer is not None
        peer.feed_line(data)

    transport, _ = await loop.connect_accepted_socket(
        lambda: LineProtocol(line, lambda exc: None), ours)
    peer = Peer("bench", transport.write, dispatch=dispatch)
    reader, writer = await asyncio.open_connection(sock=theirs)
    window = 256
    lines = [encode(Request("task/ask", i + 1, {"prompt": "?"})) for i in range(n)]
    start = time.process_time()
    writer.write(b"".join(lines[:window]))
    sent = window
    for _ in range(n):
        await reader.readline()
        if sent < n:
            writer.write(lines[sent])
            sent += 1
    cpu = time.process_time() - start
    writer.close()
    transport.close()
    await asyncio.sleep(0)
    return cpu / n * 1e6


SHOW = False


def main() -> None:
    global SHOW
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--timed", type=int, default=20000)
    ap.add_argument("--show", action="store_true", help="where the bytes were allocated")
    args = ap.parse_args()
    SHOW = args.show
    runs = [uvloop.run(one_run(args.requests)) for _ in range(args.runs)]
    held = [r["bytes_per_request"] for r in runs]
    cpu = [uvloop.run(timed_run(args.timed)) for _ in range(args.runs)]
    print(msgspec.json.encode({
        "requests": args.requests, "runs": [round(r) for r in held],
        "bytes_per_request": round(statistics.median(held)),
        "of_which_the_handler_coroutine": round(statistics.median(
            r["coroutine"] for r in runs)),
        "cpu_us_per_request": round(statistics.median(cpu), 2),
        "cpu_runs": [round(c, 2) for c in cpu]}).decode())


if __name__ == "__main__":
    main()
