"""An MCP stdio server (standard library only) whose tool tries the network from where it
runs: `reach {host, port}` (or `{unix: PATH}`) answers "connected" and what it read, or
the error's own words, for a test of an MCP server's own egress (tests/test_egress.py)."""

import json
import socket
import sys

TOOLS = [{"name": "reach", "inputSchema": {"type": "object"}}]


def reach(host, port):
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(b"ping\n")
            return f"connected: {s.recv(100).decode().strip()}"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def reach_unix(path):
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(path)
            return f"connected: {s.recv(4096).decode().strip()}"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


for line in sys.stdin:
    msg = json.loads(line)
    rid = msg.get("id")
    if rid is None:
        continue
    method = msg.get("method")
    if method == "initialize":
        result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                  "serverInfo": {"name": "reach", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        args = msg["params"].get("arguments") or {}
        said = reach_unix(args["unix"]) if "unix" in args else \
            reach(args["host"], int(args["port"]))
        result = {"content": [{"type": "text", "text": said}]}
    else:
        result = {}
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}) + "\n")
    sys.stdout.flush()
