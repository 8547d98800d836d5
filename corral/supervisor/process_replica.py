"""One supervised process at a time, driven through the lifecycle: the base of an agent's
replica (replica.py) and of an MCP tool server (mcpserver.py). It owns its machine
(lifecycle.py) and the executor of every step's actions (executor.py); its parts are a life
(launch.py) and the heartbeat's look (monitor.py); it tells its host through `ReplicaHost`.
"""

from __future__ import annotations

import asyncio
import errno
import time
from typing import NamedTuple, Protocol

from .. import jsonrpc
from ..jsonrpc import LineBlock, RpcError
from .config import ProcessSpec
from .containment import populated, set_frozen, wait_frozen
from .executor import Executor
from .launch import Life
from .lifecycle import Cause, State, at_work
from .monitor import Monitor
from .process import ChildProcess
from .replicaparts import PartsHost
from .replicaparts import ReplicaStatus as ReplicaStatus
from .replicaparts import Transition as Transition
from .replicaparts import WorkTransition as WorkTransition

# how long a pause waits for the kernel to say a replica's cgroup is frozen (one in
# uninterruptible sleep is frozen when its system call returns)
FREEZE_WAIT = 2.0


class ResumeFailed(RpcError):
    """A paused replica could not be let run (its cgroup stays frozen): it stays paused."""

    def __init__(self, message: str) -> None:
        super().__init__(jsonrpc.SERVER_ERROR, message)


class LogBatch(NamedTuple):
    """Lines of a replica's log that arrived together: `stream` is "stdout", "stderr" or
    "corral" (corral's own notes about it)."""

    replica: ProcessReplica
    stream: str
    lines: LineBlock


class ReplicaExit(NamedTuple):
    """A replica's process is gone (reaped, or its session over), with the reason."""

    replica: ProcessReplica
    reason: str


class ReplicaHost(PartsHost, Protocol):
    """What a replica needs of the supervisor that runs it."""

    def replica_added(self, r: ProcessReplica) -> None: ...

    def transitioned(self, r: ProcessReplica, event: Transition) -> None:
        """`r` took a transition (its state is event.state already)."""

    def replica_log(self, r: ProcessReplica, stream: str, lines: LineBlock) -> None: ...

    def replica_exited(self, r: ProcessReplica, reason: str) -> None:
        """`r`'s process is gone; its state is not Terminated yet."""

    def environment(self, r: ProcessReplica) -> dict[str, str]: ...


