"""An MCP stdio server whose tool call can be held at the server while a test kills the
caller, and that writes down every call it was sent, so that a test can tell how many
times a call reached it, and under which idempotency key.

    slow_mcp.py LOG STARTED GATE

Tool: work {i, hold} appends `start I KEY` to LOG (KEY: the request's
`_meta["io.corral/idempotency-key"]`, `-` when there is none); with `hold`, while the
FIFO GATE exists, it then writes `I` to the FIFO STARTED (the test reads it: the call is
at the server) and waits until the test opens GATE and closes it, and removes it: only
the first such call is held. Then it appends `done I KEY` and answers "worked I".
A `notifications/cancelled` it reads appends `cancelled`.
"""

import contextlib
import json
import os
import sys

log_file, started, gate = sys.argv[1:4]
KEY = "io.corral/idempotency-key"
TOOLS = [{"name": "work", "inputSchema": {"type": "object"}}]


def note(line: str) -> None:
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{line}\n".encode())
    os.close(fd)


out = sys.stdout
for line in sys.stdin:
    msg = json.loads(line)
    rid = msg.get("id")
    if rid is None:
        if msg.get("method") == "notifications/cancelled":
            note("cancelled")
        continue
    method = msg.get("method")
    if method == "initialize":
        result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                  "serverInfo": {"name": "slow", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        params = msg["params"]
        arguments = params.get("arguments") or {}
        i = arguments.get("i")
        key = (params.get("_meta") or {}).get(KEY) or "-"
        note(f"start {i} {key}")
        if arguments.get("hold") and os.path.exists(gate):
            with open(started, "w") as f:
                f.write(f"{i}\n")
            with open(gate) as f:
                f.read()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(gate)
        note(f"done {i} {key}")
        result = {"content": [{"type": "text", "text": f"worked {i}"}], "isError": False}
    elif method == "ping":
        result = {}
    else:
        out.write(json.dumps({"jsonrpc": "2.0", "id": rid, "error": {
            "code": -32601, "message": "Method not found"}}) + "\n")
        out.flush()
        continue
    out.write(json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}) + "\n")
    out.flush()
