"""One OS process under corral: spawned capped in its own session, watched by pidfd (exits
seen at once, no SIGCHLD races; signals through the pidfd never hit a recycled pid).
stdin/stdout carry JSON-RPC, stderr the log; what the process leaves outside its group is
containment.py's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import grp
import io
import os
import pwd
import signal
import subprocess
import termios
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar, cast

from ..cork import Cork, Parts
from ..jsonrpc import DEFAULT_MAX_LINE, ChunkLines, LineBlock, LineProtocol, Peer
from ..timeouts import waited
from . import pipeends
from .caps import wrap_argv
from .config import ConfigError, Limits, passwd_of, resolved_user
from .containment import TOKEN_VARIABLE, Containment, place
from .egressdoors import spawning_in
from .pacing import pacer

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
STDERR_TAIL = 40  # the last stderr lines of a process, kept to explain its exit
# an exit is explained by the stderr lines written this shortly before it: an older line
# is about something else (a task's error printed long before a kill from outside), and
# quoting it would send the on-call after the wrong cause
STDERR_RECENT = 5.0
# 1 MiB pipes (the unprivileged maximum): a large message moves in one write and a few
# reads instead of sixteen 64 KiB handoffs, each a wakeup of the other side
PIPE_SIZE = 1 << 20
# What corral keeps unwritten toward a process's stdin when it does not read it: over
# STDIN_HIGH the process is "full" until it has read all but STDIN_LOW, and its peer
# takes none of its requests meanwhile (what corral sends unasked is bounded where it is
# sent)
STDIN_HIGH = 1024 * 1024
STDIN_LOW = 256 * 1024
# how long a reap waits for stdout and stderr to reach EOF once nothing is left in them
# (a grandchild that escaped the kill may hold them open), and at most while the loop is
# still behind what the process wrote before its exit (seconds on a loaded host)
OUTPUT_GRACE = 1.0
OUTPUT_MOST = 30.0
T = TypeVar("T")
STATUS_LOST = 255  # a zygote's child's status when the zygote did not tell it
STATUS_GRACE = 2.0


class Launch(NamedTuple):
    """A process as it is to be started, for a replica or the commands run for it."""

    argv: list[str]  # wrapped in the sandbox, where there is one
    env: dict[str, str]
    cwd: str | None
    limits: Limits
    uid: int | None
    gid: int | None


def as_user(env: dict[str, str], uid: int | None) -> dict[str, str]:
    """`env` naming the user the process runs as (`uid`; None: corral's own), not root."""
    if uid is not None:
        pw = pwd.getpwuid(uid)
        env.setdefault("HOME", pw.pw_dir)
        env["USER"] = env["LOGNAME"] = pw.pw_name
    return env


def run_as(uid: int | None, gid: int | None) -> dict[str, Any]:
    """Popen's keywords for `uid`/`gid` (None: corral's own), not in root's other groups."""
    return {"user": uid, "group": gid, "extra_groups": None if uid is None else []}


def resolve_user(user: str | None, group: str | None) -> tuple[int | None, int | None]:
    """(uid, gid) to drop to; refuses when corral is not root and would need to change."""
    if user is None and group is None:
        return None, None
    user = resolved_user(user)
    uid = gid = None
    if user is not None:
        pw = passwd_of(user)
        if pw is None:
            raise ConfigError(f"user: no such user: {user}")
        uid, gid = pw.pw_uid, pw.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid if not group.isdigit() else int(group)
        except (KeyError, ValueError):  # (a NUL, a digit not ASCII)
            raise ConfigError(f"group: no such group: {group}") from None
    if os.geteuid() != 0 and (uid not in (None, os.geteuid()) or gid not in (None, os.getegid())):
        raise ConfigError("user/group: dropping privileges needs the supervisor to run as root")
    return uid, gid


# Spawns (~20 ms of fork/exec) run on a few threads, never on the loop: _posixsubprocess
# runs no Python between fork and exec, and the pipes are close-on-exec, so one thread's
# child never inherits another's. Containment's bookkeeping stays on the loop.
SPAWN_THREADS = 4
_spawn_pool: ThreadPoolExecutor | None = None


def spawn_pool() -> ThreadPoolExecutor:
    global _spawn_pool
    if _spawn_pool is None:
        _spawn_pool = ThreadPoolExecutor(SPAWN_THREADS, thread_name_prefix="corral-spawn")
    return _spawn_pool


# what the spawn threads still make for a caller cancelled meanwhile (weak: a test's loop
# closed under one leaves it for nobody)
_abandoned: weakref.WeakSet[asyncio.Future[Any]] = weakref.WeakSet()


async def off_loop(fn: Callable[[], T], undo: Callable[[T], None]) -> T:
    """Run `fn` on the spawn threads; if the caller is cancelled meanwhile, `undo` what it
    made once it is made (a process started for nobody is killed, not leaked)."""
    fut = asyncio.get_running_loop().run_in_executor(spawn_pool(), fn)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        def made(f: asyncio.Future[T]) -> None:
            _abandoned.discard(f)
            if not f.cancelled() and f.exception() is None:
                undo(f.result())

        _abandoned.add(fut)
        fut.add_done_callback(made)
        raise


async def abandoned_spawns() -> None:
    """Until every fork this loop's cancelled callers left on the spawn threads has ended
    and been undone: a fork/exec in flight holds its pipes (a closing supervisor's checks,
    cancelled mid-spawn, would leave them open past its close)."""
    loop = asyncio.get_running_loop()
    while mine := [f for f in _abandoned if f.get_loop() is loop]:
        await asyncio.wait(mine)


def set_pipe_sizes(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)


def _popen(argv: list[str], env: dict[str, str], cwd: str | None, cgroup: str | None,
           kwargs: dict[str, Any]) -> tuple[subprocess.Popen[bytes], int]:
    """On a spawn thread: fork/exec, place in the cgroup and open the gate, watch."""
    popen = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,  # own session and process group: killpg reaches all
        close_fds=True,
        **kwargs,
    )
    assert popen.stdin and popen.stdout and popen.stderr
    if cgroup is not None:
        # the child waits at the gate of its prologue: place it, then let it go
        try:
            place(cgroup, popen.pid)
            os.write(popen.stdin.fileno(), b"\n")
        except OSError as exc:
            _kill_popen((popen, -1))
            raise OSError(exc.errno, f"cannot place the process in cgroup "
                                     f"{cgroup}: {exc.strerror}") from None
    set_pipe_sizes([popen.stdin.fileno(), popen.stdout.fileno(), popen.stderr.fileno()])
    try:
        return popen, os.pidfd_open(popen.pid)
    except BaseException:  # e.g. out of fds: the process must not run on, unwatched
        _kill_popen((popen, -1))
        raise


