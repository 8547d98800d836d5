"""The worker of bench/bench_steps.py: `calls` steps, each a tool call (`fast__echo`) or
a `ctx.step` around a no-op; it answers the seconds its loop took. With `die`, its first
attempt SIGKILLs itself after the last step, so the retry's steps all come from the
journal."""

import os
import signal
import time

from corral.worker import run


def handle(task_input, ctx):
    n = int(task_input["calls"])
    named = task_input.get("mode") == "step"
    t0 = time.perf_counter()
    for i in range(n):
        if named:
            ctx.step(f"s{i}", lambda i=i: {"i": i})
        else:
            ctx.call_tool("fast__echo", {"text": str(i)})
    took = time.perf_counter() - t0
    if task_input.get("die") and ctx.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"seconds": took, "attempt": ctx.attempt}


run(handle)
