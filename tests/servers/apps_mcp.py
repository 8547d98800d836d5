"""An MCP Apps server (the extension io.modelcontextprotocol/ui) over stdio: tool
`show_weather`, whose `_meta.ui.resourceUri` names its view, the resource
`ui://weather/view.html` (mimeType text/html;profile=mcp-app, its own `_meta.ui`: the
view's CSP and border), listed by resources/list and read by resources/read."""

import json
import sys

VIEW = "ui://weather/view.html"
MIME = "text/html;profile=mcp-app"
HTML = ("<!doctype html><html><body><div id=forecast></div><script>"
        "window.addEventListener('message', e => {})</script></body></html>")
VIEW_META = {"ui": {"csp": {"connectDomains": [], "resourceDomains": []},
                    "prefersBorder": True}}
TOOL = {"name": "show_weather", "description": "Show a city's forecast in a view.",
        "inputSchema": {"type": "object", "properties": {"city": {"type": "string"}},
                        "required": ["city"]},
        "_meta": {"ui": {"resourceUri": VIEW, "visibility": ["model", "app"]},
                  "ui/resourceUri": VIEW}}  # the key older hosts read


def answer(method: str | None, params: dict[str, object]
           ) -> tuple[dict[str, object] | None, tuple[int, str] | None]:
    if method == "initialize":
        return {"protocolVersion": "2025-11-25",
                "capabilities": {"tools": {}, "resources": {}},
                "serverInfo": {"name": "apps", "version": "1"}}, None
    if method == "tools/list":
        return {"tools": [TOOL]}, None
    if method == "tools/call":
        args = params.get("arguments")
        city = str(args.get("city") if isinstance(args, dict) else None)
        return {"content": [{"type": "text", "text": f"{city}: sunny, 21 C"}],
                "structuredContent": {"city": city, "sky": "sunny", "celsius": 21}}, None
    if method == "resources/list":
        return {"resources": [{"uri": VIEW, "name": "weather view", "mimeType": MIME,
                               "_meta": VIEW_META}]}, None
    if method == "resources/read":
        if params.get("uri") != VIEW:
            return None, (-32602, f"Resource not found: {params.get('uri')}")
        return {"contents": [{"uri": VIEW, "mimeType": MIME, "text": HTML,
                              "_meta": VIEW_META}]}, None
    if method == "ping":
        return {}, None
    return None, (-32601, f"method not found: {method}")


def main() -> None:
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("id") is None:
            continue
        result, error = answer(msg.get("method"), msg.get("params") or {})
        reply: dict[str, object] = {"jsonrpc": "2.0", "id": msg["id"]}
        if error is not None:
            reply["error"] = {"code": error[0], "message": error[1]}
        else:
            reply["result"] = result
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
