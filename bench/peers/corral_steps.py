"""The corral worker of bench/bench_durable_peers.py: `calls` sequential steps, each a
tool call (`fast__echo`, through corral's MCP pool) or a `ctx.step` around a no-op, each
timed in the worker; it answers the µs of each. With `die`, its first attempt SIGKILLs
itself after its last step, so the retry's steps are all answered from the journal."""

import os
import signal
import time

from corral.worker import run


def handle(task_input, ctx):
    n = int(task_input["calls"])
    named = task_input.get("mode") == "step"
    took = []
    for i in range(n):
        t0 = time.perf_counter()
        if named:
            ctx.step(f"s{i}", lambda i=i: {"i": i})
        else:
            ctx.call_tool("fast__echo", {"text": str(i)})
        took.append((time.perf_counter() - t0) * 1e6)
    if task_input.get("die") and ctx.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"us": took, "attempt": ctx.attempt}


run(handle)
