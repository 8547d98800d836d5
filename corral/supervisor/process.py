"""One OS process under corral: spawned capped in its own session, watched by pidfd.

The kernel tells us when the process exits (a pidfd becomes readable), so exits are seen
at once, with no polling and no SIGCHLD races with other child watchers. Signals go
through the pidfd too, so a recycled pid can never be hit. stdin/stdout carry JSON-RPC,
stderr carries the log stream. What the process leaves outside its process group (setsid,
double fork) is containment.py's business: this module asks it for a ticket before the
spawn and tells it about signals and the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import grp
import os
import pwd
import signal
import subprocess
from collections import deque
from collections.abc import Callable
from typing import Any

from ..jsonrpc import DEFAULT_MAX_LINE, ChunkLines, LineBlock, LineProtocol
from .caps import wrap_argv
from .config import ConfigError, Limits
from .containment import TOKEN_VARIABLE, Containment, place

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
# the last stderr lines of a process, kept to explain its exit
STDERR_TAIL = 40
# 1 MiB pipes (the unprivileged maximum, /proc/sys/fs/pipe-max-size): a chatty worker
# blocks less on stderr and corral reads its logs in bigger chunks; a large message on
# stdin/stdout moves in one write and a few reads instead of sixteen 64 KiB handoffs,
# each a wakeup of the other side
PIPE_SIZE = 1 << 20


def resolve_user(user: str | None, group: str | None) -> tuple[int | None, int | None]:
    """(uid, gid) to drop to; refuses when corral is not root and would need to change."""
    if user is None and group is None:
        return None, None
    uid = gid = None
    if user is not None:
        try:
            pw = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
        except KeyError:
            raise ConfigError(f"user: no such user: {user}") from None
        uid, gid = pw.pw_uid, pw.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid if not group.isdigit() else int(group)
        except KeyError:
            raise ConfigError(f"group: no such group: {group}") from None
    if os.geteuid() != 0 and (uid not in (None, os.geteuid()) or gid not in (None, os.getegid())):
        raise ConfigError("user/group: dropping privileges needs the supervisor to run as root")
    return uid, gid


class ChildProcess:
    """A spawned process with line-framed stdout, stderr lines, and an exit future."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        pidfd: int,
        loop: asyncio.AbstractEventLoop,
        containment: Containment,
        token: str,
    ) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.pidfd = pidfd
        self.loop = loop
        self.containment = containment
        self.token = token
        self.exited: asyncio.Future[int] = loop.create_future()
        self.stderr_closed: asyncio.Future[None] = loop.create_future()
        self.stdin: asyncio.WriteTransport | None = None
        self._transports: list[asyncio.BaseTransport] = []
        self.argv0 = ""  # the program asked for (not the caps prologue's shell)
        # this process's own last stderr lines: an exit is explained by them, never by an
        # earlier process's (the tail lives and dies with the process)
        self.stderr_tail: deque[bytes] = deque(maxlen=STDERR_TAIL)
        loop.add_reader(pidfd, self._on_pidfd)

    @classmethod
    async def spawn(
        cls,
        argv: list[str],
        *,
        containment: Containment,
        kind: str,
        name: str,
        index: int,
        env: dict[str, str],
        cwd: str | None,
        limits: Limits,
        uid: int | None,
        gid: int | None,
        on_stdout_line: Callable[[bytes], None],
        on_stdout_eof: Callable[[Exception | None], None],
        on_stderr_lines: Callable[[LineBlock], None],
        on_oversize: Callable[[int, bytes, bytes], None],
        max_line: int = DEFAULT_MAX_LINE,
        stop_timeout: float = 10.0,
    ) -> ChildProcess:
        loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {}
        if uid is not None:
            kwargs["user"] = uid
            kwargs["extra_groups"] = []  # do not leak root's supplementary groups
        if gid is not None:
            kwargs["group"] = gid
        ticket = containment.ticket(kind, name, index, limits)
        try:
            popen = subprocess.Popen(
                wrap_argv(argv, limits, gate=ticket.cgroup is not None),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**env, TOKEN_VARIABLE: ticket.token},
                cwd=cwd,
                start_new_session=True,  # own session and process group: killpg reaches all
                close_fds=True,
                **kwargs,
            )
        except BaseException:
            containment.abandon(ticket)
            raise
        assert popen.stdin and popen.stdout and popen.stderr
        if ticket.cgroup is not None:
            # the child waits at the gate of its prologue: place it, then let it go
            try:
                place(ticket.cgroup, popen.pid)
                os.write(popen.stdin.fileno(), b"\n")
            except OSError as exc:
                popen.kill()
                popen.wait()
                for f in (popen.stdin, popen.stdout, popen.stderr):
                    f.close()
                containment.abandon(ticket)
                raise OSError(exc.errno, f"cannot place the process in cgroup "
                                         f"{ticket.cgroup}: {exc.strerror}") from None
        containment.started(ticket, popen.pid, kind=kind, name=name, index=index,
                            stop_timeout=stop_timeout)
        for pipe in (popen.stdin, popen.stdout, popen.stderr):
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(pipe.fileno(), F_SETPIPE_SZ, PIPE_SIZE)
        pidfd = -1
        try:
            pidfd = os.pidfd_open(popen.pid)
            child = cls(popen, pidfd, loop, containment, ticket.token)
            child.argv0 = argv[0]
        except BaseException:  # e.g. out of fds: the process must not run on, unwatched
            if pidfd >= 0:
                os.close(pidfd)
            popen.kill()
            popen.wait()
            for pipe in (popen.stdin, popen.stdout, popen.stderr):
                pipe.close()
            containment.ended(ticket.token)
            raise
        try:
            stdin_t, _ = await loop.connect_write_pipe(asyncio.Protocol, popen.stdin)
            child.stdin = stdin_t  # type: ignore[assignment]
            out_t, _ = await loop.connect_read_pipe(
                lambda: LineProtocol(
                    on_stdout_line, on_stdout_eof, max_line=max_line, on_oversize=on_oversize
                ),
                popen.stdout,
            )

            def stderr_eof(exc: Exception | None) -> None:
                if not child.stderr_closed.done():
                    child.stderr_closed.set_result(None)

            def stderr_lines(lines: LineBlock) -> None:
                child.stderr_tail.extend(lines.last(STDERR_TAIL))
                on_stderr_lines(lines)

            # stderr lines are logs; a 16 MiB cap keeps a runaway line from eating memory
            err_t, _ = await loop.connect_read_pipe(
                lambda: ChunkLines(stderr_lines, stderr_eof, max_line=max_line),
                popen.stderr,
            )
        except BaseException:
            child.kill_group(signal.SIGKILL)
            popen.wait()
            child.close()
            containment.ended(child.token)
            raise
        child._transports = [stdin_t, out_t, err_t]
        return child

    def _on_pidfd(self) -> None:
        rc = self.popen.poll()
        if rc is None:  # pragma: no cover - pidfd readable means exited
            return
        self.loop.remove_reader(self.pidfd)
        os.close(self.pidfd)
        self.pidfd = -1
        if not self.exited.done():
            self.exited.set_result(rc)

    @property
    def alive(self) -> bool:
        return not self.exited.done()

    def write(self, data: bytes) -> None:
        if self.stdin is not None and not self.stdin.is_closing():
            self.stdin.write(data)

    def close_stdin(self) -> None:
        if self.stdin is not None and not self.stdin.is_closing():
            self.stdin.close()

    def signal(self, sig: int) -> None:
        """Signal the process itself (not its group)."""
        if self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, sig)

    def kill_group(self, sig: int) -> None:
        """Signal the whole process group, and what left it (escapees, the cgroup)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
        self.containment.signal(self.token, sig)

    def close(self) -> None:
        """Release pipes and the pidfd; call once the process is gone."""
        for t in self._transports:
            t.close()
        if self.pidfd >= 0:
            self.loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1
