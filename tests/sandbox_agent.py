"""An agent for tests/test_sandbox.py: each task tries one thing a sandbox allows or
refuses and returns what happened, the error's own text when it was refused."""

import os
import socket
import subprocess
import sys
import time
from typing import Any

from corral.worker import run

HELD: list[bytes] = []


def attempt(task: dict[str, Any]) -> Any:
    do = task["do"]
    if do == "write":
        with open(task["path"], "w") as f:
            f.write("written from the sandbox")
        return task["path"]
    if do == "put":  # a file of the task's own text (tests/test_boundary_binds.py)
        with open(task["path"], "w") as f:
            f.write(task["text"])
        return task["path"]
    if do == "read":
        with open(task["path"]) as f:
            return f.read()
    if do == "processes":  # what this agent sees of /proc: pid -> command line
        out = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    out[entry] = f.read().replace(b"\0", b" ").decode().strip()
        return out
    if do == "connect":
        with socket.create_connection((task["host"], task["port"]), timeout=5):
            return "connected"
    if do == "connect_unix":
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(task["path"])
            return "connected"
    if do == "limits":
        with open("/proc/self/limits") as f:
            return next(line for line in f if line.startswith("Max address space"))
    if do == "privileges":  # its capability sets, no_new_privs, and a user namespace tried
        with open("/proc/self/status") as f:
            status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        made = subprocess.run(["unshare", "--user", "true"], capture_output=True, text=True)
        held = {k: status[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
                                       "NoNewPrivs")}
        return {**held, "userns": made.stderr.strip() or "made"}
    if do == "allocate":
        block = bytearray(task["mb"] * 1024 * 1024)
        return len(block)
    if do == "hold":  # memory kept (and touched) until the process ends
        HELD.append(b"x" * (task["mb"] * 1024 * 1024))
        return task["mb"]
    if do == "leave":  # descendants left behind: one in our group, one that left it
        subprocess.Popen(["sleep", str(task["seconds"])])
        subprocess.Popen(["sh", "-c", f"setsid sleep {task['seconds']} &"]).wait()
        return "left"
    if do == "die":
        print(f"dying of signal {task['signal']}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), task["signal"])
        while True:  # the handler may run on a thread the signal does not stop first
            time.sleep(1)
    raise ValueError(f"unknown do: {do}")


def handle(task: dict[str, Any], ctx: Any) -> dict[str, Any]:
    try:
        return {"ok": attempt(task)}
    except (OSError, MemoryError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


if __name__ == "__main__":
    run(handle)
