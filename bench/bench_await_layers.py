"""What a coroutine layer of a call costs (issue 90): a task awaiting a future through a
chain of `depth` coroutines, made, resumed and ended, against the same through a chain of
two; the difference over the layers between is one layer's CPU a call (the thread's time,
the least of the repeats: a loaded machine only adds to it).

    .venv/bin/python -m bench.bench_await_layers [--calls 5000] [--repeats 7] [--depth 12]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any


async def _leaf(answer: asyncio.Future[None]) -> int:
    await answer
    await asyncio.sleep(0)  # (a third resume: a submission's wait for its commit is one)
    return 1


async def _layer(depth: int, answer: asyncio.Future[None]) -> int:
    if depth == 0:
        return await _leaf(answer)
    return await _layer(depth - 1, answer)


async def _per_call(depth: int, calls: int) -> float:
    loop = asyncio.get_running_loop()
    began = time.thread_time()
    for _ in range(calls):
        answer = loop.create_future()
        task = loop.create_task(_layer(depth, answer))
        await asyncio.sleep(0)
        answer.set_result(None)
        await task
    return (time.thread_time() - began) / calls * 1e6


async def measure(calls: int, repeats: int, depth: int) -> dict[str, Any]:
    best = {2: float("inf"), depth: float("inf")}
    for _ in range(repeats):
        for d in best:
            best[d] = min(best[d], await _per_call(d, calls))
    return {"us_a_call": {d: round(v, 2) for d, v in best.items()},
            "us_a_layer": round((best[depth] - best[2]) / (depth - 2), 3)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--depth", type=int, default=12)
    args = p.parse_args()
    print(asyncio.run(measure(args.calls, args.repeats, args.depth)))


if __name__ == "__main__":
    main()
