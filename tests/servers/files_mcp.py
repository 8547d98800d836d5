"""An MCP server of files as a naive one serves them (tests/test_attack_s16.py): its
resources/read of a `file://` URI answers the file the URI's path names, read as the URI
spells it (its escapes decoded, its dot segments the file system's to resolve); its
resources/list, the files under its root (argv[1]); its one template, a file of pub/ by
name."""

import json
import os
import sys
from urllib.parse import unquote, urlsplit

ROOT = sys.argv[1]


def answer(method, params):
    if method == "initialize":
        return {"protocolVersion": "2025-11-25",
                "capabilities": {"tools": {}, "resources": {}},
                "serverInfo": {"name": "files", "version": "1"}}
    if method == "ping":
        return {}
    if method == "tools/list":
        return {"tools": []}
    if method == "resources/list":
        return {"resources": [{"uri": f"file://{os.path.join(d, f)}", "name": f}
                              for d, _, fs in sorted(os.walk(ROOT)) for f in sorted(fs)]}
    if method == "resources/templates/list":
        return {"resourceTemplates": [{"uriTemplate": f"file://{ROOT}/pub/{{name}}",
                                       "name": "a file of pub"}]}
    if method == "resources/read":
        uri = params.get("uri", "")
        try:
            with open(unquote(urlsplit(uri).path)) as f:
                text = f.read()
        except OSError as exc:
            raise LookupError(f"no such file: {uri} ({exc.strerror})") from None
        return {"contents": [{"uri": uri, "mimeType": "text/plain", "text": text}]}
    return None


def main():
    for line in sys.stdin:
        msg = json.loads(line)
        rid = msg.get("id")
        if rid is None:
            continue
        reply = {"jsonrpc": "2.0", "id": rid}
        try:
            result = answer(msg.get("method"), msg.get("params") or {})
        except LookupError as exc:
            reply["error"] = {"code": -32002, "message": str(exc)}
        else:
            if result is None:
                reply["error"] = {"code": -32601, "message": "Method not found"}
            else:
                reply["result"] = result
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
