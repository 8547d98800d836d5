"""`corral shutdown`: ask the daemon to stop, and wait until it is gone: a pidfd opened on
its socket peer's pid (SO_PEERCRED) while the connection holds it alive, so that the
wait is for that process and no other that reuses its pid."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import time

import click

from .. import methods as m
from .client import Client, Unreachable


def wait_gone(pid: int, pidfd: int) -> None:
    """Until process `pid` has exited (its pidfd readable; without one, looked at every
    tenth of a second)."""
    if pidfd >= 0:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while not poller.poll():
            pass
        return
    while True:  # no pidfd (a kernel before 5.3)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        time.sleep(0.1)


def shutdown(client: Client, *, now: bool, wait: bool) -> None:
    with client:
        creds = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                       struct.calcsize("3i"))
        pid = int(struct.unpack("3i", creds)[0])
        pidfd = -1
        if wait:
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(pid)
        try:
            res: m.Stopping = client.ask(m.DaemonShutdown(wait=wait, now=now))
        except Unreachable:
            # it went before it could answer: what it drained is in its log
            res = m.Stopping(stopping=True)
    try:
        if not wait:
            click.echo("corral daemon is shutting down")
            return
        d = res.drained
        if d is not None and not d.tasks:
            click.echo("no task was running" + (f"; {d.waiting} queued left for the next "
                                                "daemon" if d.waiting else "")
                       + (f"; {d.suspended} suspended (waiting for a person) kept for the "
                          "next daemon" if d.suspended else ""))
        elif d is not None:
            click.echo(f"drained in {d.seconds:.1f} s: {d.summary()}")
            for t in d.tasks:
                shown = {"queued": "handed to the next daemon",
                         "running": "still running: ended by the stop"}.get(t.status,
                                                                            t.status)
                click.echo(f"  {t.task_id}  {t.agent}  {shown}")
        click.echo(f"waiting for the daemon (pid {pid}) to stop its agents ...")
        wait_gone(pid, pidfd)
        click.echo(f"corral daemon stopped (pid {pid})")
    finally:
        if pidfd >= 0:
            os.close(pidfd)
