"""An SDK agent that asks a person (`ctx.ask`, tests/test_questions.py,
tests/test_suspension.py): its input says what to ask; it marks a file each time it is
about to ask (one line per attempt), waits for the file `gate` names (if any), first
makes `calls` tool calls (counting__bump, each journaled), and with `die_after_answer`
its first attempt dies once it has the answer."""

import os
import sys
import time

from corral.worker import RequestError, run


def handle(inp, ctx):
    if inp.get("marks"):
        with open(inp["marks"], "a") as f:
            f.write(f"{ctx.attempt}\n")
    while inp.get("gate") and not os.path.exists(inp["gate"]):  # held until it exists
        time.sleep(0.01)
    base = inp.get("base", 0)  # where this task's call numbers start (a chaos case's)
    bumped = [ctx.call_tool("counting__bump", {"i": base + i})["content"][0]["text"]
              for i in range(inp.get("calls", 0))]
    try:
        answer = (ctx.ask(inp["prompt"], inp.get("schema"), timeout=inp.get("timeout"),
                          key=inp.get("key")) if "prompt" in inp else None)
        second = ctx.ask("and then?") if inp.get("twice") else None
    except RequestError as exc:
        return {"refused": exc.message, "code": exc.code}
    if inp.get("die_after_answer") and ctx.attempt == 1:
        os._exit(3)  # the worker dies with the answer in hand: the retry is given it back
    out = {"answer": answer, "second": second, "attempt": ctx.attempt}
    return {**out, "bumped": bumped} if bumped else out


async def handle_async(inp, ctx):
    try:
        return {"answer": await ctx.ask(inp["prompt"], inp.get("schema"))}
    except RequestError as exc:
        return {"refused": exc.message, "code": exc.code}


run(handle_async if "--async" in sys.argv else handle)
