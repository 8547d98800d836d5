"""Tenant A's flood, run as a process of its own (its CPU is not the measuring test's):
TASKS tasks.run requests (detached) for AGENT over the control socket at SOCKET, WINDOW
in flight at a time; prints {"accepted": N, "refused": {message: count}} as JSON."""

from __future__ import annotations

import collections
import json
import os
import socket
import sys

sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(60)  # a daemon that stops answering ends the flood, with an error
sock.connect(os.environ["SOCKET"])
agent, total = os.environ["AGENT"], int(os.environ["TASKS"])
window = int(os.environ.get("WINDOW", "64"))
accepted = 0
refused: collections.Counter[str] = collections.Counter()
buf = b""
sent = 0
while sent < total:
    n = min(window, total - sent)
    sock.sendall(b"".join(json.dumps({
        "jsonrpc": "2.0", "id": sent + i, "method": "tasks.submit",
        "params": {"agent": agent, "input": {"do": "echo", "i": sent + i}},
    }).encode() + b"\n" for i in range(n)))
    sent += n
    answered = 0
    while answered < n:
        while b"\n" not in buf:
            chunk = sock.recv(1 << 20)
            if not chunk:
                sys.exit("the daemon closed the connection")
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        msg = json.loads(line)
        if "id" not in msg:
            continue  # a notification
        answered += 1
        if "error" in msg:
            refused[msg["error"]["message"]] += 1
        else:
            accepted += 1
print(json.dumps({"accepted": accepted, "refused": refused}))
