"""Restate's side of bench/bench_durable_peers.py, served by Hypercorn: a service whose
handler runs `n` sequential `ctx.run` no-ops, each timed in the handler (µs)."""

import time

import restate

bench = restate.Service("bench")


def noop(i: int) -> int:
    return i


@bench.handler()
async def steps(ctx: restate.Context, n: int) -> list[float]:
    took = []
    for i in range(n):
        t0 = time.perf_counter()
        await ctx.run_typed(f"s{i}", noop, i=i)
        took.append((time.perf_counter() - t0) * 1e6)
    return took


app = restate.app(services=[bench])
