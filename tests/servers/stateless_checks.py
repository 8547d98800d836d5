"""A 2026-07-28 stdio MCP server that watches what the conformance suite's client
scenarios watch over HTTP (request-metadata, sep-2322-client-request-state,
http-invalid-tool-headers, json-schema-2020-12-preservation), for corral's client over
stdio, where the suite has no client harness.

- its first `server/discover` is refused with -32022 naming 2026-07-28 as supported (the
  client is to ask again);
- every request is recorded (method, id, `_meta`, `inputResponses`, `requestState`, tool);
  tool `observed` returns the record as JSON text;
- tools answering with `resultType: input_required`: `echo_state` (an elicitation, with a
  `requestState`), `no_state` (an elicitation, without one), `roots` (roots/list),
  `sampling` (sampling/createMessage), `forever` (asks again at every round); each answers
  the round that brings `inputResponses` with what the round carried, as JSON text;
- `plain` answers without `resultType` (complete by default);
- `rich_schema` has a JSON Schema 2020-12 input schema (`SCHEMA`), `good_header` one
  property marked `x-mcp-header: Region`, and `bad_header` a mark that is no HTTP token.
"""

import json
import sys

VERSION = "2026-07-28"
META = "io.modelcontextprotocol/"
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {"region": {"$anchor": "region", "type": "string", "enum": ["eu", "us"]}},
    "properties": {"where": {"$ref": "#region"}, "n": {"type": "integer"}},
    "allOf": [{"required": ["where"]}],
    "if": {"properties": {"where": {"const": "eu"}}},
    "then": {"required": ["n"]},
    "additionalProperties": False,
}
OBJECT = {"type": "object"}
TOOLS = [{"name": n, "inputSchema": OBJECT} for n in
         ("echo_state", "no_state", "roots", "sampling", "forever", "plain", "observed")]
TOOLS += [
    {"name": "rich_schema", "inputSchema": SCHEMA},
    {"name": "good_header", "inputSchema": {"type": "object", "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"}}}},
    {"name": "bad_header", "inputSchema": {"type": "object", "properties": {
        "region": {"type": "string", "x-mcp-header": "My Region"}}}},
]
ASKS = {
    "echo_state": {"confirm": {"method": "elicitation/create", "params": {
        "message": "Confirm?", "requestedSchema": {
            "type": "object", "properties": {"ok": {"type": "boolean"}}}}}},
    "roots": {"where": {"method": "roots/list", "params": {}}},
    "sampling": {"say": {"method": "sampling/createMessage", "params": {
        "messages": [], "maxTokens": 10}}},
}
ASKS["no_state"] = ASKS["forever"] = ASKS["echo_state"]

seen = []
refused = False  # the first discover is refused, every later one answered


def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def text(rid, value):
    send({"jsonrpc": "2.0", "id": rid, "result": {
        "resultType": "complete", "content": [{"type": "text", "text": json.dumps(value)}]}})


def call(rid, params):
    name = params.get("name")
    answers = params.get("inputResponses")
    if name == "observed":
        text(rid, seen)
    elif name == "plain":
        send({"jsonrpc": "2.0", "id": rid, "result": {
            "content": [{"type": "text", "text": "plain"}]}})
    elif name in ASKS and (answers is None or name == "forever"):
        result = {"resultType": "input_required", "inputRequests": ASKS[name]}
        if name != "no_state":
            result["requestState"] = json.dumps({"tool": name, "first": rid})
        send({"jsonrpc": "2.0", "id": rid, "result": result})
    elif name in ASKS:
        text(rid, {"inputResponses": answers, "requestState": params.get("requestState")})
    else:
        text(rid, params.get("arguments"))


def main():
    global refused
    for line in sys.stdin:
        msg = json.loads(line)
        if "id" not in msg or "method" not in msg:
            continue  # notifications, and answers to requests of its own (it sends none)
        rid, method, params = msg["id"], msg["method"], msg.get("params") or {}
        meta = params.get("_meta") or {}
        seen.append({"method": method, "id": rid, "tool": params.get("name"),
                     "version": meta.get(META + "protocolVersion"),
                     "capabilities": meta.get(META + "clientCapabilities"),
                     "clientInfo": meta.get(META + "clientInfo"),
                     "inputResponses": params.get("inputResponses"),
                     "requestState": params.get("requestState")})
        if method == "server/discover" and not refused:
            refused = True
            send({"jsonrpc": "2.0", "id": rid, "error": {
                "code": -32022, "message": "Unsupported protocol version",
                "data": {"supported": [VERSION], "requested": "?"}}})
        elif method == "server/discover":
            send({"jsonrpc": "2.0", "id": rid, "result": {
                "resultType": "complete", "supportedVersions": [VERSION],
                "capabilities": {"tools": {}}, "serverInfo": {"name": "checks", "version": "1"}}})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": rid, "result": {"resultType": "complete",
                                                          "tools": TOOLS}})
        elif method == "tools/call":
            call(rid, params)
        else:
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601,
                                                         "message": f"no method {method}"}})


if __name__ == "__main__":
    main()
