"""A minimal MCP stdio server for client benchmarks: answers inline, one tool `echo`.
Speaks 2026-07-28 (server/discover, _meta on requests) and 2025-11-25 (initialize)."""

import json
import sys

TOOLS = [{"name": "echo", "description": "echo", "inputSchema": {
    "type": "object", "properties": {"text": {"type": "string"}}}}]
out = sys.stdout
for line in sys.stdin:
    msg = json.loads(line)
    rid = msg.get("id")
    if rid is None:
        continue
    method = msg.get("method")
    if method == "server/discover":
        result = {"resultType": "complete", "supportedVersions": ["2026-07-28", "2025-11-25"],
                  "capabilities": {"tools": {}}, "serverInfo": {"name": "min", "version": "1"}}
    elif method == "initialize":
        result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                  "serverInfo": {"name": "min", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": TOOLS, "resultType": "complete"}
    elif method == "tools/call":
        text = msg["params"]["arguments"].get("text", "")
        result = {"content": [{"type": "text", "text": text}], "isError": False,
                  "resultType": "complete"}
    elif method == "ping":
        result = {}
    else:
        out.write(json.dumps({"jsonrpc": "2.0", "id": rid, "error": {
            "code": -32601, "message": "Method not found"}}) + "\n")
        out.flush()
        continue
    out.write(json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}) + "\n")
    out.flush()
