"""The systemd notify protocol, spoken directly over $NOTIFY_SOCKET (no libsystemd).

A datagram fails with EAGAIN while the socket's queue is full; a state notification
(READY=1, RELOADING=1, STOPPING=1, WATCHDOG=1) must not be lost that way, so messages wait
in order and are retried on a timer, a STATUS-only one replaced by a newer one. STATUS is
sent at most every STATUS_INTERVAL, computed once when sent.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from collections import deque
from collections.abc import Callable

STATUS_INTERVAL = 0.1
RETRY_FIRST = 0.005
RETRY_MAX = 1.0


class Notifier:
    """Does nothing when the daemon was not started by systemd (no NOTIFY_SOCKET)."""

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
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            os.environ.pop(name, None)  # no agent is to take itself for the service
        # (message, is a STATUS-only message) waiting to be sent, oldest first
        self.pending: deque[tuple[bytes, bool]] = deque()
        self.sent = 0
        self.retries = 0
        self.dropped = 0  # only when the socket refuses for good (not EAGAIN)
        self._retry: asyncio.TimerHandle | None = None
        self._retry_delay = RETRY_FIRST
        self._status_source: Callable[[], str] | None = None
        self._status_timer: asyncio.TimerHandle | None = None
        self._status_sent_at = 0.0

    def send(self, **fields: str | int) -> None:
        """Queue one message and send what the socket takes now; the rest is retried."""
        if self.sock is None:
            return
        msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        status_only = list(fields) == ["STATUS"]
        if status_only and self.pending and self.pending[-1][1]:
            self.pending[-1] = (msg, True)  # a newer status replaces one not yet sent
        else:
            self.pending.append((msg, status_only))
        self.flush()

    def flush(self) -> None:
        while self.pending and self.sock is not None and self.address is not None:
            msg, _ = self.pending[0]
            try:
                self.sock.sendto(msg, self.address)
            except BlockingIOError:
                self._schedule_retry()
                return
            except OSError as exc:
                if exc.errno in (errno.ENOBUFS, errno.ENOMEM, errno.EINTR):
                    self._schedule_retry()
                    return
                # no listener any more (ECONNREFUSED, ENOENT): nothing will ever take it
                self.dropped += 1
            else:
                self.sent += 1
            self.pending.popleft()
        self._retry_delay = RETRY_FIRST

    def _schedule_retry(self) -> None:
        if self._retry is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test, a last message at exit): nothing to wait on
            return
        self.retries += 1
        delay, self._retry_delay = self._retry_delay, min(RETRY_MAX, self._retry_delay * 2)
        self._retry = loop.call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self.flush()

    # -- STATUS, coalesced ------------------------------------------------------------------
    def track_status(self, source: Callable[[], str]) -> None:
        """STATUS lines come from `source` (cheap: counters), sent on status_changed()."""
        self._status_source = source

    def status_changed(self) -> None:
        """The status is stale: send it now if none went out in the last STATUS_INTERVAL,
        else once at the end of it."""
        if self.sock is None or self._status_source is None or self._status_timer is not None:
            return
        wait = self._status_sent_at + STATUS_INTERVAL - time.monotonic()
        if wait <= 0:
            self._send_status()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._send_status()
            return
        self._status_timer = loop.call_later(wait, self._send_status)

    def _send_status(self) -> None:
        self._status_timer = None
        if self._status_source is not None:
            self._status_sent_at = time.monotonic()
            self.status(self._status_source())

    # -- the messages -----------------------------------------------------------------------
    def ready(self, status: str) -> None:
        self.send(READY=1, STATUS=status, MAINPID=os.getpid())

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def watchdog(self) -> None:
        if self.watchdog_usec:
            self.send(WATCHDOG=1)

    def reloading(self) -> None:
        self.send(RELOADING=1, MONOTONIC_USEC=int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6))

    def stopping(self, status: str) -> None:
        self.send(STOPPING=1, STATUS=status)

    def close(self) -> None:
        """Last chance for what is still waiting (STOPPING=1), then close."""
        for handle in (self._retry, self._status_timer):
            if handle is not None:
                handle.cancel()
        self._retry = self._status_timer = None
        self.flush()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
