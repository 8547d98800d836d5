"""The worker of bench/bench_attribution.py: `calls` sequential tool calls (`fast__echo`)
through corral's MCP gateway with the official MCP SDK's client, at the replica's address
(`via = "replica"`) or the attempt's (`"attempt"`: ctx.mcp_url); it answers the seconds
of each call, timed around it, after an untimed warm-up call on the same session. With
`hold`, it writes its task's id to that file and runs until the file is removed."""

import asyncio
import os
import time

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from corral.worker import run


async def handle(task, ctx):
    if task.get("hold"):  # the floor's: held running while the bench calls as it
        with open(task["hold"] + ".tmp", "w") as f:
            f.write(ctx.task_id)
        os.rename(task["hold"] + ".tmp", task["hold"])
        while os.path.exists(task["hold"]):
            await asyncio.sleep(0.01)
        return {}
    url = ctx.mcp_url if task["via"] == "attempt" else os.environ["CORRAL_MCP_URL"]
    took = []
    http = httpx2.AsyncClient(headers=ctx.mcp_headers, timeout=httpx2.Timeout(30, read=60))
    async with http, streamable_http_client(url, http_client=http) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        await session.call_tool("fast__echo", {"text": "warm"})
        clock = time.perf_counter
        for i in range(int(task["calls"])):
            t0 = clock()
            await session.call_tool("fast__echo", {"text": str(i)})
            took.append(clock() - t0)
    return {"seconds": took}


run(handle)
