"""The door suite's agent: a task that makes each of its input's `calls`
({"door", "tool", "arguments"}) in turn by that door, its output each call's outcome:
{"text", "isError"} or {"error": code, "message"}.

The doors: `worker` (`ctx.call_tool`, naming its task), `worker-no-task` (`tools/call`
naming none), and the HTTP gateway at its replica's own address (CORRAL_MCP_URL, naming
no attempt) with its replica's token: `/mcp` (SERVER__TOOL), `/mcp/NAME` (the server's
TOOL), `/mcp/corral` (an agent, `corral__AGENT`); a call's `key`, at the gateway, its
idempotency key in `_meta`. An A2A message's input is its first
data part. With {"env": true}: its replica's
gateway address and token, for a test's calls of no task. A call {"die": true} is the
first attempt's SIGKILL of its own worker there (a lost attempt), and on a retry the
outcome {"attempt": N}."""

import json
import os
import signal
import urllib.error
import urllib.request

from corral.worker import run

VERSION = "2026-07-28"


def outcome(result):
    content = result.get("content") or [{}]
    return {"text": content[0].get("text"), "isError": bool(result.get("isError"))}


def gateway(path, name, arguments, url=None, token=None, key=None):
    """A tools/call at the gateway (the replica's own, unless `url` and `token` say);
    `key`: its idempotency key, in `_meta`."""
    said = {"io.modelcontextprotocol/protocolVersion": VERSION,
            "io.modelcontextprotocol/clientCapabilities": {}}
    if key is not None:
        said["io.corral/idempotency-key"] = key
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": name, "arguments": arguments,
                                  "_meta": said}}).encode()
    url = url or os.environ["CORRAL_MCP_URL"]
    token = token or os.environ["CORRAL_MCP_TOKEN"]
    req = urllib.request.Request(url + path, data=body, headers={
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": VERSION, "Mcp-Method": "tools/call", "Mcp-Name": name})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            said = json.loads(r.read())
    except urllib.error.HTTPError as e:
        said = json.loads(e.read() or b"{}")
    if "error" in said:
        return {"error": said["error"].get("code"), "message": said["error"].get("message")}
    return outcome(said["result"])


def call(ctx, door, tool, arguments, key=None):
    server, _, own = tool.partition("__")
    if door in ("worker", "worker-no-task"):
        try:
            if door == "worker":
                return outcome(ctx.call_tool(tool, arguments))
            return outcome(ctx._worker.request("tools/call",
                                               {"name": tool, "arguments": arguments}))
        except Exception as exc:  # the refusal is the answer under test
            return {"error": getattr(exc, "code", None), "message": str(exc)}
    if door == "/mcp":
        return gateway("", tool, arguments, key=key)
    return gateway(f"/{server}", own, arguments, key=key)  # /mcp/NAME, /mcp/corral


def handle(task, ctx):
    # a message sent over A2A: its first data part is the input
    task = next((p["data"] for p in task.get("parts", []) if "data" in p), task)
    if task.get("env"):  # its replica's gateway address and token, for calls of no task
        return {k: os.environ[k] for k in ("CORRAL_MCP_URL", "CORRAL_MCP_TOKEN")}
    return [died(ctx) if c.get("die") else
            call(ctx, c["door"], c["tool"], c.get("arguments", {}), c.get("key"))
            for c in task["calls"]]


def died(ctx):
    if ctx.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"attempt": ctx.attempt}


if __name__ == "__main__":
    run(handle)
