"""A fake worker for the fuzz test: speaks just enough of the worker protocol to become
Ready and stay healthy (initialize, ping, shutdown), then sends corral every line of the
file in FUZZ_LINES as it is, and writes to FUZZ_RESULT the ids of its requests that
corral never answered (one JSON list), once all are answered or 60 s have passed.

Requests whose answer is checked have ids "w-N"; any other line is sent unchecked.
Standard library only, like a worker written in any language.
"""

import json
import os
import sys
import threading
import time

with open(os.environ["FUZZ_LINES"], "rb") as f:
    lines = f.read().split(b"\n")
expected = set()
for raw in lines:
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError):
        continue
    if isinstance(msg, dict) and str(msg.get("id", "")).startswith("w-"):
        expected.add(msg["id"])
answered = set()
out_lock = threading.Lock()
done = threading.Event()


def send(data: bytes) -> None:
    with out_lock:
        sys.stdout.buffer.write(data + b"\n")
        sys.stdout.buffer.flush()


def blast() -> None:
    for raw in lines:
        if raw:
            send(raw)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not expected <= answered:
        time.sleep(0.05)
    # written whole, then named: the test waits for the name
    with open(os.environ["FUZZ_RESULT"] + ".part", "w") as f:
        json.dump(sorted(expected - answered), f)
    os.rename(os.environ["FUZZ_RESULT"] + ".part", os.environ["FUZZ_RESULT"])


for raw in sys.stdin.buffer:
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError):
        continue
    if not isinstance(msg, dict):
        continue
    method, rid = msg.get("method"), msg.get("id")
    if method == "initialize":
        send(json.dumps({"jsonrpc": "2.0", "id": rid, "result": {}}).encode())
        threading.Thread(target=blast, daemon=True).start()
    elif method == "ping":
        send(json.dumps({"jsonrpc": "2.0", "id": rid, "result": {}}).encode())
    elif method == "shutdown":
        break
    elif method is None and rid in expected:
        answered.add(rid)
