"""One MCP request of the 2026-07-28 revision over HTTP, as a client of corral's gateway
sends it: its version in `_meta` and its headers, its method and name (a tool's, a
resource's URI) as headers too (the attack tests' `rpc`)."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

VERSION = "2026-07-28"


def rpc(url: str, token: str | None, method: str, params: dict[str, Any],
        capabilities: dict[str, Any] | None = None) -> dict[str, Any]:
    """One request at `url` (its query kept: an attempt's address) with `token` (none:
    anonymous), the client declaring `capabilities`: its JSON-RPC answer (an HTTP
    refusal's body as it came)."""
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": {
        "io.modelcontextprotocol/protocolVersion": VERSION,
        "io.modelcontextprotocol/clientCapabilities": capabilities or {}}}}
    where = urlsplit(url)
    assert where.hostname is not None
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    name = params.get("uri", params.get("name"))
    try:
        conn.request("POST", where.path + (f"?{where.query}" if where.query else ""),
                     json.dumps(body), {
                         **({"Authorization": f"Bearer {token}"} if token else {}),
                         "Content-Type": "application/json",
                         "Accept": "application/json, text/event-stream",
                         "MCP-Protocol-Version": VERSION, "Mcp-Method": method,
                         **({"Mcp-Name": str(name)} if name is not None else {})})
        said: dict[str, Any] = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return said
