"""The agent of bench/bench_waiting.py: makes `calls` tool calls (fast__echo, each
journaled), then asks a person (`ctx.ask`) and answers what it was told, with the wall
clock at its steps (the process's start, the handler's, the calls' end, the answer's) so
that the bench can tell where a resumed task's time went."""

import time

STARTED = time.time()

from corral.worker import run  # noqa: E402


async def handle(inp, ctx):
    t0 = time.time()
    for i in range(inp.get("calls", 0)):
        await ctx.call_tool("fast__echo", {"text": str(i)})
    t1 = time.time()
    answer = await ctx.ask(inp.get("prompt", "Go on?"))
    return {"answer": answer, "attempt": ctx.attempt,
            "t": {"process": STARTED, "handler": t0, "calls": t1, "answered": time.time()}}


run(handle)
