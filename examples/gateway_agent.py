"""An agent whose tools come through corral's MCP gateway, used with the official MCP SDK's
`ClientSession` — the way an agent written with any MCP client library (LangChain's
adapters, the OpenAI Agents SDK, …) would. corral gives each replica it runs the gateway's
address (CORRAL_MCP_URL, and CORRAL_MCP_SOCKET when the gateway listens on a unix socket)
and a token of its own (CORRAL_MCP_TOKEN) that admits exactly the agent's `tools`
allowlist. corral's worker SDK is used only to receive tasks."""

import os

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from corral.worker import run


async def handle(task, ctx):
    headers = {"Authorization": f"Bearer {os.environ['CORRAL_MCP_TOKEN']}"}
    sock = os.environ.get("CORRAL_MCP_SOCKET")
    transport = httpx2.AsyncHTTPTransport(uds=sock) if sock else None
    http = httpx2.AsyncClient(headers=headers, transport=transport,
                              timeout=httpx2.Timeout(30, read=300))
    async with http, streamable_http_client(os.environ["CORRAL_MCP_URL"],
                                            http_client=http) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        tools = sorted(t.name for t in (await session.list_tools()).tools)
        stored = await session.call_tool("notes__add", {"title": task["title"],
                                                        "text": task["text"]})
        try:  # outside this agent's allowlist: refused by the gateway
            await session.call_tool("sc__echo", {"text": "x"})
            refused = None
        except MCPError as exc:
            refused = str(exc)
    return {"tools": tools, "stored": stored.content[0].text, "refused": refused}


if __name__ == "__main__":
    run(handle)
