"""A worker for tests/test_attribution.py: a task of `calls` tool calls (`counting__bump`)
made through corral's MCP gateway by the official MCP SDK's client, as an agent written
with any framework makes them: nothing of corral's SDK but `run(handle)` and the context
it hands over.

`via` says at which address: "replica" (CORRAL_MCP_URL, as corral gives every replica),
"attempt" (`ctx.mcp_url`, the attempt's), "process" (a child process started for the
task, given `ctx.mcp_url` as its CORRAL_MCP_URL), or any other string (that URL: a test
handing over another attempt's address). On its first attempt, after call `stop_after`,
it writes `marker` and SIGKILLs itself (and the child). `hold`: before its calls, it
writes its own address to that file and waits until the file is removed. A call refused
by the gateway ends the task with the refusal as its output's `refused`."""

from tests.quietimports import collector_off

with collector_off(freeze=True):
    import asyncio
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import MCPError


async def calls(url: str, task: dict, attempt: int, kill: list[int]) -> dict:
    headers = {"Authorization": f"Bearer {os.environ['CORRAL_MCP_TOKEN']}"}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60))
    results = []
    async with http, streamable_http_client(url, http_client=http) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        for i in range(1, int(task.get("calls", 4)) + 1):
            try:
                res = await session.call_tool("counting__bump", {"i": i})
            except MCPError as exc:
                return {"results": results, "refused": str(exc)}
            results.append(res.content[0].text)
            if attempt == 1 and task.get("stop_after") == i:
                with open(task["marker"], "w") as f:
                    f.write(str(i))
                for pid in kill:
                    os.kill(pid, signal.SIGKILL)
    return {"results": results}


def child() -> None:
    """A process started for the task: its address is its CORRAL_MCP_URL."""
    task = json.loads(sys.argv[2])
    out = asyncio.run(calls(os.environ["CORRAL_MCP_URL"], task, int(sys.argv[3]),
                            [os.getppid(), os.getpid()]))
    print(json.dumps(out))


async def handle(task, ctx):
    via = task.get("via", "attempt")
    url = {"replica": os.environ["CORRAL_MCP_URL"], "attempt": ctx.mcp_url,
           "process": ctx.mcp_url}.get(via, via)
    if task.get("hold"):
        with open(task["hold"] + ".tmp", "w") as f:
            f.write(ctx.mcp_url)
        os.rename(task["hold"] + ".tmp", task["hold"])
        while os.path.exists(task["hold"]):
            await asyncio.sleep(0.01)
    if via == "process":
        r = await asyncio.to_thread(
            subprocess.run, [sys.executable, __file__, "--child", json.dumps(task),
                             str(ctx.attempt)],
            env={**os.environ, "CORRAL_MCP_URL": url}, capture_output=True, text=True,
            check=True)
        out = json.loads(r.stdout)
    else:
        out = await calls(url, task, ctx.attempt, [os.getpid()])
    return {**out, "attempt": ctx.attempt, "url": ctx.mcp_url, "at": time.time()}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child()
    else:
        from corral.worker import run

        run(handle)
