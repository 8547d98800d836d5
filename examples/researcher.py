"""An agent that uses MCP tools through corral: it files its findings as notes."""

from corral.worker import run


def handle(task, ctx):
    if isinstance(task, dict) and "parts" in task:
        # an A2A message (docs/a2a.md): its topic is what its caller wrote, its text parts
        task = " ".join(p["text"] for p in task["parts"] if "text" in p) or "nothing"
    topic = task.get("topic", "nothing") if isinstance(task, dict) else str(task)
    tools = [t["name"] for t in ctx.list_tools()["tools"]]
    ctx.progress(1, 2, "filing a note")
    stored = ctx.call_tool("notes__add", {"title": topic, "text": f"findings about {topic}"})
    found = ctx.call_tool("notes__search", {"word": "findings"})
    return {"tools": tools, "stored": stored["content"][0]["text"],
            "found": found.get("structuredContent")}


if __name__ == "__main__":
    run(handle)
