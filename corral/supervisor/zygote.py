"""Warm starts: corral's side of the zygotes (corral/worker/zygote.py), one per
(interpreter, preload set, user, group, PYTHONPATH), giving back a ChildProcess a cold start
cannot be told from. Anything wrong is `ZygoteUnavailable` (the replica starts cold); a
zygote that failed to start is not tried again for RETRY_AFTER seconds.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from ..timeouts import waited
from .caps import rlimits
from .config import Limits
from .containment import TOKEN_VARIABLE, Containment, place
from .process import STATUS_LOST, ChildProcess, off_loop, run_as, set_pipe_sizes

log = logging.getLogger("corral.zygote")
PROGRAM = str(Path(__file__).resolve().parent.parent / "worker" / "zygote.py")
# the program is handed to the interpreter on its stdin (`python -`), read here, as root:
# a zygote's user need not be able to read corral's installation (a checkout under a 0700
# /root), only the SDK on the agent's own path
SOURCE = Path(PROGRAM).read_bytes()
if len(SOURCE) >= 65536:  # pragma: no cover - a pipe's buffer on Linux, written unread
    raise RuntimeError(f"{PROGRAM} outgrew a pipe's buffer: hand it over another way")
START_TIMEOUT = 60.0  # heavy preloads (an LLM framework) take seconds
SPAWN_TIMEOUT = 10.0
RETRY_AFTER = 30.0
MAX_MESSAGE = 1 << 20


class ExitStatuses:
    """The exit statuses a zygote tells of its children, which may come before the spawn
    read the child's pid: whichever side comes first makes the entry, the other removes
    it. No callback per child (a closure held as long as the child runs)."""

    def __init__(self) -> None:
        self._table: dict[int, asyncio.Future[int]] = {}

    def expect(self, pid: int) -> asyncio.Future[int]:
        fut = self._table.get(pid)
        if fut is None:
            fut = self._table[pid] = asyncio.get_running_loop().create_future()
        elif fut.done():
            del self._table[pid]
        return fut

    def told(self, pid: int, status: int) -> None:
        fut = self._table.pop(pid, None)
        if fut is None or fut.done():  # first: kept for the spawn still to read its pid
            fut = self._table[pid] = asyncio.get_running_loop().create_future()
        fut.set_result(status)

    def lose_all(self) -> None:
        for fut in self._table.values():
            if not fut.done():
                fut.set_result(STATUS_LOST)
        self._table.clear()

    def pids(self) -> set[int]:
        return set(self._table)


class ZygoteUnavailable(Exception):
    """No warm start this time; the message says why (logged, then a cold start)."""


class Key(msgspec.Struct, frozen=True):
    interpreter: str
    preload: tuple[str, ...]
    uid: int | None
    gid: int | None
    pythonpath: str | None


def warm_argv(argv: list[str], env: dict[str, str]) -> str:
    """The interpreter of a command a zygote can run: `PYTHON script.py ...` or
    `PYTHON -m module ...`; raises ZygoteUnavailable for anything else."""
    if len(argv) < 2 or (argv[1].startswith("-") and argv[1] != "-m") or (
            argv[1] == "-m" and len(argv) < 3):
        raise ZygoteUnavailable(
            "command is not `PYTHON script.py ...` or `PYTHON -m module ...`")
    interpreter = shutil.which(argv[0], path=env.get("PATH"))
    if interpreter is None:
        raise ZygoteUnavailable(f"interpreter not found: {argv[0]}")
    # the path as found, not resolved: a venv's python is a symlink that selects the venv
    return os.path.abspath(interpreter)


def warm_pythonpath(env: dict[str, str], cwd: str | None) -> str | None:
    """The agent's PYTHONPATH with each relative entry made its cwd's, as a cold start
    reads it: the zygote runs at /, where its Python would take `.` for the root, and
    an empty entry (the cwd, to Python's startup) for / too. An empty PYTHONPATH names
    no entry."""
    value = env.get("PYTHONPATH")
    if not value:
        return value
    base = cwd or os.getcwd()
    return os.pathsep.join(os.path.join(base, p) if p else base
                           for p in value.split(os.pathsep))


class Zygote:
    def __init__(self, key: Key, env: dict[str, str], containment: Containment,
                 on_death: Callable[[Zygote], None] | None = None) -> None:
        self.key = key
        self.env = env
        self.containment = containment
        self.token: str | None = None
        self.on_death = on_death
        self.pid: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.dead: str | None = None  # why, once it is gone
        self._next = 0
        self._spawns: dict[int, asyncio.Future[int]] = {}
        self.statuses = ExitStatuses()
        self.spawned = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {**self.env, "CORRAL_ZYGOTE_FD": str(theirs.fileno())}
        argv = [self.key.interpreter, "-", *self.key.preload]

        def popen() -> subprocess.Popen[bytes]:
            # the program whole in the pipe's buffer before the interpreter reads it
            # (smaller than a pipe holds: no writer to wait for)
            program, feed = os.pipe()
            try:
                with open(feed, "wb", closefd=True) as f:
                    f.write(SOURCE)
                return subprocess.Popen(
                    argv, stdin=program, stdout=subprocess.DEVNULL, env=env,
                    cwd="/", start_new_session=True, close_fds=True,
                    pass_fds=[theirs.fileno()], **run_as(self.key.uid, self.key.gid))
            finally:
                os.close(program)

        # tracked like every process corral starts: recorded (a later daemon stops it
        # after a crash), never taken for an orphan, placed in a cgroup of its own
        Zygotes.seq += 1
        ticket = self.containment.ticket("zygote", "zygote", Zygotes.seq, Limits())
        env[TOKEN_VARIABLE] = ticket.token
        try:
            self.proc = await off_loop(popen, _kill)
            if ticket.cgroup is not None:
                place(ticket.cgroup, self.proc.pid)
        except OSError as exc:
            ours.close()
            if self.proc is not None:
                _kill(self.proc)
            self.containment.abandon(ticket)
            raise ZygoteUnavailable(f"zygote could not be started: {exc}") from None
        finally:
            theirs.close()
        self.containment.started(ticket, self.proc.pid, kind="zygote", name="zygote",
                                 index=Zygotes.seq, stop_timeout=1.0)
        self.token = ticket.token
        self.sock = ours
        ours.setblocking(False)
        loop.add_reader(ours.fileno(), self._readable)
        try:
            self.pid = await waited(self.ready, START_TIMEOUT)
        except TimeoutError:
            self._die(f"zygote did not get ready within {START_TIMEOUT:g} s")
        if self.dead is not None:
            raise ZygoteUnavailable(self.dead)

    def _readable(self) -> None:
        assert self.sock is not None
        while True:
            try:
                data = self.sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return
            except ConnectionResetError:  # it died with our request unread
                data = b""
            except OSError as exc:
                self._die(f"zygote connection failed: {exc}")
                return
            if not data:
                self._die("zygote exited")
                return
            self._message(msgspec.json.decode(data))

    def _message(self, msg: dict[str, Any]) -> None:
        if "ready" in msg:
            if not self.ready.done():
                self.ready.set_result(int(msg["ready"]))
        elif "error" in msg:
            self._die(str(msg["error"]))
        elif "spawned" in msg:
            fut = self._spawns.pop(int(msg["spawned"]), None)
            pid = int(msg["pid"])
            if fut is not None and not fut.done():
                fut.set_result(pid)
            else:  # given up before its pid came (cancelled): it must not run unwatched
                self._given_up(pid)
        elif "failed" in msg:
            fut = self._spawns.pop(int(msg["failed"]), None)
            if fut is not None and not fut.done():
                fut.set_exception(ZygoteUnavailable(f"zygote could not fork: {msg['error']}"))
        elif "exit" in msg:
            self.statuses.told(int(msg["exit"]), int(msg["status"]))

    def _given_up(self, pid: int) -> None:
        """A child forked for a spawn given up: killed, lest it run unwatched (past its
        gate too: its stdin is closed), unless its exit was told already (its pid may be
        another process's by now); its exit, told or to be, leaves nothing behind."""
        if not self.statuses.expect(pid).done():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def _die(self, reason: str) -> None:
        if self.dead is not None:
            return
        self.dead = reason
        if not self.ready.done():
            self.ready.set_exception(ZygoteUnavailable(reason))
            self.ready.exception()
        for fut in self._spawns.values():
            if not fut.done():
                fut.set_exception(ZygoteUnavailable(f"zygote died mid-spawn: {reason}"))
        self._spawns.clear()
        # children still running outlive the zygote; their exit status is lost with it
        self.statuses.lose_all()
        was_ready = self.ready.done() and not self.ready.exception()
        self.close()
        if was_ready and self.on_death is not None:
            self.on_death(self)

    async def spawn(self, argv: list[str], *, env: dict[str, str], cwd: str | None,
                    limits: Limits, containment: Containment, kind: str, name: str,
                    index: int, stop_timeout: float = 10.0, **channel: Any) -> ChildProcess:
        """Fork an agent; containment sees it as it sees a cold start (token, record,
        cgroup placed through the same gate: the child waits for a line on stdin)."""
        if self.dead is not None or self.sock is None:
            raise ZygoteUnavailable(self.dead or "zygote not started")
        loop = asyncio.get_running_loop()
        ticket = containment.ticket(kind, name, index, limits)
        # our ends are close-on-exec (os.pipe), the child's are passed as SCM_RIGHTS
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        ours = [stdin_w, stdout_r, stderr_r]
        theirs = [stdin_r, stdout_w, stderr_w]
        self._next += 1
        rid = self._next
        pid: int | None = None
        fut: asyncio.Future[int] = loop.create_future()
        self._spawns[rid] = fut
        request = {"id": rid, "argv": argv, "env": {**env, TOKEN_VARIABLE: ticket.token},
                   "cwd": cwd or os.getcwd(), "rlimits": rlimits(limits),
                   "nice": limits.nice, "gate": ticket.cgroup is not None}
        try:
            try:
                self.sock.sendmsg([msgspec.json.encode(request)],
                                  [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                    array.array("i", theirs).tobytes())])
            except OSError as exc:
                raise ZygoteUnavailable(f"zygote did not take the request: {exc}") from None
            finally:
                for fd in theirs:
                    os.close(fd)
            try:
                pid = await waited(fut, SPAWN_TIMEOUT)
            except TimeoutError:
                self._die(f"zygote did not fork within {SPAWN_TIMEOUT:g} s")
                raise ZygoteUnavailable(self.dead or "") from None
            if ticket.cgroup is not None:
                try:
                    place(ticket.cgroup, pid)
                except OSError as exc:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                    raise OSError(exc.errno, f"cannot place the process in cgroup "
                                             f"{ticket.cgroup}: {exc.strerror}") from None
                os.write(stdin_w, b"\n")  # through the gate
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:  # gone already; the zygote reaped it
                pidfd = -1
        except BaseException:
            for fd in ours:
                os.close(fd)
            self._spawns.pop(rid, None)
            containment.abandon(ticket)
            if pid is None and fut.done() and not fut.cancelled() and fut.exception() is None:
                # the pid came while this task was being cancelled, before it could read
                # it: forked all the same
                pid = fut.result()
            if pid is not None:
                self._given_up(pid)
            raise
        containment.started(ticket, pid, kind=kind, name=name, index=index,
                            stop_timeout=stop_timeout)
        self.spawned += 1
        status = self.statuses.expect(pid)
        if pidfd < 0:  # exited before we could watch it: a fd that is readable now
            pidfd = os.eventfd(1, os.EFD_CLOEXEC)
        child = ChildProcess(pid, pidfd, loop, containment, ticket.token, status=status)
        child.argv0 = argv[0]
        set_pipe_sizes(ours)
        files = [open(fd, mode, buffering=0)  # noqa: SIM115 - the transports own them
                 for fd, mode in zip(ours, ("wb", "rb", "rb"), strict=True)]
        try:
            await child.attach(*files, **channel)
        except BaseException:
            child.close()
            containment.ended(child.token)
            raise
        return child

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()  # the zygote reads EOF and exits
            self.sock = None
        if self.proc is not None:
            proc, self.proc = self.proc, None
            _kill(proc)  # its own process group: not its agents', which have their own
        if self.token is not None:
            self.containment.ended(self.token)
            self.token = None

    @property
    def alive(self) -> bool:
        return self.dead is None


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class Zygotes:
    """The zygotes of a supervisor, by key: started on first use, again after a death."""

    seq = 0

    def __init__(self, containment: Containment) -> None:
        self.containment = containment
        self.zygotes: dict[Key, Zygote] = {}
        self._starting: dict[Key, asyncio.Future[Zygote]] = {}
        self._failed: dict[Key, tuple[float, str]] = {}
        # starting when retired: closed as soon as the start ends, never served
        self._retired: set[Key] = set()
        self.started = 0
        self.failures = 0
        self.closed = False

    async def get(self, key: Key, env: Callable[[], dict[str, str]]) -> Zygote:
        """The zygote for `key`, started with the environment `env()` if there is none
        (computed only then: a copy of the environment per spawn showed in a mass
        start's profile)."""
        z = self.zygotes.get(key)
        if z is not None and z.alive:
            return z
        failed = self._failed.get(key)
        if failed is not None and time.monotonic() - failed[0] < RETRY_AFTER:
            raise ZygoteUnavailable(failed[1])
        pending = self._starting.get(key)
        if pending is None:
            pending = self._starting[key] = asyncio.ensure_future(self._start(key, env()))
        return await asyncio.shield(pending)

    async def _start(self, key: Key, env: dict[str, str]) -> Zygote:
        z = Zygote(key, env, self.containment, self._died)
        try:
            await z.start()
        except ZygoteUnavailable as exc:
            self.failures += 1
            self._failed[key] = (time.monotonic(), str(exc))
            raise
        finally:
            self._starting.pop(key, None)
            retired = key in self._retired
            self._retired.discard(key)
        self._failed.pop(key, None)
        if retired:
            z.close()
            raise ZygoteUnavailable("zygote retired while it started (no agent runs its "
                                    "release any more)")
        self.started += 1
        self.zygotes[key] = z
        return z

    def _died(self, z: Zygote) -> None:
        """A zygote that served and died is started again at once, so the next restart of
        its agents is warm."""
        log.warning("zygote %s died: %s; starting it again", z.key, z.dead)
        if self.closed or self.zygotes.get(z.key) is not z:
            return
        del self.zygotes[z.key]
        if z.key not in self._starting:
            self._starting[z.key] = fut = asyncio.ensure_future(self._start(z.key, z.env))
            fut.add_done_callback(swallow)

    def retire(self, which: Callable[[Key], bool]) -> None:
        """Stop the zygotes whose key `which` names (a release no agent runs any more:
        its interpreter is about to be removed, or no agent will fork from it)."""
        for key in [k for k in self.zygotes if which(k)]:
            self.zygotes.pop(key).close()
        # one still starting is let finish (its waiters get an answer, not a
        # cancellation) and closed then
        self._retired.update(k for k in self._starting if which(k))

    def close(self) -> None:
        self.closed = True
        for fut in self._starting.values():
            fut.cancel()
        for z in self.zygotes.values():
            z.close()
        self.zygotes.clear()


def swallow(fut: asyncio.Future[Any]) -> None:
    """A future's exception retrieved: nobody waits for it, and asyncio would log it."""
    if not fut.cancelled():
        fut.exception()
