"""What sending agents' lines to the journal costs the daemon's log path (issue 10).

Per line, medians of 5 runs of 20,000 lines in blocks of 50 (one block = one read from an
agent's stderr): the file path alone (LogHub.emit, as with `log_journal = false`), the
same plus JournalSender.lines (the native protocol, one datagram per line), and the peer:
Python's logging.handlers.SysLogHandler over a unix datagram socket, the stdlib's way to
hand lines to a system logger. A separate process drains the datagram socket, standing in for
journald (its own cost is journald's, not the daemon's); lines it could not take at once
are dropped by JournalSender (counted) while SysLogHandler blocks.

    .venv/bin/python -m bench.bench_journal
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from corral.daemon.journald import JournalSender
from corral.daemon.logs import LogHub
from corral.jsonrpc import LineBlock

LINES, BLOCK, RUNS = 20_000, 50, 5


SINK = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
print("ready", flush=True)
while True:
    s.recv(1 << 17)
"""


def sink(path: str) -> subprocess.Popen[str]:
    """A process draining the datagram socket, as journald would."""
    p = subprocess.Popen([sys.executable, "-c", SINK, path], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout is not None and p.stdout.readline() == "ready\n"
    return p


def main() -> None:
    d = Path(tempfile.mkdtemp(prefix="corral-bench-journal-"))
    drain = sink(str(d / "journal.sock"))
    text = [f"line {i} of an agent's stderr, about this long".encode() for i in range(BLOCK)]
    block = LineBlock.of(text)
    hub = LogHub(d / "logs")
    sender = JournalSender(str(d / "journal.sock"))
    syslog = logging.handlers.SysLogHandler(address=str(d / "journal.sock"),
                                            socktype=socket.SOCK_DGRAM)
    logger = logging.getLogger("bench")
    logger.addHandler(syslog)
    logger.propagate = False

    def files_only() -> None:
        hub.emit("a", 0, 1, "stderr", block)

    def files_and_journal() -> None:
        hub.emit("a", 0, 1, "stderr", block)
        sender.lines("agent", "a", 0, 1, "stderr", block)

    def files_and_syslog() -> None:
        hub.emit("a", 0, 1, "stderr", block)
        for line in block:
            logger.warning(line.decode())

    results = {}
    for name, fn in (("files", files_only), ("files + journal", files_and_journal),
                     ("files + SysLogHandler", files_and_syslog)):
        runs = []
        for _ in range(RUNS):
            t0 = time.perf_counter()
            for _ in range(LINES // BLOCK):
                fn()
            runs.append((time.perf_counter() - t0) / LINES * 1e6)
        results[name] = statistics.median(runs)
    base = results["files"]
    print(f"load {os.getloadavg()[0]:.2f}; µs per line, median of {RUNS} runs of {LINES}:")
    for name, us in results.items():
        print(f"  {name:24s} {us:6.2f} µs  ({us / base:.2f}x files alone)")
    print(f"  journal alone: {results['files + journal'] - base:.2f} µs/line; "
          f"SysLogHandler alone: {results['files + SysLogHandler'] - base:.2f} µs/line; "
          f"dropped {sender.dropped}")
    drain.kill()
    drain.wait()


if __name__ == "__main__":
    main()
