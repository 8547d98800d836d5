"""Processes handed over across a re-execution of the daemon (`corral upgrade`,
docs/operations.md): the new image, the same pid, takes each worker `hand` described (its
record's token: its pid and start time the state database's; its stdio pipe fds kept open
across the exec, its JSON-RPC conversation) instead of spawning one. Only what can be
handed whole is: a worker mid-handshake, mid-stop or with a request of its own being
answered is waited for first. Zygotes are not adopted (their children are: the
subreaper makes them corral's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import msgspec

from ..mcp.client import ServerSession
from ..timeouts import kept
from .containment import ProcessRecord, read_stat
from .launch import MAX_IN_FLIGHT
from .lifecycle import Cause
from .mcpserver import McpServerReplica
from .plain import PlainHanded, PlainReplica
from .process import ChildProcess, set_pipe_sizes
from .procstat import since_start
from .replica import Replica

if TYPE_CHECKING:
    from .process_replica import ProcessReplica

# how long the other adoptions wait for the first one to be attached at most (a few turns
# of the loop; the bound is for an attach that hangs)
FIRST_ALONE = 0.1


class HandedTask(msgspec.Struct, frozen=True):
    """A task running on a handed worker: its answer to request `rid` is its outcome."""

    task_id: str
    rid: int


class HandedProcess(msgspec.Struct, frozen=True):
    """A process the previous image hands over (a state file's entry)."""

    token: str  # its record's (kind, name, replica, pid, start time, cgroup: the store's)
    fds: list[int] = []  # stdin, stdout, stderr: our ends, kept open across the exec
    last_id: int = 0  # the last request id sent to it
    unanswered: list[int] = []  # requests sent and not answered (besides the tasks')
    tasks: list[HandedTask] = []
    restarts: int = 0
    session: ServerSession | None = None  # an MCP server's: what its client negotiated
    owner: str | None = None  # a per-agent MCP server's agent replica
    plain: PlainHanded | None = None  # a plain program's: fds are stdout and stderr
    gateway: str | None = None  # the digest of the gateway token it was given
    labels: list[str] = []  # what its calls of no task read (supervisor/labels.py)


def hand(r: ProcessReplica, token: str, rids: dict[str, int]) -> HandedProcess | None:
    """What `r`'s process is, for the next image; None when it cannot be handed whole
    (no process, no channel, not serving, a request of its own being answered, bytes
    unread on either side of its pipes). `rids`: the request ids of running tasks."""
    proc, peer = r.process, r.peer
    if proc is None or peer is None or proc.stdin is None or proc.reader is None:
        return None
    if not r.machine.takes_work or peer.handling or peer.held:
        return None
    session, owner = None, None
    if isinstance(r, McpServerReplica):
        # a request of corral's in flight (a tool call) has its caller in this image
        session, owner = r.client.session(), r.owner
        if peer.in_flight or session is None:
            return None
    proc._stdin_cork.flush()  # what this turn gathered goes to the pipe now
    if proc.stdin_backlog or proc.reader.holding:
        return None
    fds = proc.fds()
    if fds is None:
        return None
    last_id, unanswered = peer.outstanding()
    tasks = [HandedTask(tid, rid) for tid, rid in rids.items()]
    taken = {t.rid for t in tasks}
    return HandedProcess(
        token=token, fds=fds, last_id=last_id,
        unanswered=[i for i in unanswered if isinstance(i, int) and i not in taken],
        tasks=tasks, restarts=r.restarts, session=session, owner=owner)


def hand_plain(r: PlainReplica, token: str) -> HandedProcess | None:
    """What a plain program's process is: its log pipes (its stdin is closed once it
    starts), its $NOTIFY_SOCKET and readiness; None until it is Ready (a readiness not
    yet told is waited for, as a worker's handshake is)."""
    proc = r.process
    if proc is None or not r.machine.takes_work:
        return None
    fds = proc.output_fds()
    plain = r.handed()
    if plain.notify_fd is not None:
        fds = [*fds, plain.notify_fd]  # (kept open across the exec with the pipes)
    return HandedProcess(token=token, fds=fds, restarts=r.restarts, plain=plain)


def keep_open(fds: list[int]) -> None:
    """The fds survive the exec (-1: a pipe at its end, none)."""
    for fd in fds:
        if fd >= 0:
            os.set_inheritable(fd, True)


def close_on_exec(fds: list[int]) -> None:
    """The fds kept open across the exec are closed on any exec again: uvloop's spawn
    ignores close_fds, and a child holding one (an MCP server's stdin) never reads EOF."""
    for fd in fds:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)


