"""Issue 76 (tool search) benchmark: what a client's tool list costs at 300 tools.

    .venv/bin/python -m bench.bench_tool_search [--quick]

One MCP server of 300 tools described as real servers' are (tests/servers/many_tools.py)
behind the HTTP gateway, once with `[gateway] tool_search = false` (before) and once with
it true (after): the bytes of a tools/list answer (what a host puts in each model
request, about bytes/4 tokens), of a search_tools answer for a query of two words
(limit 10, what a model asks for when it needs a tool), and the median latency of each
request (stateless 2026-07-28 POSTs, one at a time).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import httpx2

from .harness import PY, ROOT, CorralDaemon, free_port, median, report, workdir

QUICK = "--quick" in sys.argv
ROUNDS = 50 if QUICK else 300
TOOLS = 300
MANY = ROOT / "tests" / "servers" / "many_tools.py"
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}}


async def post(c: httpx2.AsyncClient, url: str, method: str, params: dict[str, Any]
               ) -> tuple[int, float, Any]:
    """The answer's bytes, the seconds it took, and its result."""
    t0 = time.perf_counter()
    r = await c.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                "params": {**params, "_meta": META}},
                     headers={"Accept": "application/json, text/event-stream",
                              "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method,
                              **({"Mcp-Name": params["name"]} if "name" in params else {})})
    took = time.perf_counter() - t0
    r.raise_for_status()
    body = r.json()
    assert "result" in body, body
    return len(r.content), took, body["result"]


async def measure(url: str, searching: bool) -> dict[str, Any]:
    async with httpx2.AsyncClient(timeout=60) as c:
        size, _, result = await post(c, url, "tools/list", {})
        out: dict[str, Any] = {"tools_listed": len(result["tools"]), "list_bytes": size}
        times = [(await post(c, url, "tools/list", {}))[1] for _ in range(ROUNDS)]
        out["list_ms_p50"] = round(median(times) * 1000, 2)
        if searching:
            call = {"name": "search_tools",
                    "arguments": {"query": "archive invoice", "limit": 10}}
            size, _, result = await post(c, url, "tools/call", call)
            found = [t["name"] for t in result["structuredContent"]["tools"]]
            assert found[0] == "many__archive_invoice", found
            out.update(search_bytes=size, search_found=len(found))
            times = [(await post(c, url, "tools/call", call))[1] for _ in range(ROUNDS)]
            out["search_ms_p50"] = round(median(times) * 1000, 2)
        return out


async def run(searching: bool) -> dict[str, Any]:
    d = workdir("tool-search")
    port = free_port()
    daemon = CorralDaemon(d, f"""
[mcp_servers.many]
command = ["{PY}", "{MANY}", "{TOOLS}"]
start = "eager"

[gateway]
listen = "127.0.0.1:{port}"
anonymous_tools = ["*"]
tool_search = {"true" if searching else "false"}
""")
    daemon.start()
    try:
        return await measure(f"http://127.0.0.1:{port}/mcp", searching)
    finally:
        daemon.stop()


async def main() -> None:
    before = await run(False)
    after = await run(True)
    assert before["tools_listed"] == TOOLS, before
    report("bench_tool_search", {
        "tools": TOOLS, "rounds": ROUNDS, "before": before, "after": after,
        "list_bytes_after_vs_before_pct": round(
            100 * after["list_bytes"] / before["list_bytes"], 2),
        "list_plus_one_search_vs_before_pct": round(
            100 * (after["list_bytes"] + after["search_bytes"]) / before["list_bytes"], 2)})


if __name__ == "__main__":
    asyncio.run(main())
