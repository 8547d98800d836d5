"""An MCP stdio server of the tools a policy is written about (tests/test_policy.py,
tests/test_taint.py): each answers "NAME ARGUMENTS" (the arguments as JSON, keys
sorted), so that a test sees which call was made and with what.

Tools: fetch {url} (a fetcher: the untrusted one), read_mail, write_file {path, text},
send_mail {to, body}, pay {amount}, http_get {host}.
"""

import json

from stdio_mcp import serve

NAMES = ("fetch", "read_mail", "write_file", "send_mail", "pay", "http_get")
TOOLS = [{"name": n, "inputSchema": {"type": "object"}} for n in NAMES]


def answer(method: str, params: dict[str, object]) -> object:
    if method == "tools/list":
        return {"tools": TOOLS}
    if method == "tools/call":
        text = f"{params['name']} {json.dumps(params.get('arguments') or {}, sort_keys=True)}"
        return {"content": [{"type": "text", "text": text}], "isError": False}
    return None


serve("policy", answer)
