"""A worker for tests/test_inflight.py: a task of two tool calls of the slow server
(`slow__work` {i: 1, hold}, then {i: 2}; tests/servers/slow_mcp.py holds the first at
the server while the test kills this process; with `diverge`, a retry's first call is
{i: 10} instead). `via` says how it calls: "sdk" (the worker link's tools/call,
`ctx.call_tool`) or "gateway" (the official MCP SDK's client against corral's MCP
gateway at the attempt's address, `ctx.mcp_url`, as an agent written with any framework
calls). The output: the results, and the attempt that made them."""

import os


def calls(task, attempt):
    first = {"i": 10} if task.get("diverge") and attempt > 1 else {"i": 1, "hold": True}
    return (first, {"i": 2})


async def through_gateway(url: str, calls) -> list[str]:
    # the SDK imported by a worker that calls through it alone: ~1 s of CPU at each start
    # of a worker that calls by the link ("sdk"), killed and started again by each test
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {os.environ['CORRAL_MCP_TOKEN']}"}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60))
    results = []
    async with http, streamable_http_client(url, http_client=http) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        for arguments in calls:
            res = await session.call_tool("slow__work", arguments)
            results.append(res.content[0].text)
    return results


async def handle(task, ctx):
    if task.get("via") == "gateway":
        results = await through_gateway(ctx.mcp_url, calls(task, ctx.attempt))
    else:
        results = []
        for arguments in calls(task, ctx.attempt):
            res = await ctx.call_tool("slow__work", arguments)
            results.append(res["content"][0]["text"])
    return {"results": results, "attempt": ctx.attempt}


if __name__ == "__main__":
    from corral.worker import run

    run(handle)
