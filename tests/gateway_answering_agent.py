"""A worker for tests/test_elicitations.py: a task that makes 2026-07-28 tools/calls
through corral's MCP gateway as its attempt (`ctx.mcp_url`, its replica's token), each
{"tool", "arguments", "inputResponses"?} of its input's `calls` in turn, the JSON-RPC
answer of each (its result or its error) its output: an agent that tries to answer its
server's elicitation itself, before anyone is asked."""

import os

import httpx2

from corral.worker import run

VERSION = "2026-07-28"


def handle(task, ctx):
    answers = []
    for made in task["calls"]:
        params = {"name": made["tool"], "arguments": made.get("arguments", {}),
                  "_meta": {"io.modelcontextprotocol/protocolVersion": VERSION,
                            "io.modelcontextprotocol/clientCapabilities": {
                                "elicitation": {}}}}
        if "inputResponses" in made:
            params["inputResponses"] = made["inputResponses"]
        r = httpx2.post(ctx.mcp_url, json={"jsonrpc": "2.0", "id": 1,
                                           "method": "tools/call", "params": params},
                        headers={"Authorization": f"Bearer {os.environ['CORRAL_MCP_TOKEN']}",
                                 "Accept": "application/json, text/event-stream",
                                 "MCP-Protocol-Version": VERSION, "Mcp-Method": "tools/call",
                                 "Mcp-Name": made["tool"]}, timeout=60)
        body = r.json()
        answers.append({k: body[k] for k in ("result", "error") if k in body})
    return answers


if __name__ == "__main__":
    run(handle)
