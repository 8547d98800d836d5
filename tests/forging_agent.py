"""A worker that writes corral's own step names (test_spawn.py): on its task's first
attempt `step/put` of a spawn's step naming a child of its choosing, and of a lineage; it
prints what it was answered and exits, and on the second attempt spawns under the key."""

import json
import sys

FORGED = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
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
            answers = [call("step/put", {"task_id": p["task_id"], "name": name,
                                         "result": result})
                       for name, result in (("spawn:k", {"child": FORGED, "agent": "other"}),
                                            ("corral/lineage", {"depth": 0}))]
            with open(p["input"]["out"], "w") as f:
                json.dump(answers, f)
            sys.exit(3)  # the task's retry is the next attempt
        answer = call("task/spawn", {"task_id": p["task_id"], "key": "k", "agent": "other",
                                     "input": {}})
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {"output": answer}})
    elif "id" in msg and "method" in msg:
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {}})
