"""The systemd notify protocol, spoken directly over $NOTIFY_SOCKET (no libsystemd)."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends READY=1, WATCHDOG=1, STATUS=..., STOPPING=1, RELOADING=1 datagrams.

    Does nothing when the daemon was not started by systemd (no NOTIFY_SOCKET)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        self.sock: socket.socket | None = None
        if addr:
            # an abstract socket is written with a leading '@'
            self.address = "\0" + addr[1:] if addr.startswith("@") else addr
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.setblocking(False)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_usec = int(usec) if usec.isdigit() and (
            not pid or pid == str(os.getpid())) else 0
        # do not let agents think they are the service
        os.environ.pop("NOTIFY_SOCKET", None)
        os.environ.pop("WATCHDOG_USEC", None)
        os.environ.pop("WATCHDOG_PID", None)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, **fields: str | int) -> bool:
        if self.sock is None or self.address is None:
            return False
        msg = "\n".join(f"{k}={v}" for k, v in fields.items())
        try:
            self.sock.sendto(msg.encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> None:
        self.send(READY=1, STATUS=status, MAINPID=os.getpid())

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def watchdog(self) -> None:
        if self.watchdog_usec:
            self.send(WATCHDOG=1)

    def reloading(self) -> None:
        usec = int(__import__("time").clock_gettime(__import__("time").CLOCK_MONOTONIC) * 1e6)
        self.send(RELOADING=1, MONOTONIC_USEC=usec)

    def stopping(self, status: str) -> None:
        self.send(STOPPING=1, STATUS=status)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
