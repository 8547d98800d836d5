"""What every part of a process replica shares: the members they read and write, the
host's members they use (`PartsHost`), and the rows they make. The parts: launch.py,
monitor.py, executor.py; process_replica.py puts them together."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import msgspec

from ..jsonrpc import LineBlock, Peer
from ..views import ReplicaStatus as ReplicaStatus
from .config import ProcessSpec, TenantSpec
from .containment import Containment, ProcStat
from .lifecycle import Cause, Machine, State
from .listening import ListeningClock
from .losses import Loss
from .process import ChildProcess
from .restart import RestartPolicy, StartWindow
from .runas import RunAs
from .stats import HeartbeatWork, Stats


class Transition(msgspec.Struct, omit_defaults=True):
    """A lifecycle transition, as the event stream and logs carry it."""

    time: float
    kind: str  # "agent" or "mcp"
    name: str
    replica: int
    state: State
    previous: State
    reason: str
    pid: int | None = None
    cause: Cause | None = None


class WorkTransition(Transition):
    """A serving replica's move between READY, BUSY and IDLE: a task taken or ended. A
    type of its own on the stream, so that a task's start and end are told only to those
    that subscribe to it (the watchers of every move); the lifecycle's subscribers (loops
    kept by a spec, dependents, stop marks, the STATUS line) have nothing to do for one."""


class Sample(msgspec.Struct):
    cpu_percent: float = 0.0
    rss_bytes: int = 0
    open_fds: int = 0
    cpu_seconds: float = 0.0


class PartsHost(Protocol):
    """What the parts use of the supervisor that runs the replica (the members that name
    the replica are the replica's to call: process_replica.ReplicaHost)."""

    @property
    def stats(self) -> Stats: ...
    @property
    def heartbeat_work(self) -> HeartbeatWork: ...
    @property
    def containment(self) -> Containment: ...
    @property
    def spawn_slots(self) -> asyncio.Semaphore: ...  # the pacing of a mass start
    @property
    def listening(self) -> ListeningClock: ...  # the clock silence is counted on
    @property
    def max_line(self) -> int: ...
    @property
    def closing(self) -> bool: ...  # no restarts: the supervisor is stopping

    def tenant_spec(self, tenant: str) -> TenantSpec | None:
        """A process's tenant's [tenants.NAME] (its user, sandbox and network), or None."""


class ReplicaParts:
    """The members of a process replica its parts share, made here, and the methods one
    part calls of another or of the replica."""

    kind: str

    def __init__(self, host: PartsHost, spec: ProcessSpec, name: str, index: int) -> None:
        self.host = host
        self.spec = spec
        self.name = name
        self.index = index
        # read many times a call (each link names its replica): made once, as its name
        # and index are
        self.label = f"{name}#{index}"
        self.machine = Machine(RestartPolicy(
            spec.restart,
            max_restarts=spec.max_restarts,
            window=spec.restart_window,
            backoff_initial=spec.backoff_initial,
            backoff_max=spec.backoff_max,
            stable_after=spec.stable_after,
            start=StartWindow(spec.start_secs, spec.start_retries),
        ))
        self.run: RunAs | None = None  # who the process started last runs as, its limits
        self.process: ChildProcess | None = None
        self.peer: Peer | None = None
        self.pid: int | None = None
        self.spawned_at: float | None = None
        self.ready_at: float | None = None
        self.sample = Sample()
        self.tasks_running = 0
        self.last_exit: str | None = None
        self.exited_clean = False  # the last life ended in a clean exit
        self._init: asyncio.Task[None] | None = None  # the handshake under way

    def note(self, text: str) -> None:
        """A line of corral's own about this replica, into its log."""
        self._log("corral", LineBlock.one(text))

    def _log(self, stream: str, lines: LineBlock) -> None:
        raise NotImplementedError

    def take_down(self, reason: str, *, graceful: bool, cause: Cause = Cause.HANG) -> None:
        raise NotImplementedError

    def _measured_pid(self, proc: ChildProcess) -> int | None:
        """The pid whose /proc says what the replica uses and does (its process's own;
        None: not known yet)."""
        return proc.pid

    def _close_proc_files(self) -> None:
        raise NotImplementedError

    def _proc_stat(self, pid: int) -> ProcStat | None:
        raise NotImplementedError

    def _early_lines(self, peer: Peer | None) -> None:
        raise NotImplementedError

    def _stdio(self) -> dict[str, Any]:
        raise NotImplementedError

    def _end_life(self, reason: str, proc: ChildProcess | None, *, clean: bool,
                  uptime: float, told: bool = True, gone: Cause = Cause.CRASH,
                  loss: Loss | None = None) -> None:
        raise NotImplementedError

    def _uptime_now(self) -> float:
        raise NotImplementedError

    # the hooks the executor runs a step's actions through
    def _transitioned(self, previous: State, cause: Cause, reason: str) -> None:
        """The state changed (the replica emits the event)."""

    def _fresh_life(self) -> None:
        """A life begins (the replica forgets the last one's pid)."""

    def _resumed(self) -> None:
        """A paused replica runs on."""

    def _serving(self) -> None:
        """It takes work now (an agent's queue is pumped)."""

    def _down(self) -> None:
        """It is down, maybe for good (an agent's waiting tasks may end)."""

    def _begin_life(self) -> None:
        raise NotImplementedError

    def _shut_down(self, reason: str, *, graceful: bool) -> None:
        """Take the process down (a remote server: end its session)."""
        raise NotImplementedError

    def _ask_to_stop(self, proc: ChildProcess) -> int:
        """Ask `proc` to exit, the protocol's way; returns the signal sent if it has not
        within stop_timeout."""
        raise NotImplementedError
