"""A hostile worker for the flood tests: it answers `initialize`, then sends FLOOD_REQUESTS
requests (distinct ids) of FLOOD_METHOD with FLOOD_PARAMS (JSON) as fast as it can, and
never reads its stdin again; it sleeps until it is killed. With FLOOD_READS=1 it reads
its stdin all the same (answering pings): a worker with many requests in flight, not a
hostile one; with FLOOD_READ="BYTES,SECONDS,FIRST" too, but only BYTES at a time,
SECONDS apart, for its first FIRST bytes (a slow reader, for a while). Standard library
only, like a worker written in any language."""

import json
import os
import sys
import threading
import time

buf = b""
while b"\n" not in buf:
    chunk = os.read(0, 65536)
    if not chunk:
        sys.exit(0)
    buf += chunk
rid = json.loads(buf.split(b"\n", 1)[0])["id"]
os.write(1, b'{"jsonrpc":"2.0","id":%s,"result":{}}\n' % json.dumps(rid).encode())

lock = threading.Lock()


def write(data: bytes) -> None:
    with lock:
        view = memoryview(data)
        while view:
            view = view[os.write(1, view):]


def read_and_ping() -> None:
    global answers
    size, pause, first = os.environ.get("FLOOD_READ", "65536,0,0").split(",")
    rest, read = b"", 0
    while chunk := os.read(0, int(size) if read < int(first) else 1 << 20):
        if read < int(first):
            time.sleep(float(pause))
        read += len(chunk)
        *lines, rest = (rest + chunk).split(b"\n")
        for line in lines:
            msg = json.loads(line)
            if msg.get("method") == "ping":
                write(b'{"jsonrpc":"2.0","id":%s,"result":{}}\n' % json.dumps(msg["id"]).encode())
            elif "id" in msg and "method" not in msg:
                answers += 1
                if answers == n:
                    os.write(2, b"all answered\n")
    os._exit(0)


n = int(os.environ.get("FLOOD_REQUESTS", "1000000"))
answers = 0
if os.environ.get("FLOOD_READS") == "1":
    threading.Thread(target=read_and_ping, daemon=True).start()
method = json.dumps(os.environ.get("FLOOD_METHOD", "events/subscribe")).encode()
params = os.environ.get("FLOOD_PARAMS", '{"topic":"flood.t"}').encode()
per_block = 10000
for first in range(0, n, per_block):
    block = b"".join(b'{"jsonrpc":"2.0","id":%d,"method":%s,"params":%s}\n' % (i, method, params)
                     for i in range(first, min(n, first + per_block)))
    write(block)
os.write(2, b"flooded\n")  # all written: corral read every request
while True:
    time.sleep(3600)
