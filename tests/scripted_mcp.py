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
    slow-start      reads nothing until the client's initialize has come too (it started
                    slower than the client's patience for discover, like an SDK 2.x
                    server under uvx), then serves 2026-07-28 in order: a discover it
                    answers locks the connection (-32022 for initialize afterwards)
    drop-discover   like slow-start's lock, but the first discover is never answered
    slow-discover   answers discover (2026-07-28 only) out of order, just after it refused
                    initialize (at once, with -32601)
    resources       resources (paged, one per page), a template, subscribe; prompts; logging
    tasks           tools "quick" and "endless" need task augmentation (execution.taskSupport
                    "required"); "quick" completes at the second tasks/get, "endless" never
    flood           tool "flood" {n}: sends the client n pings (distinct ids) as fast as it
                    can, then never reads its stdin again

Tools: echo {text}, slow {seconds, pid} (honours notifications/cancelled; with a pid,
its seconds count from that process's end), die (exits mid-call),
progress {steps} (notifications/progress to the caller's token), grow (adds tool "extra"
and sends notifications/tools/list_changed), block {seconds} (blocks the reader: no ping is
answered meanwhile, like a FastMCP 1.x sync tool), big {mb} (a result of that many MiB),
typed {n} (outputSchema {"n": integer}; returns structuredContent {"n": n} as given),
touch {uri} (sends notifications/resources/updated), roots (asks the client roots/list).

"""

import itertools
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
if "resources" in modes:
    tools += [{"name": n, "inputSchema": {"type": "object"}} for n in
              ("block", "big", "touch", "roots")]
    tools.append({"name": "typed", "inputSchema": {"type": "object"},
                  "outputSchema": {"type": "object", "properties": {"n": {"type": "integer"}},
                                   "required": ["n"]}})
if "flood" in modes:
    tools.append({"name": "flood", "inputSchema": {"type": "object"}})
if "schema" in modes:  # a tool whose input schema says all a listing may show
    tools.append({"name": "find", "description": "Find notes.\n\nBy a word, newest first.",
                  "inputSchema": {"type": "object", "required": ["word"], "properties": {
                      "word": {"type": "string", "description": "What to look for"},
                      "limit": {"type": "integer", "default": 10},
                      "order": {"enum": ["new", "old"]},
                      "tags": {"type": "array", "items": {"type": "string"}},
                      "since": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}})
if "tasks" in modes:
    tools += [{"name": n, "inputSchema": {"type": "object"},
               "execution": {"taskSupport": "required"}} for n in ("quick", "endless")]
TASKS = {}
RESOURCES = [{"uri": f"mem://doc/{i}", "name": f"doc{i}", "mimeType": "text/plain"}
             for i in range(3)]
PROMPTS = [{"name": "greet", "description": "Say hello",
            "arguments": [{"name": "who", "required": True}]}]
locked = False  # a modern revision was negotiated on this connection
dropped = False
requests_out = {}
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
    elif name == "slow":  # {"pid": P}: its seconds counted from process P's end
        pid, seconds = args.get("pid"), float(args.get("seconds", 10))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if rid in cancelled:
                print(f"cancelled {rid}", file=sys.stderr, flush=True)
                return
            if pid and os.path.exists(f"/proc/{pid}"):
                end = time.monotonic() + seconds
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
    elif name == "big":
        reply(rid, {"content": [{"type": "text",
                                 "text": "x" * int(float(args.get("mb", 2)) * 1048576)}]})
    elif name == "typed":
        reply(rid, {"content": [{"type": "text", "text": "typed"}],
                    "structuredContent": {"n": args.get("n")}})
    elif name == "touch":
        send({"jsonrpc": "2.0", "method": "notifications/resources/updated",
              "params": {"uri": args.get("uri")}})
        reply(rid, {"content": [{"type": "text", "text": "touched"}]})
    elif name == "roots":
        requests_out["roots"] = rid
        send({"jsonrpc": "2.0", "id": "r1", "method": "roots/list"})
    elif name == "flood":
        n = int(args.get("n", 1000000))
        for first in range(0, n, 10000):
            block = "".join(f'{{"jsonrpc":"2.0","id":"p-{i}","method":"ping"}}\n'
                            for i in range(first, min(n, first + 10000)))
            with lock:
                sys.stdout.write(block)
                sys.stdout.flush()
        print("flooded", file=sys.stderr, flush=True)
        while True:  # the answers are never read
            time.sleep(3600)
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

held: list[str] = []
if "slow-start" in modes:  # the client's messages pile up meanwhile, initialize last
    for line in sys.stdin:
        held.append(line)
        if json.loads(line).get("method") == "initialize":
            break
late_discover = None
for line in itertools.chain(held, sys.stdin):
    msg = json.loads(line)
    method, rid, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
    if method is None and rid == "r1":  # the client's answer to roots/list
        reply(requests_out.pop("roots"), {"content": [{"type": "text",
                                                        "text": json.dumps(msg)}]})
        continue
    if method == "server/discover" and "slow-discover" in modes:
        late_discover = rid
        continue
    if method == "initialize" and "slow-discover" in modes:
        error(rid, -32601, "Method not found")
        if late_discover is not None:
            reply(late_discover, {"resultType": "complete", "supportedVersions": ["2026-07-28"],
                                  "capabilities": {"tools": {}}, "serverInfo": {"name": "slow"}})
        continue
    if method == "server/discover" and ("slow-start" in modes or "drop-discover" in modes):
        locked = True
        if "drop-discover" in modes and not dropped:
            dropped = True
            continue
        reply(rid, {"resultType": "complete", "supportedVersions": ["2026-07-28"],
                    "capabilities": {"tools": {}}, "serverInfo": {"name": "slow"}})
        continue
    if method == "initialize" and locked:
        send({"jsonrpc": "2.0", "id": rid, "error": {
            "code": -32022, "message": "connection is serving the 2026-07-28 protocol; the "
            "initialize handshake is not accepted", "data": {"supported": ["2026-07-28"]}}})
        continue
    if method == "tools/call" and (params.get("name") == "block"):
        time.sleep(float((params.get("arguments") or {}).get("seconds", 3)))
        reply(rid, {"content": [{"type": "text", "text": "unblocked"}]})
        continue
    if "resources" in modes and method in ("resources/list", "resources/templates/list",
                                           "resources/read", "resources/subscribe",
                                           "resources/unsubscribe", "prompts/list",
                                           "prompts/get", "logging/setLevel",
                                           "completion/complete"):
        if method == "resources/list":
            start = int(params.get("cursor") or 0)
            page = {"resources": RESOURCES[start:start + 1]}
            if start + 1 < len(RESOURCES):
                page["nextCursor"] = str(start + 1)
            reply(rid, page)
        elif method == "resources/templates/list":
            reply(rid, {"resourceTemplates": [{"uriTemplate": "mem://doc/{id}",
                                               "name": "doc"}]})
        elif method == "resources/read":
            uri = params.get("uri")
            if not any(r["uri"] == uri for r in RESOURCES):
                error(rid, -32002, f"Resource not found: {uri}")
            else:
                reply(rid, {"contents": [{"uri": uri, "mimeType": "text/plain",
                                          "text": f"contents of {uri}"}]})
        elif method == "prompts/list":
            reply(rid, {"prompts": PROMPTS})
        elif method == "prompts/get":
            who = (params.get("arguments") or {}).get("who")
            if params.get("name") != "greet" or not who:
                error(rid, -32602, "unknown prompt or missing argument who")
            else:
                reply(rid, {"messages": [{"role": "user", "content": {
                    "type": "text", "text": f"Say hello to {who}"}}]})
        elif method == "logging/setLevel":
            print(f"log level {params.get('level')}", file=sys.stderr, flush=True)
            send({"jsonrpc": "2.0", "method": "notifications/message", "params": {
                "level": "info", "logger": "scripted", "data": {"level": params.get("level")}}})
            reply(rid, {})
        elif method == "completion/complete":
            reply(rid, {"completion": {"values": ["alice", "albert"], "hasMore": False}})
        else:
            reply(rid, {})
        continue
    if method == "shutdown":
        print("got shutdown", file=sys.stderr, flush=True)
    if "tasks" in modes and method == "tools/call" and params.get("name") in ("quick",
                                                                             "endless"):
        if "task" not in params:
            error(rid, -32601, f"Tool {params['name']} requires task augmentation")
            continue
        tid = f"t{len(TASKS) + 1}"
        TASKS[tid] = {"name": params["name"], "polls": 0, "status": "working"}
        reply(rid, {"task": {"taskId": tid, "status": "working", "pollInterval": 50,
                             "createdAt": "now", "lastUpdatedAt": "now",
                             "ttl": params["task"].get("ttl")}})
        continue
    if "tasks" in modes and method in ("tasks/get", "tasks/result", "tasks/cancel"):
        task = TASKS[params["taskId"]]
        if method == "tasks/get":
            task["polls"] += 1
            if task["name"] == "quick" and task["polls"] >= 2:
                task["status"] = "completed"
            reply(rid, {"taskId": params["taskId"], "status": task["status"]})
        elif method == "tasks/result":
            reply(rid, {"content": [{"type": "text",
                                     "text": f"done after {task['polls']} polls"}]})
        else:
            task["status"] = "cancelled"
            print(f"task {params['taskId']} cancelled", file=sys.stderr, flush=True)
            reply(rid, {"taskId": params["taskId"], "status": "cancelled"})
        continue
    if method == "notifications/roots/list_changed":
        print("roots changed", file=sys.stderr, flush=True)
        continue
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
        caps = {"tools": {"listChanged": True}}
        if "resources" in modes:
            caps.update(resources={"subscribe": True, "listChanged": True}, prompts={},
                        logging={}, completions={})
        reply(rid, {"protocolVersion": version, "capabilities": caps,
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
        if os.environ.get("SCRIPTED_RECORD"):  # what each call's _meta was (test_tracing)
            with open(os.environ["SCRIPTED_RECORD"], "a") as f:
                f.write(json.dumps({"id": rid, "meta": params.get("_meta")}) + "\n")
        threading.Thread(target=call, args=(rid, params), daemon=True).start()
    elif rid is not None:
        error(rid, -32601, "Method not found")
