"""An agent that uses MCP resources and prompts through corral (the worker SDK's ctx).

Input: {"server": NAME, "uri": URI, "prompt": SERVER__PROMPT, "arguments": {...},
        "watch": true}
Output: what it listed, read and got; with "watch", it subscribes to the URI, asks the
server (tool SERVER__touch) to change it, and waits for the update.
"""

import threading

from corral.worker import run

updates = []
updated = threading.Event()


def on_resource_updated(server, uri):
    updates.append([server, uri])
    updated.set()


def handle(task, ctx):
    server = task["server"]
    out = {
        "resources": [r["uri"] for r in ctx.list_resources(server)["resources"]],
        "prompts": [p["name"] for p in ctx.list_prompts()["prompts"]],
        "read": ctx.read_resource(server, task["uri"])["contents"][0].get("text"),
    }
    if task.get("prompt"):
        got = ctx.get_prompt(task["prompt"], task.get("arguments") or {})
        out["prompt"] = got["messages"][0]["content"].get("text")
    if task.get("watch"):
        ctx.subscribe_resource(server, task["uri"])
        ctx.call_tool(f"{server}__touch", {"uri": task["uri"]})
        out["updated"] = updated.wait(10) and updates
    return out


run(handle, on_resource_updated=on_resource_updated)
