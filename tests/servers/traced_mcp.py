"""An MCP stdio server whose one tool, `where`, answers with the W3C trace context its
request carried in `params._meta` (`traceparent`, or "none"): a test sees the context
corral sent upstream (tests/doors/test_spans.py)."""

from stdio_mcp import serve

TOOLS = [{"name": "where", "inputSchema": {"type": "object"}}]


def answer(method: str, params: dict[str, object]) -> object:
    if method == "tools/list":
        return {"tools": TOOLS}
    if method == "tools/call":
        meta = params.get("_meta")
        said = meta.get("traceparent") if isinstance(meta, dict) else None
        return {"content": [{"type": "text", "text": said or "none"}], "isError": False}
    return None


serve("traced", answer)
