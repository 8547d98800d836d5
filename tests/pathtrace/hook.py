"""The profile hook of a traced corral process, installed by the sitecustomize that
tests/pathtrace/trace.py writes (PYTHONPATH) when CORRAL_PATHTRACE names a directory.

It records the `corral.*` module of every function that runs, into the window the test
last marked. The test marks windows on this process's control socket, DIR/PID.sock, one
line a command: `mark NAME` (the calls from now on are NAME's), `settle` (answers once
the window has seen no new module for a while: a path's trailing work is done), `idle
SECONDS MODULE...` (answers once the window is SECONDS long and has seen each MODULE, or
after IDLE_LIMIT: an idle daemon's periodic work, come round at least once) and `dump`
(every window's modules, JSON). At its exit the process writes the same JSON to
DIR/PID.json (a short-lived process, the CLI, is read so)."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import sys
import threading
import time
from types import FrameType
from typing import Any

_OPTIMIZED = 0x1  # inspect.CO_OPTIMIZED: a function's code (no module or class body)
QUIET = 0.3  # settled: no new module in the window for this long
SETTLE_LIMIT = 5.0
IDLE_LIMIT = 15.0


class Recorder:
    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.windows: dict[str, set[str]] = {"start": set()}
        self.current = self.windows["start"]
        self.grew = time.monotonic()  # when the current window last saw a new module

    def hook(self, frame: FrameType, event: str, arg: Any) -> None:
        # a generator's or coroutine's resumption is a "call" too: an awaited task counts
        if event != "call" or not frame.f_code.co_flags & _OPTIMIZED:
            return
        name = frame.f_globals.get("__name__")
        if isinstance(name, str) and name.startswith("corral") and name not in self.current:
            self.current.add(name)
            self.grew = time.monotonic()

    def mark(self, name: str) -> None:
        self.windows[name] = window = set()
        self.current = window  # (one assignment: atomic beside the hook's reads)
        self.grew = time.monotonic()

    def settle(self) -> None:
        limit = time.monotonic() + SETTLE_LIMIT
        while time.monotonic() < limit and time.monotonic() - self.grew < QUIET:
            time.sleep(0.05)

    def idle(self, seconds: float, modules: list[str]) -> None:
        start = time.monotonic()
        window = self.current
        while time.monotonic() - start < IDLE_LIMIT and (
                time.monotonic() - start < seconds or not window.issuperset(modules)):
            time.sleep(0.05)

    def dumped(self) -> str:
        return json.dumps({k: sorted(v) for k, v in self.windows.items()})

    def serve(self) -> None:
        sys.setprofile(None)  # this thread's own work is no path's
        path = os.path.join(self.dir, f"{os.getpid()}.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(4)
        while True:
            conn, _ = server.accept()
            with conn, conn.makefile("rw") as f:
                for line in f:
                    verb, _, name = line.strip().partition(" ")
                    if verb == "mark":
                        self.mark(name)
                        f.write("ok\n")
                    elif verb == "settle":
                        self.settle()
                        f.write("ok\n")
                    elif verb == "idle":
                        seconds, *modules = name.split()
                        self.idle(float(seconds), modules)
                        f.write("ok\n")
                    else:
                        f.write(self.dumped() + "\n")
                    f.flush()

    def write(self) -> None:
        sys.setprofile(None)
        with contextlib.suppress(OSError), \
                open(os.path.join(self.dir, f"{os.getpid()}.json"), "w") as f:
            f.write(self.dumped())


def install() -> None:
    # popped: the processes this one starts (agents, MCP servers) are not traced
    directory = os.environ.pop("CORRAL_PATHTRACE", None)
    if not directory:
        return
    recorder = Recorder(directory)
    threading.Thread(target=recorder.serve, name="pathtrace", daemon=True).start()
    atexit.register(recorder.write)
    threading.setprofile(recorder.hook)
    sys.setprofile(recorder.hook)