def _kill_popen(made: tuple[subprocess.Popen[bytes], int]) -> None:
    popen, pidfd = made
    popen.kill()
    popen.wait()
    for f in (popen.stdin, popen.stdout, popen.stderr):
        if f is not None:
            f.close()
    if pidfd >= 0:
        os.close(pidfd)


def _settle(fut: asyncio.Future[int], value: int) -> None:
    if not fut.done():
        fut.set_result(value)


class ChildProcess(asyncio.Protocol):
    """A spawned process with line-framed stdout, stderr lines, and an exit future, whose
    status is `reap`'s (our child) or, for a zygote's child, `status` (the zygote's). It is
    its stdin pipe's protocol too (no object of its own per process)."""

    def __init__(
        self,
        pid: int,
        pidfd: int,
        loop: asyncio.AbstractEventLoop,
        containment: Containment,
        token: str,
        *,
        reap: Callable[[], int | None] | None = None,
        status: asyncio.Future[int] | None = None,
    ) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.loop = loop
        self.containment = containment
        self.token = token
        self._reap = reap
        self._status = status
        self.exited: asyncio.Future[int] = loop.create_future()
        self.stdin: asyncio.WriteTransport | None = None
        self._stdout: asyncio.BaseTransport | None = None
        self._stderr: asyncio.BaseTransport | None = None
        self._on_stderr_lines: Callable[[LineBlock], None] | None = None
        self.reader: LineProtocol | None = None  # stdout's
        # takes none of the process's requests while its stdin is full (set by the owner)
        self.peer: Peer | None = None
        self.stdin_full = False  # the stdin backlog went over STDIN_HIGH, not yet down
        # what lives as long as the process is kept to plain attributes; the rest is made
        # when first needed
        # stdout's and stderr's fds while open (-2 at EOF: the number may be another's then)
        self._pipe_fds = [-1, -1]
        self._output_closed: asyncio.Future[None] | None = None
        self.argv0 = ""  # the program asked for (not the caps prologue's shell)
        # the tail lives and dies with the process: an exit is never explained by an
        # earlier process's lines
        self.stderr_tail: deque[bytes] | None = None
        self.stderr_at = 0.0  # time.monotonic() of the tail's last line
        self._stdin_cork = Cork(loop, self._write_stdin)  # a burst of tasks wakes it twice
        loop.add_reader(pidfd, self._on_pidfd)

    @classmethod
    async def spawn(
        cls,
        launch: Launch,
        *,
        containment: Containment,
        kind: str,
        name: str,
        index: int,
        stop_timeout: float = 10.0,
        netns: int | None = None,
        passed: int | None = None,
        **channel: Any,
    ) -> ChildProcess:
        """A cold start: fork/exec on the spawn threads, caps by the shell prologue;
        `netns`: made in that network namespace (egressdoors.py); `passed`: a descriptor
        of the caller's the process is given at the same number (an egress sandbox's
        seccomp filter, which bwrap reads)."""
        argv, env, cwd, limits, uid, gid = launch
        kwargs = {**run_as(uid, gid), "pass_fds": () if passed is None else (passed,)}
        ticket = containment.ticket(kind, name, index, limits)
        command = wrap_argv(argv, limits, gate=ticket.cgroup is not None)
        full_env = {**env, TOKEN_VARIABLE: ticket.token}
        try:
            def fork() -> tuple[subprocess.Popen[bytes], int]:
                return _popen(command, full_env, cwd, ticket.cgroup, kwargs)

            # an egress sandbox forked from this (the main) thread: egressdoors.spawning_in
            popen, pidfd = await off_loop(fork, _kill_popen) if netns is None else \
                spawning_in(netns, fork)
        except BaseException:
            containment.abandon(ticket)
            raise
        containment.started(ticket, popen.pid, kind=kind, name=name, index=index,
                            stop_timeout=stop_timeout)
        child = cls(popen.pid, pidfd, asyncio.get_running_loop(), containment, ticket.token,
                    reap=popen.poll)
        child.argv0 = argv[0]
        assert popen.stdin and popen.stdout and popen.stderr
        # the transports take the raw pipes: Popen's buffered wrappers would be three
        # more objects held (and walked by the collector) as long as the process runs
        pipes = [cast(io.BufferedIOBase, f).detach()
                 for f in (popen.stdin, popen.stdout, popen.stderr)]
        popen.stdin = popen.stdout = popen.stderr = None
        try:
            await child.attach(*pipes, **channel)
        except BaseException:
            popen.wait()
            child.close()
            containment.ended(child.token)
            raise
        return child

    async def attach(
        self,
        stdin: Any,
        stdout: Any,
        stderr: Any,
        *,
        on_stdout_line: Callable[[bytes], None] | None = None,
        on_stderr_lines: Callable[[LineBlock], None],
        on_oversize: Callable[[int, bytes, bytes], None],
        on_stdout_lines: Callable[[LineBlock], None] | None = None,
        on_attach: Callable[[ChildProcess], None] | None = None,
        max_line: int = DEFAULT_MAX_LINE,
        on_stdout_end: Callable[[], None] | None = None,
    ) -> None:
        """Connect our ends of the process's stdio pipes to the loop; on failure the
        process is killed and the pipes no transport took are closed. stdout is messages
        (`on_stdout_line`) or, for a plain program, a log (`on_stdout_lines`). `on_attach`
        is told of the process before its first line can be read (its lines name its pid)."""
        if on_attach is not None:
            on_attach(self)
        loop = self.loop
        self._on_stderr_lines = on_stderr_lines
        pipes = [stdin, stdout, stderr]  # each as given to its transport, once it is

        def given(i: int) -> Any:
            pipes[i] = pipeends.for_transport(loop, pipes[i])
            return pipes[i]

        try:
            if stdin is not None:  # (None: a plain program adopted, its stdin closed)
                stdin = given(0)
                stdin_t, _ = await loop.connect_write_pipe(lambda: self, stdin)
                stdin_t.set_write_buffer_limits(high=STDIN_HIGH, low=STDIN_LOW)  # type: ignore[attr-defined]
                self.stdin = stdin_t  # type: ignore[assignment]
            stdout = given(1)
            if on_stdout_lines is not None:
                self._stdout, _ = await loop.connect_read_pipe(
                    lambda: ChunkLines(on_stdout_lines, self._stdout_eof, max_line=max_line),
                    stdout)
            else:
                assert on_stdout_line is not None
                self._stdout, self.reader = await loop.connect_read_pipe(
                    lambda: LineProtocol(
                        on_stdout_line, self._stdout_eof, max_line=max_line,
                        on_oversize=on_oversize, on_lines_end=on_stdout_end,
                        name=f"stdout of pid {self.pid}"),
                    stdout,
                )
            # stderr lines are logs; a 16 MiB cap keeps a runaway line from eating memory
            stderr = given(2)
            self._stderr, _ = await loop.connect_read_pipe(
                lambda: ChunkLines(self._stderr_lines, self._stderr_eof, max_line=max_line),
                stderr,
            )
            for i, pipe in enumerate((stdout, stderr)):
                if self._pipe_fds[i] == -1:  # (-2: at EOF already, its fd closed)
                    self._pipe_fds[i] = pipe.fileno()
        except BaseException:
            self.kill_group(signal.SIGKILL)
            # a pipe a transport took is the transport's to close (close() does it, and
            # its fd is freed a turn later); closing that file here too would free the fd
            # number at once, for the transport to close someone else's a turn later
            for pipe, transport in zip(pipes, (self.stdin, self._stdout, self._stderr),
                                       strict=True):
                if transport is None and pipe is not None:
                    pipeends.discard(pipe)
            raise

    # the stdin pipe's protocol: its write backlog crossed a mark
    def pause_writing(self) -> None:
        self._stdin_full(True)

    def resume_writing(self) -> None:
        self._stdin_full(False)

    def connection_lost(self, exc: Exception | None) -> None:
        # nothing more is buffered toward it: what it still writes is read to the end
        self._stdin_full(False)

    def _stdin_full(self, full: bool) -> None:
        if full == self.stdin_full:
            return
        self.stdin_full = full
        if self.peer is not None:
            self.peer.requests_paused = full
            if not full:
                self.peer.release()

    @property
    def stdin_backlog(self) -> int:
        t = self.stdin
        return 0 if t is None else t.get_write_buffer_size()

    def recent_stderr(self) -> list[str]:
        """The tail of stderr if its last line came within STDERR_RECENT, else nothing:
        what may explain an exit."""
        tail = self.stderr_tail
        if tail is None or time.monotonic() - self.stderr_at > STDERR_RECENT:
            return []
        return [b.decode("utf-8", "replace") for b in tail]

    def _stderr_lines(self, lines: LineBlock) -> None:
        tail = self.stderr_tail
        if tail is None:
            tail = self.stderr_tail = deque(maxlen=STDERR_TAIL)
        tail.extend(lines.last(STDERR_TAIL))
        self.stderr_at = time.monotonic()
        assert self._on_stderr_lines is not None
        self._on_stderr_lines(lines)

    def _stdout_eof(self, exc: Exception | None) -> None:
        self._pipe_fds[0] = -2
        self._pipe_at_eof()

    def _stderr_eof(self, exc: Exception | None) -> None:
        self._pipe_fds[1] = -2
        self._pipe_at_eof()

    def _unread(self) -> int:
        """Bytes waiting in its stdout and stderr pipes."""
        total, buf = 0, bytearray(4)
        for fd in (fd for fd in self._pipe_fds if fd >= 0):
            with contextlib.suppress(OSError):
                fcntl.ioctl(fd, termios.FIONREAD, buf)
                total += int.from_bytes(buf, "little")
        return total

    async def output_read(self) -> bool:
        """Wait for stdout and stderr to reach EOF after the exit, so that what the
        process wrote is read, stdout held back no more (its peer `exited`: its requests
        not run, the answers behind them read): as long as its pipes still hold some
        (OUTPUT_MOST at most), then OUTPUT_GRACE; False if they did not."""
        deadline = self.loop.time() + OUTPUT_MOST
        if self.peer is not None:
            self.peer.exited()
        if self.reader is not None:
            self.reader.resume()
        fut = self.output_closed
        while not fut.done():
            with contextlib.suppress(TimeoutError):
                await waited(fut, OUTPUT_GRACE)
            if not fut.done() and (self._unread() == 0 or self.loop.time() >= deadline):
                return False
        return True

    def _pipe_at_eof(self) -> None:
        fut = self._output_closed
        if self.output_done and fut is not None and not fut.done():
            fut.set_result(None)

    @property
    def output_done(self) -> bool:
        return self._pipe_fds[0] == self._pipe_fds[1] == -2

    @property
    def output_closed(self) -> asyncio.Future[None]:
        """Done once stdout and stderr have reached EOF."""
        fut = self._output_closed
        if fut is None:
            fut = self._output_closed = self.loop.create_future()
            if self.output_done:
                fut.set_result(None)
        return fut

    def _on_pidfd(self) -> None:
        """The process has exited. The pidfd is done with at once (it would stay readable);
        the exit itself (the replica's reap, events, restart decision) waits its turn in
        the loop's paced work: a mass stop makes a thousand pidfds readable in one poll."""
        if self._status is not None:  # a zygote's child
            self._close_pidfd()
            with contextlib.suppress(ChildProcessError):
                # its zygote died first: corral, the subreaper, inherited it
                pid, wstatus = os.waitpid(self.pid, os.WNOHANG)
                if pid == self.pid:
                    _settle(self._status, os.waitstatus_to_exitcode(wstatus))
            self._status.add_done_callback(self._exited_with)
            # a zygote that cannot say (stopped, hung) must not keep the exit unseen
            self.loop.call_later(STATUS_GRACE, _settle, self._status, STATUS_LOST)
            return
        assert self._reap is not None
        rc = self._reap()
        if rc is None:  # pragma: no cover - pidfd readable means exited
            return
        self._close_pidfd()
        pacer(self.loop).submit(_settle, self.exited, rc)

    def _close_pidfd(self) -> None:
        if self.pidfd >= 0:
            self.loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1

    def _exited_with(self, status: asyncio.Future[int]) -> None:
        pacer(self.loop).submit(_settle, self.exited, status.result())

    @property
    def alive(self) -> bool:
        return not self.exited.done()

    async def exited_within(self, timeout: float) -> bool:
        """Whether the process exited within `timeout` (never cancels `exited`)."""
        if not self.exited.done():  # wait_for would still take a turn, a timer and a waiter
            with contextlib.suppress(TimeoutError):
                await waited(self.exited, timeout)
        return self.exited.done()

    def fds(self) -> list[int] | None:
        """Our ends of its stdin, stdout and stderr (handed over by `corral upgrade`)."""
        pipes = [t.get_extra_info("pipe") if t is not None else None
                 for t in (self.stdin, self._stdout, self._stderr)]
        return [p.fileno() for p in pipes if p is not None] if None not in pipes else None

    def output_fds(self) -> list[int]:
        """Our ends of its stdout and stderr alone (a plain program's stdin is closed):
        -1 for one read to its end already (the program closed it)."""
        out = []
        for t in (self._stdout, self._stderr):
            pipe = t.get_extra_info("pipe") if t is not None and not t.is_closing() else None
            out.append(pipe.fileno() if pipe is not None and not pipe.closed else -1)
        return out

    # stdin is written through a Cork (cork.py): a burst of tasks wakes the worker twice,
    # not once a message
    def write(self, data: bytes) -> None:
        if self.stdin is not None and not self.stdin.is_closing():
            self._stdin_cork.write_one(data)

    def write_parts(self, parts: list[bytes | memoryview] | tuple[bytes, ...]) -> None:
        """The pieces of one message in one writev, none copied into another."""
        if self.stdin is not None and not self.stdin.is_closing():
            self._stdin_cork.write(parts)

    def _write_stdin(self, parts: Parts) -> None:
        if self.stdin is not None and not self.stdin.is_closing():
            self.stdin.writelines(parts)

    def close_stdin(self) -> None:
        self._stdin_cork.flush()
        if self.stdin is not None and not self.stdin.is_closing():
            self.stdin.close()

    def signal(self, sig: int) -> None:
        if self.pidfd >= 0:
            with contextlib.suppress(OSError):  # gone already
                signal.pidfd_send_signal(self.pidfd, sig)

    def kill_group(self, sig: int) -> None:
        """Signal the whole process group, and what left it (escapees, the cgroup)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
        self.containment.signal(self.token, sig)

    def close(self) -> None:
        """Release pipes and the pidfd; call once the process is gone."""
        # lines held unread are nobody's now (the next life's peer must never see them)
        self.reader = self.peer = None
        for t in (self.stdin, self._stdout, self._stderr):
            if t is not None:
                t.close()
        self._close_pidfd()
