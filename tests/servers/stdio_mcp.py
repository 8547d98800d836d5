"""The stdio framing the tests' small MCP servers share: a line of JSON-RPC in, a line
out; `initialize` and `ping` answered here, every other request by the server's `answer`
(None from it: method not found); notifications read and let be.

    from stdio_mcp import serve   # (a server run by its path finds this file beside it)
    serve("name", answer)
"""

import json
import sys
from collections.abc import Callable
from typing import Any


def serve(name: str, answer: Callable[[str, dict[str, Any]], Any]) -> None:
    out = sys.stdout
    for line in sys.stdin:
        msg = json.loads(line)
        rid = msg.get("id")
        if rid is None:
            continue
        method = msg.get("method")
        if method == "initialize":
            result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                      "serverInfo": {"name": name, "version": "1"}}
        elif method == "ping":
            result = {}
        else:
            result = answer(method, msg.get("params") or {})
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": rid}
        if result is None:
            reply["error"] = {"code": -32601, "message": "Method not found"}
        else:
            reply["result"] = result
        out.write(json.dumps(reply) + "\n")
        out.flush()
