"""The orchestrator of bench_spawn.py: spawns `children` tasks of `agent` (ctx.spawn, one
at a time), timing each spawn's round trip, then waits for them all (ctx.wait) unless
`wait` is false; answers the spawns' latencies in ms. With `map`: ctx.map instead."""

import time

from corral.worker import run


def handle(task_input, ctx):
    if task_input.get("map"):  # the spawns sent at once, then the wait
        t0 = time.perf_counter()
        outputs = ctx.map(task_input.get("agent", "echo"), range(task_input["children"]))
        assert outputs == list(range(task_input["children"]))
        return {"spawn_ms": [], "wait_s": time.perf_counter() - t0}
    took, ids = [], []
    for i in range(task_input["children"]):
        t0 = time.perf_counter()
        ids.append(ctx.spawn(task_input.get("agent", "echo"), i))
        took.append((time.perf_counter() - t0) * 1e3)
    t0 = time.perf_counter()
    if task_input.get("wait", True):
        results = ctx.wait(ids)
        assert all(r["status"] == "succeeded" for r in results), results[:3]
    return {"spawn_ms": took, "wait_s": time.perf_counter() - t0}


run(handle)
