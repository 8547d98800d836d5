"""The agent of bench/soak.py: one worker for every kind of work the soak makes.

Its input says what to do (`do`), and every answer carries the tenant's `mark`, so a
record read by the wrong tenant gives itself away:
- `hello`: answers the mark (and says it on stderr, a line of the agent's log);
- `turn`: a turn of the task's session: appends the mark to the session's state and
  answers every turn the state held, so a turn given another tenant's state says so;
- `steps`: `n` named steps (`ctx.step`), journaled;
- `spawn`: `n` children of this same agent (`ctx.spawn`, then `ctx.wait`), their ids
  answered;
- `ask`: a question to a person (`ctx.ask`, the tenant answers it), answered back;
- `crash`: the worker exits mid-task (the task fails, the replica is started again);
- `sleep`: `seconds` asleep (past the task's timeout: the cap ends it);
- `escape` (under `egress = "gateways"`): a TCP connect to a loopback port and to an
  address off the host, each refused by corral's boundary (and recorded there), the
  errors answered;
- `tool`: `notes__add` of a note titled `title` through corral's MCP gateway over HTTP
  (`ctx.mcp_url`, the replica's token), the gateway's answer or its refusal answered;
- `chunks`: `n` chunks of live output (`ctx.emit`), `every` seconds apart: a stream.
A task sent over A2A gets the A2A message: its data part is the input.
"""

import json
import os
import socket
import sys
import time
import urllib.request

from corral.worker import run

MCP_ACCEPT = "application/json, text/event-stream"


def connect(host, port):
    try:
        with socket.create_connection((host, port), timeout=5):
            return "connected"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def mcp(url, headers, session, method, params, notify=False):
    """One JSON-RPC message to the MCP gateway: (its answer, the session id)."""
    body = {"jsonrpc": "2.0", "method": method, "params": params}
    if not notify:
        body["id"] = 1
    head = {**headers, "Content-Type": "application/json", "Accept": MCP_ACCEPT,
            "MCP-Protocol-Version": "2025-11-25"}
    if session:
        head["Mcp-Session-Id"] = session
    req = urllib.request.Request(url, json.dumps(body).encode(), head, method="POST")
    with urllib.request.urlopen(req, timeout=120) as r:
        session = r.headers.get("Mcp-Session-Id") or session
        raw = r.read().decode()
    if notify or not raw.strip():
        return None, session
    if r.headers.get("Content-Type", "").startswith("text/event-stream"):
        raw = [line[5:] for line in raw.splitlines() if line.startswith("data:")][-1]
    return json.loads(raw), session


def tool(ctx, title, mark):
    url, headers = ctx.mcp_url, ctx.mcp_headers
    _, session = mcp(url, headers, None, "initialize", {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "soak", "version": "1"}})
    mcp(url, headers, session, "notifications/initialized", {}, notify=True)
    got, _ = mcp(url, headers, session, "tools/call",
                 {"name": "notes__add", "arguments": {"title": title, "text": mark}})
    if "error" in got:
        return {"error": got["error"].get("message", "")}
    result = got["result"]
    text = " ".join(c.get("text", "") for c in result.get("content", []))
    return {"error": text} if result.get("isError") else {"ok": text}


def handle(task_input, ctx):
    if "parts" in task_input:  # an A2A message
        task_input = next(p["data"] for p in task_input["parts"] if "data" in p)
    do, mark = task_input.get("do", "hello"), task_input["mark"]
    if do == "escape":
        return {"mark": mark, "tcp": connect("127.0.0.1", task_input["port"]),
                "tcp_out": connect("192.0.2.1", 443)}
    if do == "tool":
        return {"mark": mark, "tool": tool(ctx, task_input["title"], mark)}
    if do == "chunks":
        for i in range(task_input.get("n", 3)):
            ctx.emit(f"chunk {i} of {mark}")
            time.sleep(task_input.get("every", 0.2))
        return {"mark": mark}
    if do == "turn":
        turns = [*(ctx.session_state or {"turns": []})["turns"], mark]
        ctx.checkpoint_session({"turns": turns})
        return {"mark": mark, "turns": turns}
    if do == "steps":
        got = [ctx.step(f"s{i}", lambda i=i: {"i": i, "mark": mark})
               for i in range(task_input.get("n", 3))]
        return {"mark": mark, "steps": got}
    if do == "spawn":
        ids = [ctx.spawn(ctx.agent, {"do": "hello", "mark": mark})
               for _ in range(task_input.get("n", 2))]
        ctx.wait(ids)
        return {"mark": mark, "children": ids}
    if do == "ask":
        answer = ctx.ask(f"a question of {mark}", {"type": "string"})
        return {"mark": mark, "answer": answer}
    if do == "crash":
        os._exit(3)
    if do == "sleep":
        time.sleep(task_input.get("seconds", 5))
    print(f"hello from {mark}", file=sys.stderr, flush=True)
    return {"mark": mark}


if __name__ == "__main__":
    run(handle)
