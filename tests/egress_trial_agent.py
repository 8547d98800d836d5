"""An agent of a new user's trial of egress = "gateways" (tests/test_egress_trial.py): a
task tries each way out a curious or compromised agent would — a direct connect, a name
looked up (DNS), corral's own control socket, /etc/shadow, another agent's directory and
corral's state directory — and answers what each gave back (the error's own text)."""

import os
import socket

from corral.worker import run


def outcome(fn):
    try:
        return {"ok": fn()}
    except OSError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def connect():
    with socket.create_connection(("192.0.2.1", 443), timeout=5):
        return "connected"


def lookup():
    return sorted({info[4][0] for info in socket.getaddrinfo("example.com", 443)})


def unix(path):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(path)
        said = s.recv(4096)
        return said.decode() if said else "connected"


def read(path):
    with open(path) as f:
        return f.read()


async def handle(t, ctx):
    return {"connect": outcome(connect), "dns": outcome(lookup),
            "control": outcome(lambda: unix(t["control"])),
            "shadow": outcome(lambda: read("/etc/shadow")),
            "other": outcome(lambda: read(t["other"])),
            "state": outcome(lambda: os.listdir(t["state"]))}


if __name__ == "__main__":
    run(handle)
