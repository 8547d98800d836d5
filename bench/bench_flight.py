"""What a journaled call's flight costs the loop (issue 73, supervisor/tasks/steps.py
`_fly`): the call made in an asyncio task of its own, awaited through a shield, its
handler's task in a context variable and a done callback that takes it out of the
registry, against the call awaited directly. The call itself is one loop turn
(`asyncio.sleep(0)`), so that what is measured is the flight's own turns and objects.

    .venv/bin/python -m bench.bench_flight [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import statistics
import time
from typing import Any

import uvloop

_CALLER: contextvars.ContextVar[asyncio.Task[Any] | None] = contextvars.ContextVar(
    "bench_caller", default=None)


async def _call() -> int:
    await asyncio.sleep(0)
    return 1


async def direct() -> int:
    return await _call()


async def flight(registry: dict[int, asyncio.Task[int]]) -> int:
    said = _CALLER.set(asyncio.current_task())
    try:
        call = asyncio.ensure_future(_call())
    finally:
        _CALLER.reset(said)
    registry[1] = call
    call.add_done_callback(lambda _: registry.pop(1, None))
    return await asyncio.shield(call)


async def main(calls: int) -> dict[str, float]:
    registry: dict[int, asyncio.Task[int]] = {}
    runs: dict[str, list[float]] = {"direct_us": [], "flight_us": []}
    for _ in range(5):  # alternated, each kind's median of five
        for kind in runs:
            start = time.perf_counter()
            for _ in range(calls):
                await (direct() if kind == "direct_us" else flight(registry))
            runs[kind].append((time.perf_counter() - start) / calls * 1e6)
    out = {k: round(statistics.median(v), 2) for k, v in runs.items()}
    out["added_us"] = round(out["flight_us"] - out["direct_us"], 2)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20000)
    print(json.dumps(uvloop.run(main(ap.parse_args().calls))))
