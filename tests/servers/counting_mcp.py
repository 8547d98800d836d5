"""An MCP stdio server that counts its tool calls in a file, one line a call, so that a
test can tell how many times a call was really made across kills of the agent and of the
daemon (the server dies with the daemon; the file stays).

    counting_mcp.py COUNT_FILE [KILL_FILE]

Tools: bump {i} (appends a line, answers "bumped I"), big {kb} (a result of that many
KiB, not counted). With KILL_FILE, holding `PID I`: the bump {i: I} SIGKILLs that
process (the file removed) and is neither counted nor answered but with an error, so
that a test kills its worker at that call, after the calls before it were answered.
Holding `PID I GATE`, the call is at the server when its worker dies: after the kill it
waits until the test opens the FIFO GATE and closes it, then is counted and answered as
any other (the answer of a call that outlived its worker: docs/durable.md). PID `-`:
nothing is killed, the call is only held at GATE (a call being made meanwhile).
"""

import json
import os
import signal
import sys

count_file = sys.argv[1]
kill_file = sys.argv[2] if len(sys.argv) > 2 else None
TOOLS = [{"name": n, "inputSchema": {"type": "object"}} for n in ("bump", "big")]
out = sys.stdout
for line in sys.stdin:
    msg = json.loads(line)
    rid = msg.get("id")
    if rid is None:
        continue
    method = msg.get("method")
    if method == "initialize":
        result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                  "serverInfo": {"name": "counting", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        params = msg["params"]
        args = params.get("arguments") or {}
        kill = None
        if kill_file and os.path.exists(kill_file):
            with open(kill_file) as f:
                kill = f.read().split()
        if params["name"] == "bump" and kill and str(args.get("i")) == kill[1]:
            os.unlink(kill_file)
            if kill[0] != "-":
                os.kill(int(kill[0]), signal.SIGKILL)
            if len(kill) < 3:
                out.write(json.dumps({"jsonrpc": "2.0", "id": rid, "error": {
                    "code": -32000, "message": "the worker was killed"}}) + "\n")
                out.flush()
                continue
            with open(kill[2]) as gate:  # held until the test lets it go, then answered
                gate.read()
        if params["name"] == "bump":
            fd = os.open(count_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(fd, f"{args.get('i')}\n".encode())
            os.close(fd)
            text = f"bumped {args.get('i')}"
        else:
            text = "x" * (int(args.get("kb", 1)) * 1024)
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
