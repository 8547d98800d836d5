"""A worker that answers its tasks together (test_dispatch_reads.py): it holds each
`task/run` until it holds as many as the task's input says (`together`, else one), then
writes all their answers in one write, which corral reads at once. Each output is its
input's `n` and how many tasks the worker held when the task came (`held`): more than the
agent's max_concurrent_tasks would be a slot taken twice."""

import json
import os
import sys
from typing import Any

held: list[tuple[Any, dict[str, Any]]] = []


def line(message: dict[str, Any]) -> bytes:
    return (json.dumps(message) + "\n").encode()


for text in sys.stdin:
    msg = json.loads(text)
    method = msg.get("method")
    if method == "initialize":
        os.write(1, line({"jsonrpc": "2.0", "id": msg["id"],
                          "result": {"protocol_version": "1", "capabilities": {}}}))
    elif method == "task/run":
        task_input = msg["params"]["input"]
        held.append((msg["id"], {"n": task_input["n"], "held": len(held) + 1}))
        if len(held) >= task_input.get("together", 1):
            os.write(1, b"".join(line({"jsonrpc": "2.0", "id": rid,
                                       "result": {"output": out}}) for rid, out in held))
            held.clear()
    elif "id" in msg and "method" in msg:  # a ping
        os.write(1, line({"jsonrpc": "2.0", "id": msg["id"], "result": {}}))
