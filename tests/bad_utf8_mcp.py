"""An MCP stdio server whose tool "bad" answers with a string that is not UTF-8 (the raw
byte 0xff in its text), after a notification with one too; its tool "good" answers "ok"."""

import json
import sys

BAD = b"\xff"


def send(raw: bytes) -> None:
    sys.stdout.buffer.write(raw + b"\n")
    sys.stdout.buffer.flush()


def answer(rid: object, result: object) -> None:
    send(json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}).encode())


for line in sys.stdin.buffer:
    msg = json.loads(line)
    rid, method, params = msg.get("id"), msg.get("method"), msg.get("params") or {}
    if rid is None:
        continue  # notifications
    if method == "initialize":
        answer(rid, {"protocolVersion": params["protocolVersion"],
                     "capabilities": {"tools": {}, "logging": {}},
                     "serverInfo": {"name": "bad-utf8", "version": "1"}})
    elif method == "tools/list":
        answer(rid, {"tools": [{"name": n, "inputSchema": {"type": "object"}}
                               for n in ("bad", "good")]})
    elif method == "tools/call" and params.get("name") == "bad":
        send(b'{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info",'
             b'"data":"' + BAD + b'"}}')
        send(b'{"jsonrpc":"2.0","id":' + json.dumps(rid).encode() + b',"result":{"content":'
             b'[{"type":"text","text":"' + BAD + b'"}]}}')
    elif method == "tools/call":
        answer(rid, {"content": [{"type": "text", "text": "ok"}]})
    elif method == "ping":
        answer(rid, {})
    else:
        send(json.dumps({"jsonrpc": "2.0", "id": rid, "error": {
            "code": -32601, "message": f"no {method}"}}).encode())