class ProcessReplica(Life, Monitor):
    kind = "process"
    title_prefix = "corral:"
    name_variable = "CORRAL_PROCESS"  # tells the process whose replica it is
    handshake = "the handshake"
    handshake_failed = "handshake failed"
    host: ReplicaHost

    def __init__(self, host: ReplicaHost, spec: ProcessSpec, name: str, index: int) -> None:
        super().__init__(host, spec, name, index)
        self.executor = Executor(self, self.machine)
        # its calls held for a person's decision now (an approval, a question: its tasks'
        # and its own): a replica whose every task waits so is waiting, not busy
        self.waiting_for_person = 0
        # the task it started last: the one it runs when it runs one (the gateway's
        # attribution of a call made with its token)
        self.last_task: str | None = None
        self._life_init()
        self._monitor_init()
        host.replica_added(self)

    # -- the machine's, as status shows it ------------------------------------------------
    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def reason(self) -> str:
        return self.machine.reason

    @property
    def restarts(self) -> int:
        return self.machine.restarts

    @property
    def serving(self) -> bool:
        return self.machine.takes_work

    @property
    def stopped_by_hand(self) -> bool:
        return self.machine.stopped_by_hand

    # -- the hooks the executor runs --------------------------------------------------------
    def _transitioned(self, previous: State, cause: Cause, reason: str) -> None:
        event = WorkTransition if at_work(previous, self.state) else Transition
        self.host.transitioned(self, event(
            time=time.time(), kind=self.kind, name=self.name, replica=self.index,
            state=self.state, previous=previous, reason=reason, pid=self.pid, cause=cause))

    def _fresh_life(self) -> None:
        self.pid = None
        self._unread_since = None

    def _shut_down(self, reason: str, *, graceful: bool) -> None:
        if self.process is not None:
            self.executor.begin_shutdown(graceful=graceful)

    def _ask_to_stop(self, proc: ChildProcess) -> int:
        proc.close_stdin()  # the request (a protocol's own, where it has one, comes first)
        return self.spec.stop_signum

    def _log(self, stream: str, lines: LineBlock) -> None:
        self.host.replica_log(self, stream, lines)

    def _exited(self, reason: str) -> None:
        self.host.replica_exited(self, reason)

    def _host_environment(self) -> dict[str, str]:
        return self.host.environment(self)

    # -- pause ----------------------------------------------------------------------------
    async def pause(self, reason: str, wait: float = FREEZE_WAIT) -> bool:
        """Freeze a serving replica's process where it is (False: it is not serving).
        Returns once the kernel says its cgroup is frozen, or that the process is stopped
        (SIGSTOP takes effect when it next leaves the kernel), `wait` seconds at most."""
        if not self.executor.fire(Cause.PAUSE, reason).freeze:
            return False
        how = self.executor.frozen
        if isinstance(how, str):
            try:
                done = await wait_frozen(how, wait)
            except OSError as exc:  # frozen all the same, as far as the kernel was asked
                self.note(f"paused, but not seen frozen: {how}/cgroup.events cannot be "
                          f"read ({exc.strerror})")
                return True
            proc = self.process
            if done and proc is not None and (not populated(how) or self._dead(proc)):
                # an empty cgroup reads frozen, and so does one whose process died as it
                # was frozen while a child of it lives on: what the pause answers is that
                # exit, seen first (not "paused")
                await proc.exited_within(wait)
        else:
            done = await self._wait_stopped(wait)
        if not done and self.machine.paused:
            self.note(f"paused, but not seen {'frozen' if isinstance(how, str) else 'stopped'}"
                      f" within {wait:g} s (in uninterruptible sleep?)")
        return True

    def _dead(self, proc: ChildProcess) -> bool:
        """Whether /proc says the process has exited (gone, or a zombie not yet reaped)."""
        st = self._proc_stat(self._measured_pid(proc) or proc.pid)
        return st is None or st.state in ("Z", "X")

    async def _wait_stopped(self, wait: float) -> bool:
        """Until /proc says the process is stopped. The kernel tells a stop to the parent
        alone (a warm worker's is its zygote), so this looks, at growing intervals: a
        stop takes effect within a scheduling tick."""
        deadline = time.monotonic() + wait
        delay = 0.0002
        while self.machine.paused and self.process is not None:
            st = self._proc_stat(self._measured_pid(self.process) or self.process.pid)
            if st is None or st.state in ("T", "t"):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        return True

    def resume(self, reason: str) -> bool:
        """Let a paused replica run on, as it was (False: it is not paused). A cgroup whose
        freeze cannot be taken back leaves it paused (ResumeFailed): marked serving, it
        would take tasks it cannot run, and its next process would be born frozen."""
        cgroup = self.executor.frozen
        if isinstance(cgroup, str) and self.machine.moves(Cause.RESUME):
            try:
                set_frozen(cgroup, False)
            except OSError as exc:
                if exc.errno != errno.ENOENT:  # gone with its process: nothing to thaw
                    raise ResumeFailed(f"replica {self.label} stays paused: cgroup.freeze "
                                       f"of {cgroup} cannot be written ({exc.strerror})"
                                       ) from None
        return self.executor.fire(Cause.RESUME, reason).back

    @property
    def uptime(self) -> float | None:
        if self.spawned_at is None or not self.machine.live:
            return None
        return time.monotonic() - self.spawned_at

    def status(self) -> ReplicaStatus:
        up = self.uptime
        return ReplicaStatus(
            name=self.name,
            replica=self.index,
            state=self.state,
            pid=self.pid if self.machine.live else None,
            uptime=round(up, 3) if up is not None else None,
            restarts=self.restarts,
            last_exit=self.last_exit,
            reason=self.reason,
            cpu_percent=self.sample.cpu_percent,
            rss_bytes=self.sample.rss_bytes,
            open_fds=self.sample.open_fds,
            tasks_running=self.tasks_running,
            done=self.exited_clean and self.machine.ended,
        )

    # -- start and stop -------------------------------------------------------------------
    def start(self, *, by_hand: bool = True, reason: str | None = None) -> None:
        """Spawn a process unless one is live; a start by hand forgives past restarts."""
        cause = Cause.SPAWN if by_hand else Cause.BACKOFF_OVER
        self.executor.fire(cause, reason or ("started" if by_hand
                                             else f"restart #{self.restarts}"))

    def take_down(self, reason: str, *, graceful: bool, cause: Cause = Cause.HANG) -> None:
        """corral decided this process must go (`cause`: stop, hang, cap, unhealthy)."""
        self.executor.fire(cause, reason, graceful=graceful)

    async def stop(self, reason: str = "stopped", *, graceful: bool = True) -> None:
        """Take the replica down and keep it down; returns once it is Terminated: within
        2 * stop_timeout + KILL_GRACE (ask, SIGTERM, SIGKILL; one unreaped after that is
        given up on and reaped whenever it dies), whatever the process does."""
        self.begin_stop(reason, graceful=graceful)
        await self.stopped()

    def begin_stop(self, reason: str, *, graceful: bool) -> None:
        """stop()'s first steps, at once: down and staying down (stop_all paces these)."""
        self.take_down(reason, graceful=graceful, cause=Cause.STOP)

    async def stopped(self) -> None:
        if self._living:
            if self._over is None:
                self._over = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._over)
