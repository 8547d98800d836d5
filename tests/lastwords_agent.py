"""A worker that answers its task and dies at once, status 3 (os._exit right after the
write, no SDK): its answer is read whether the supervisor sees its exit first or not
(tests/test_tasks.py). {"bytes": N} pads the output to N bytes, more than one read;
{"calls": N, "tool": T, "args": A} sends N calls of tool T (arguments A, else {"seconds":
60}) first, unanswered: past corral's bound of requests worked on, its stdout is read no
further until it ends; {"go": PATH}: then waits for PATH to exist before it answers."""

import json
import os
import sys
import time

from raw_worker import send

for line in sys.stdin:
    msg = json.loads(line)
    method = msg.get("method")
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": msg["id"],
              "result": {"protocol_version": "1", "capabilities": {}}})
    elif method == "task/run":
        task = msg["params"]["input"]
        for i in range(task.get("calls", 0)):
            send({"jsonrpc": "2.0", "id": f"call-{i}", "method": "tools/call",
                  "params": {"name": task["tool"],
                             "arguments": task.get("args", {"seconds": 60})}})
        while task.get("go") and not os.path.exists(task["go"]):
            time.sleep(0.01)
        send({"jsonrpc": "2.0", "id": msg["id"],
              "result": {"output": {**task, "pad": "x" * task.get("bytes", 0)}}})
        os._exit(3)
    elif "id" in msg and "method" in msg:  # a ping
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {}})
