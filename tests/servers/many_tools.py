"""An MCP stdio server of many tools (argv[1], 300 unless given), each described as a
real server's tools are (a sentence or two, an input schema of a few fields): for tool
search (corral/mcp/toolsearch.py) and what a client's tools/list costs. One of them,
`forecast_weather`, is the only one to speak of precipitation. tools/call answers the
tool's name and arguments as text."""

import itertools
import json
import sys

VERBS = ["create", "update", "delete", "archive", "export", "import", "list", "fetch",
         "merge", "validate", "approve", "assign", "close", "reopen", "tag"]
NOUNS = ["invoice", "ticket", "customer", "order", "shipment", "refund", "contract",
         "report", "calendar_event", "document", "payment", "subscription", "lead",
         "product", "warehouse", "employee", "budget", "campaign", "asset", "incident"]
SYSTEMS = ["billing system", "help desk", "CRM", "order book", "ledger"]


def tools(count: int) -> list[dict[str, object]]:
    out: list[dict[str, object]] = [{
        "name": "forecast_weather",
        "description": "Returns the weather forecast for a city: temperature, wind and "
                       "precipitation for each of the next days.",
        "inputSchema": {"type": "object", "properties": {
            "city": {"type": "string", "description": "the city's name"},
            "days": {"type": "integer", "description": "how many days ahead"}},
            "required": ["city"]}}]
    for i, (verb, noun) in enumerate(itertools.product(VERBS, NOUNS)):
        if len(out) >= count:
            break
        system = SYSTEMS[i % len(SYSTEMS)]
        thing = noun.replace("_", " ")
        out.append({
            "name": f"{verb}_{noun}",
            "description": f"{verb.capitalize()} one {thing} in the {system}. Use it when "
                           f"the user asks to {verb} a {thing}; give its id and, where it "
                           f"applies, the fields to set. Returns the {thing} as JSON.",
            "inputSchema": {"type": "object", "properties": {
                "id": {"type": "string", "description": f"the {thing}'s id"},
                "fields": {"type": "object", "description": "field names and values"},
                "dry_run": {"type": "boolean",
                            "description": "check only, change nothing"}},
                "required": ["id"]}})
    return out


def main() -> None:
    listed = tools(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
    out = sys.stdout
    for line in sys.stdin:
        msg = json.loads(line)
        rid = msg.get("id")
        if rid is None:
            continue
        method = msg.get("method")
        result: dict[str, object]
        if method == "initialize":
            result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                      "serverInfo": {"name": "many", "version": "1"}}
        elif method == "tools/list":
            result = {"tools": listed}
        elif method == "tools/call":
            p = msg["params"]
            result = {"content": [{"type": "text", "text": json.dumps(
                {"tool": p["name"], "arguments": p.get("arguments") or {}})}],
                "isError": False}
        elif method == "ping":
            result = {}
        else:
            out.write(json.dumps({"jsonrpc": "2.0", "id": rid, "error": {
                "code": -32601, "message": f"method not found: {method}"}}) + "\n")
            out.flush()
            continue
        out.write(json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
