"""The model door's agent: a task that makes each of its input's `calls` in turn, its output
each call's outcome: {"model": NAME} a chat completion through corral's model gateway
(OPENAI_BASE_URL, with its replica's OPENAI_API_KEY), answered {"status", "text"} (the
answer's text, or the refusal's message); {"tool": NAME, "arguments": ...} a tool call on
the worker link, answered {"text", "isError"}. With {"env": true}: its replica's gateway
addresses and token, for a test's calls of no task."""

import json
import os
import urllib.error
import urllib.request

from corral.worker import run

ENV = ("OPENAI_BASE_URL", "OPENAI_API_KEY", "CORRAL_MCP_URL", "CORRAL_MCP_TOKEN")


def model(name, base=None, key=None, traceparent=None):
    """A chat completion of model `name` (the replica's own gateway, unless `base` and
    `key` say); `traceparent`: the caller's trace context, its W3C header."""
    body = json.dumps({"model": name, "max_tokens": 16,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"Authorization": f"Bearer {key or os.environ['OPENAI_API_KEY']}",
               "Content-Type": "application/json"}
    if traceparent is not None:
        headers["traceparent"] = traceparent
    req = urllib.request.Request(
        (base or os.environ["OPENAI_BASE_URL"]) + "/chat/completions", data=body,
        headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            said = json.loads(r.read())
            return {"status": r.status, "text": said["choices"][0]["message"]["content"]}
    except urllib.error.HTTPError as e:
        said = json.loads(e.read() or b"{}")
        return {"status": e.code, "text": (said.get("error") or {}).get("message")}


def handle(task, ctx):
    if task.get("env"):
        return {k: os.environ[k] for k in ENV}
    outcomes = []
    for c in task["calls"]:
        if "model" in c:
            outcomes.append(model(c["model"]))
        else:
            result = ctx.call_tool(c["tool"], c.get("arguments", {}))
            content = result.get("content") or [{}]
            outcomes.append({"text": content[0].get("text"),
                             "isError": bool(result.get("isError"))})
    return outcomes


if __name__ == "__main__":
    run(handle)
