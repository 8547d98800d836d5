"""A worker that asks for the same named step many times (test_durable.py): on its task's
first attempt it keeps step "s" and exits; on the retry it asks for "s" `asks` times and
for corral's own `corral/lineage`, and answers with what it was told."""

import json
import sys

_next = [1000]


def send(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def call(method: str, params: dict) -> dict:
    _next[0] += 1
    mine = _next[0]
    send({"jsonrpc": "2.0", "id": mine, "method": method, "params": params})
    for line in sys.stdin:
        message = json.loads(line)
        if message.get("id") == mine and "method" not in message:
            return message
        if "method" in message and "id" in message:  # a ping meanwhile
            send({"jsonrpc": "2.0", "id": message["id"], "result": {}})
    raise SystemExit(1)


for line in sys.stdin:
    msg = json.loads(line)
    method = msg.get("method")
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": msg["id"],
              "result": {"protocol_version": "1", "capabilities": {}}})
    elif method == "task/run":
        p = msg["params"]
        if p["attempt"] == 1:
            call("step/put", {"task_id": p["task_id"], "name": "s", "result": 42})
            sys.exit(3)
        got = [call("step/get", {"task_id": p["task_id"], "name": "s"})["result"]
               for _ in range(p["input"]["asks"])]
        own = call("step/get", {"task_id": p["task_id"], "name": "corral/lineage"})
        send({"jsonrpc": "2.0", "id": msg["id"],
              "result": {"output": {"got": got, "own": own.get("error")}}})
    elif "id" in msg and "method" in msg:
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {}})
