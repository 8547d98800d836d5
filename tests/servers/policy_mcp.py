"""An MCP stdio server of the tools a policy is written about (tests/test_policy.py,
tests/test_taint.py): each answers "NAME ARGUMENTS" (the arguments as JSON, keys
sorted), so that a test sees which call was made and with what.

Tools: fetch {url} (a fetcher: the untrusted one), read_mail, write_file {path, text},
send_mail {to, body}, pay {amount}, http_get {host}.
"""

import json
import sys

NAMES = ("fetch", "read_mail", "write_file", "send_mail", "pay", "http_get")
TOOLS = [{"name": n, "inputSchema": {"type": "object"}} for n in NAMES]
out = sys.stdout
for line in sys.stdin:
    msg = json.loads(line)
    rid = msg.get("id")
    if rid is None:
        continue
    method = msg.get("method")
    if method == "initialize":
        result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                  "serverInfo": {"name": "policy", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        params = msg["params"]
        text = f"{params['name']} {json.dumps(params.get('arguments') or {}, sort_keys=True)}"
        result = {"content": [{"type": "text", "text": text}], "isError": False}
    elif method == "ping":
        result = {}
    else:
        out.write(json.dumps({"jsonrpc": "2.0", "id": rid, "error": {
            "code": -32601, "message": "Method not found"}}) + "\n")
        out.flush()
        continue
    out.write(json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}) + "\n")
    out.flush()
