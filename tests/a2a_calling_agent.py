"""A worker for tests/test_a2a_tools.py: one tool call, `task["tool"]` with
`task["arguments"]`, through the worker link; its output the tool's result whole."""


async def handle(task, ctx):
    return await ctx.call_tool(task["tool"], task["arguments"])


if __name__ == "__main__":
    from corral.worker import run

    run(handle)