def close_all(fds: list[int]) -> None:
    for fd in fds:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def _at_end(fd: int) -> int:
    """`fd`, or for -1 (a pipe the previous image had read to its end) the read end of
    a pipe at its end: the transport made on it reads EOF at once, as the old one had."""
    if fd >= 0:
        return fd
    rd, wr = os.pipe2(os.O_CLOEXEC)
    os.close(wr)
    return rd


def same_process(rec: ProcessRecord) -> bool:
    """Whether `rec`'s pid is still that process (not a pid used again)."""
    st = read_stat(rec.pid)
    return st is not None and st.start_time == rec.start_time and st.state != "Z"


class Adoptions:
    """The new image's side: the handed processes, waiting for their replica to start.
    `on_adopted` is told before the replica is Ready, so its running tasks are re-attached
    before dispatch gives it more; `on_lost`: its tasks are recovered as after a restart."""

    def __init__(self, on_adopted: Callable[[Replica, HandedProcess], None],
                 on_lost: Callable[[HandedProcess, str], None]) -> None:
        self.waiting: dict[tuple[str, str, int], HandedProcess] = {}
        self.records: Mapping[str, ProcessRecord] = {}
        self.on_adopted = on_adopted
        self.on_lost = on_lost
        self.adopted = 0
        self.pending: set[asyncio.Task[None]] = set()
        # the first adoption is attached alone, so dispatch goes on as soon as one is
        # Ready (the others' attaches would fill its turns); the others wait for this
        self.first_over: asyncio.Future[None] | None = None

    def expect(self, handed: list[HandedProcess], records: Mapping[str, ProcessRecord]
               ) -> list[HandedProcess]:
        """The handed processes each waits for its replica, by its record (the state
        database's, by token); those of no record, which none waits for."""
        self.records = records
        self.waiting = {(rec.kind, rec.name, rec.replica): h for h in handed
                        if (rec := records.get(h.token)) is not None}
        return [h for h in handed if h.token not in records]

    def take(self, r: ProcessReplica) -> bool:
        """Called by a replica's start (Containment.handed): True if `r` adopts a handed
        process (its life is the adoption) instead of spawning one."""
        h = self.waiting.pop((r.kind, r.name, r.index), None)
        if h is None:
            return False
        rec = self.records[h.token]
        if not same_process(rec):
            close_all(h.fds)
            self.on_lost(h, f"pid {rec.pid} is gone")
            return False
        first = self.first_over
        task = asyncio.ensure_future(self._adopt(r, h, first))
        if first is None:
            self.first_over = over = asyncio.get_running_loop().create_future()

            def end(*_: object) -> None:
                if not over.done():
                    over.set_result(None)

            task.add_done_callback(end)
            asyncio.get_running_loop().call_later(FIRST_ALONE, end)
        kept(self.pending, task)
        r._life = task
        return True

    def left(self) -> list[HandedProcess]:
        """The handed processes no replica took (an agent gone from the config, not
        started): the caller ends them; none is waited for after this."""
        out = list(self.waiting.values())
        self.waiting.clear()
        for h in out:
            close_all(h.fds)
            self.on_lost(h, "its agent's replica did not start in the new image")
        return out

    async def settled(self) -> None:
        """Until every adoption begun has ended."""
        while self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)

    async def _adopt(self, r: ProcessReplica, h: HandedProcess,
                     after: asyncio.Future[None] | None) -> None:
        rec = self.records[h.token]
        loop = asyncio.get_running_loop()
        if after is not None and not after.done():
            try:
                await asyncio.shield(after)
            except BaseException:  # (cancelled: the replica stopped before its turn)
                close_all(h.fds)
                self._failed(r, h, "stopped before it was adopted")
                raise
        containment = r.host.containment
        try:
            pidfd = os.pidfd_open(rec.pid)
        except OSError as exc:
            close_all(h.fds)
            self._failed(r, h, f"pid {rec.pid} cannot be watched: {exc}")
            return
        # its status read by waitpid: this process's child, or the subreaper's once a
        # zygote that forked it is gone (one still alive reaps it: its status unknown)
        child = ChildProcess(rec.pid, pidfd, loop, containment, rec.token,
                             reap=lambda: _reap(rec.pid))
        containment.adopted(rec)
        r.process = child
        r.pid = rec.pid
        r.spawned_at = time.monotonic() - since_start(rec.start_time)  # (as its record says)
        r.machine.restarts = h.restarts
        plain = h.plain if isinstance(r, PlainReplica) else None
        if plain is not None:
            assert isinstance(r, PlainReplica)
            r.take_handed(plain)  # its notify socket, heard once its channel is made
        # the channel first, its running tasks waiting on it: an answer already in the
        # pipe is read as soon as the pipes are attached (a plain program has none)
        r.peer = peer = r._make_peer(child)
        child.peer = peer
        if peer is not None:
            peer.take_over(h.last_id, h.unanswered)
        if h.session is not None and isinstance(r, McpServerReplica):
            r.client.resume(h.session)
        self.on_adopted(r, h)  # type: ignore[arg-type]  # (tasks: agents' alone)
        pipes = [_at_end(fd) for fd in h.fds[:2]] if plain is not None else h.fds
        set_pipe_sizes(pipes)
        modes = ("rb", "rb") if plain is not None else ("wb", "rb", "rb")
        files = [open(fd, mode, buffering=0)  # noqa: SIM115 - the transports own them
                 for fd, mode in zip(pipes, modes, strict=True)]
        stdio = [None, *files] if plain is not None else files
        try:
            await child.attach(*stdio, on_attach=r._attached, **r._stdio())
        except BaseException:
            child.close()
            containment.ended(child.token)
            r.process = r.peer = None
            if peer is not None:
                peer.close("not adopted across the upgrade: its pipes could not be attached")
            self._failed(r, h, "its pipes could not be attached")
            raise
        child.exited.add_done_callback(r._on_exited)
        if peer is not None:
            peer.flow(child.reader, MAX_IN_FLIGHT)
        r._life = None
        self.adopted += 1
        r.ready_at = time.monotonic()
        r._last_pong = r.host.listening.now()
        running = r.tasks_running
        said = f"adopted across an upgrade (pid {rec.pid})"
        r.executor.fire(Cause.READY, said)  # (a plain program's watchdog clock starts again)
        if running and r.machine.moves(Cause.TASK):
            r.executor.fire(Cause.TASK, f"{running} task(s) running across the upgrade")

    def _failed(self, r: ProcessReplica, h: HandedProcess, why: str) -> None:
        """The process could not be adopted: it is ended, and the replica starts anew
        (its tasks, failed with the channel when there was one, are retried as after a
        restart)."""
        with contextlib.suppress(OSError):
            os.kill(self.records[h.token].pid, 9)
        self.on_lost(h, why)
        r._life = None
        r._living = False
        r._spawn_failed(f"not adopted across the upgrade: {why}")


def _reap(pid: int) -> int | None:
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # (reaped by the zygote that forked it)
        return -1
    return None if done == 0 else os.waitstatus_to_exitcode(status)
