"""An agent that makes {"calls": N} sequential tool calls to min__echo."""

from corral.worker import run


def handle(task, ctx):
    for i in range(task["calls"]):
        ctx.call_tool("min__echo", {"text": str(i)})
    return task["calls"]


run(handle)
