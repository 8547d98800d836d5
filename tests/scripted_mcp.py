"""A scripted MCP stdio server for conformance and fault tests; behaviour from argv:

    scripted_mcp.py MODE[,MODE...]

    v2024 / v2025-03 / v2025-06 / v2025-11   the one legacy revision it speaks
    stateless       speaks only 2026-07-28 (server/discover; initialize is an error)
    dual            discover offers 2026-07-28 and 2025-11-25
    mute-discover   never answers server/discover
    bad-version     answers initialize with protocol version 1999-01-01
    bad-names       advertises tools named "bad__name" and "has space" too
    no-init         never answers initialize
    pages           tools/list in pages of one tool
    batch           answers in JSON-RPC batches (arrays)
    garbage         writes garbage and a 20 MiB line before anything else
    unknown-id      answers a request id it was never sent, at start

Tools: echo {text}, slow {seconds} (honours notifications/cancelled), die (exits mid-call),
progress {steps} (notifications/progress to the caller's token), grow (adds tool "extra"
and sends notifications/tools/list_changed).
"""

import json
import os
import sys
import threading
import time

modes = set(sys.argv[1].split(",")) if len(sys.argv) > 1 else set()
VERSIONS = {"v2024": "2024-11-05", "v2025-03": "2025-03-26", "v2025-06": "2025-06-18",
            "v2025-11": "2025-11-25"}
legacy = next((v for k, v in VERSIONS.items() if k in modes), "2025-11-25")
lock = threading.Lock()
cancelled = set()
tools = [{"name": n, "inputSchema": {"type": "object"}} for n in
         ("echo", "slow", "die", "progress", "grow")]
if "bad-names" in modes:
    tools += [{"name": "bad__name", "inputSchema": {}}, {"name": "has space", "inputSchema": {}}]


def send(msg):
    line = json.dumps([msg] if "batch" in modes and "id" in msg else msg)
    with lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def reply(rid, result):
    send({"jsonrpc": "2.0", "id": rid, "result": result})


def error(rid, code, message):
    send({"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}})


def call(rid, params):
    name = params.get("name")
    args = params.get("arguments") or {}
    token = (params.get("_meta") or {}).get("progressToken")
    if name == "echo":
        reply(rid, {"content": [{"type": "text", "text": args.get("text", "")}],
                    "structuredContent": {"echo": args.get("text", "")}, "isError": False})
    elif name == "slow":
        end = time.monotonic() + float(args.get("seconds", 10))
        while time.monotonic() < end:
            if rid in cancelled:
                print(f"cancelled {rid}", file=sys.stderr, flush=True)
                return
            time.sleep(0.01)
        reply(rid, {"content": [{"type": "text", "text": "slept"}]})
    elif name == "die":
        print("dying mid-call", file=sys.stderr, flush=True)
        os._exit(5)
    elif name == "progress":
        steps = int(args.get("steps", 3))
        for i in range(steps):
            send({"jsonrpc": "2.0", "method": "notifications/progress",
                  "params": {"progressToken": token, "progress": i + 1, "total": steps,
                             "message": f"step {i + 1}"}})
        reply(rid, {"content": [{"type": "text", "text": "done"}]})
    elif name == "grow":
        tools.append({"name": "extra", "inputSchema": {"type": "object"}})
        reply(rid, {"content": [{"type": "text", "text": "grown"}]})
        send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    else:
        reply(rid, {"content": [{"type": "text", "text": f"unknown tool {name}"}],
                    "isError": True})


if "garbage" in modes:
    sys.stdout.write("garbage here\n" + "y" * (20 * 1024 * 1024) + "\n")
    sys.stdout.flush()
if "unknown-id" in modes:
    reply(987654, {})

for line in sys.stdin:
    msg = json.loads(line)
    method, rid, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
    if method == "server/discover":
        if "mute-discover" in modes:
            continue
        if "stateless" in modes or "dual" in modes:
            offered = ["2026-07-28"] + ([legacy] if "dual" in modes else [])
            reply(rid, {"resultType": "complete", "supportedVersions": offered,
                        "capabilities": {"tools": {"listChanged": True}},
                        "serverInfo": {"name": "scripted", "version": "1"}})
        else:
            error(rid, -32601, "Method not found")
    elif method == "initialize":
        if "no-init" in modes:
            continue
        if "stateless" in modes:
            error(rid, -32601, "Method not found")
            continue
        asked = params.get("protocolVersion")
        version = "1999-01-01" if "bad-version" in modes else (
            asked if asked == legacy else legacy)
        reply(rid, {"protocolVersion": version, "capabilities": {"tools": {"listChanged": True}},
                    "serverInfo": {"name": "scripted", "version": "1"}})
    elif method == "notifications/cancelled":
        cancelled.add(params.get("requestId"))
    elif method == "ping":
        reply(rid, {})
    elif method == "tools/list":
        if "stateless" in modes and "_meta" not in params:
            error(rid, -32602, "params._meta is required")
            continue
        if "pages" in modes:
            start = int(params.get("cursor") or 0)
            page = {"tools": tools[start:start + 1]}
            if start + 1 < len(tools):
                page["nextCursor"] = str(start + 1)
            reply(rid, page)
        else:
            reply(rid, {"tools": tools})
    elif method == "tools/call":
        threading.Thread(target=call, args=(rid, params), daemon=True).start()
    elif rid is not None:
        error(rid, -32601, "Method not found")
