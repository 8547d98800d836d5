"""One supervised process at a time, driven through the lifecycle: the base of an agent's
replica (replica.py) and of an MCP tool server (mcpserver.py), siblings over it.

A replica owns its current process, the JSON-RPC peer over its stdio, its restart policy
and its timers. The machine (lifecycle.py) says what each event does; this class runs the
actions, and tells its host (a `ReplicaHost`: the Supervisor) through the methods of that
protocol, never through the host's private members.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import subprocess
import time
from typing import Any, NamedTuple, Protocol

import msgspec

from .. import jsonrpc
from ..jsonrpc import LineBlock, Peer, RpcError
from ..timeouts import within
from . import procstat
from .caps import describe, explain_exit, oom_reason
from .config import ConfigError, Limits, ProcessSpec, TenantSpec
from .containment import Containment, ProcStat, populated, set_frozen, wait_frozen
from .lifecycle import LIVE, SERVING, Cause, Machine, State, Step
from .listening import ListeningClock
from .process import ChildProcess, Launch, as_user, resolve_user
from .restart import RestartPolicy
from .runas import RunAs, run_as, tenant_of
from .stats import HeartbeatWork, Stats

# consecutive heartbeat samples above cpu_percent before it counts as a breach
CPU_PERCENT_SAMPLES = 5
# a spawn that fails for want of corral's own resources (fds, memory, processes) is not
# the agent's failure: retried, with backoff up to this, without counting as a restart
CORRAL_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN})
RESOURCE_RETRY_MAX = 5.0
# without a ping (the stateless MCP revision has none), this many requests in a row that
# time out, with nothing at all read from the process meanwhile, mark it hung
HUNG_AFTER_TIMEOUTS = 3
# how long a reap waits for stdout and stderr to reach EOF after the exit (a grandchild
# that escaped the kill may hold them open): what the process wrote before it died is read
OUTPUT_GRACE = 1.0
# a process's requests worked on at once (tool calls, resource reads); more wait in its
# stdout pipe, which is not read meanwhile
MAX_IN_FLIGHT = 256
# how long a process may take to be reaped after SIGKILL before stop() gives up on it (a
# process in uninterruptible sleep dies only when its system call returns)
KILL_GRACE = 5.0
# how long a pause waits for the kernel to say a replica's cgroup is frozen (every task in
# it stopped: one in uninterruptible sleep is frozen when its system call returns);
# CORRAL_FREEZE_WAIT sets it for a test that tells a wait cut short from one that ran its
# course on a loaded machine
FREEZE_WAIT = float(os.environ.get("CORRAL_FREEZE_WAIT", "2.0"))


class ResumeFailed(RpcError):
    """A paused replica could not be let run (its cgroup stays frozen): it stays paused."""

    def __init__(self, message: str) -> None:
        super().__init__(jsonrpc.SERVER_ERROR, message)


class Event(msgspec.Struct, omit_defaults=True):
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


class LogLines(NamedTuple):
    """Lines of a replica's log that arrived together: `stream` is "stdout", "stderr" or
    "corral" (corral's own notes about it)."""

    replica: ProcessReplica
    stream: str
    lines: LineBlock


class Exited(NamedTuple):
    """A replica's process is gone (reaped, or its session over), with the reason."""

    replica: ProcessReplica
    reason: str


class Sample(msgspec.Struct):
    cpu_percent: float = 0.0
    rss_bytes: int = 0
    open_fds: int = 0
    cpu_seconds: float = 0.0


class ReplicaStatus(msgspec.Struct):
    name: str
    replica: int
    state: State
    pid: int | None
    uptime: float | None
    restarts: int
    last_exit: str | None
    reason: str
    cpu_percent: float
    rss_bytes: int
    open_fds: int
    tasks_running: int
    # an agent with [health]: whether the replica takes new tasks, and why not (health.py)
    ready: bool | None = None
    health: str | None = None
    # a plain program's last STATUS= on its $NOTIFY_SOCKET (plain.py)
    status_text: str | None = None


class ReplicaHost(Protocol):
    """What a replica needs of the supervisor that runs it."""

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

    def replica_added(self, r: ProcessReplica) -> None:
        """A new replica, in state Initial."""

    def transitioned(self, r: ProcessReplica, event: Event) -> None:
        """`r` took a transition (its state is event.state already)."""

    def replica_log(self, r: ProcessReplica, stream: str, lines: LineBlock) -> None: ...

    def replica_exited(self, r: ProcessReplica, reason: str) -> None:
        """`r`'s process is gone; its state is not Terminated yet."""

    def environment(self, r: ProcessReplica) -> dict[str, str]:
        """More environment for `r`'s process about to start."""
        ...

    def tenant_spec(self, tenant: str) -> TenantSpec | None:
        """A process's tenant's [tenants.NAME] (its user, sandbox and network), or None."""


class ProcessReplica(Machine):
    kind = "process"
    title_prefix = "corral:"
    name_variable = "CORRAL_PROCESS"  # tells the process whose replica it is
    # the opening exchange, as exit reasons name it when it times out / fails
    handshake = "the handshake"
    handshake_failed = "handshake failed"
    host: ReplicaHost
    spec: ProcessSpec

    def __init__(self, host: ReplicaHost, spec: ProcessSpec, name: str, index: int) -> None:
        self.host = host
        self.spec = spec
        self.run: RunAs | None = None  # who the process started last runs as, its limits
        self.name = name
        self.index = index
        self._machine_init(self._make_policy(spec))
        self.last_exit: str | None = None
        self.process: ChildProcess | None = None
        self.peer: Peer | None = None
        self.pid: int | None = None
        self.spawned_at: float | None = None
        self.ready_at: float | None = None
        self.sample = Sample()
        self.tasks_running = 0
        # A life is one process from spawn to reap. Tasks run only its spawn and its reap:
        # while the process runs, it is watched by callbacks (its exit future, the
        # handshake's answer), so a running fleet holds no task or coroutine per replica,
        # objects every full pass of the cyclic collector would walk (decision 60).
        self._living = False
        self._lives = 0  # lives begun: an error's clean-up ends its own life, no later one
        self._life: asyncio.Task[None] | None = None  # the spawn or the reap under way
        self._init: asyncio.Task[None] | None = None  # the handshake under way
        self._over: asyncio.Future[None] | None = None  # made for those who wait: stopped()
        # the next step of a stop that is not answered: SIGTERM, SIGKILL, giving up
        self._escalate: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_pong = 0.0
        self._ping_out = False
        self._heard = False  # a line arrived since the heartbeat last looked
        # the process's /proc files, open while it lives (procstat.open_proc), and its
        # CPU ticks when the heartbeat last found it parked on its stdin (-1: not yet)
        self._stat_fd = -1
        self._syscall_fd = -1
        self._parked_ticks = -1
        # what the last look read of it, and when, not yet sampled
        self._looked: tuple[float, ProcStat] | None = None
        self._prev_cpu: tuple[float, float] | None = None
        self._cpu_over = 0
        self._oversize = 0
        # since when (listening clock) corral has had bytes for the process that it did
        # not take, none of them read (past the heartbeat timeout it is hung on its
        # stdin: Cause.UNREAD), and how many there were when the heartbeat last looked
        self._unread_since: float | None = None
        self._unread_left = 0
        self._resource_retries = 0  # consecutive spawns failed for corral's resources
        # how a paused process was stopped: its cgroup's freezer (the cgroup), or SIGSTOP
        # to its group (True); thawed the same way
        self._frozen: str | bool = False
        host.replica_added(self)

    @staticmethod
    def _make_policy(spec: ProcessSpec) -> RestartPolicy:
        return RestartPolicy(
            spec.restart,
            max_restarts=spec.max_restarts,
            window=spec.restart_window,
            backoff_initial=spec.backoff_initial,
            backoff_max=spec.backoff_max,
            stable_after=spec.stable_after,
        )

    @property
    def label(self) -> str:
        return f"{self.name}#{self.index}"

    # -- state ----------------------------------------------------------------------------
    def _apply(self, cause: Cause, reason: str) -> Step:
        """Fire `cause` and run the actions that tell the host; the caller runs the rest
        (spawn, shutdown, decide, arm), which need its arguments."""
        step = self.fire(cause, reason)
        if step.freeze:
            self._freeze()
        if step.thaw:
            self._thaw()
        if step.back:
            self._resumed()
        if step.serving:
            self._serving()
        if step.down:
            self._down()
        return step

    def _transitioned(self, previous: State, cause: Cause, reason: str) -> None:
        self.host.transitioned(self, Event(
            time=time.time(), kind=self.kind, name=self.name, replica=self.index,
            state=self.state, previous=previous, reason=reason, pid=self.pid, cause=cause))

    def _fresh_life(self) -> None:
        self._cancel_timer()
        self.pid = None
        self._unread_since = None

    def _staying_down(self) -> None:
        self._cancel_timer()

    def _serving(self) -> None:
        """It takes work now (an agent's queue is pumped)."""

    # -- pause ----------------------------------------------------------------------------
    async def pause(self, reason: str) -> bool:
        """Freeze a serving replica's process where it is, its memory kept (False: it is
        not serving, nothing done). Returns once the kernel says its cgroup is frozen, or
        that the process is stopped (SIGSTOP takes effect when it next leaves the kernel),
        FREEZE_WAIT at most. No ping, hang check or usage sample while paused."""
        step = self._apply(Cause.PAUSE, reason)
        if not step.freeze:
            return False
        how = self._frozen
        if isinstance(how, str):
            try:
                done = await wait_frozen(how, FREEZE_WAIT)
            except OSError as exc:  # frozen all the same, as far as the kernel was asked
                self.note(f"paused, but not seen frozen: {how}/cgroup.events cannot be "
                          f"read ({exc.strerror})")
                return True
            proc = self.process
            if done and proc is not None and not populated(how):
                # an empty cgroup reads frozen: the process died as it was frozen, and
                # what the pause answers is that exit, seen first (not "paused")
                await _wait(proc.exited, FREEZE_WAIT)
        else:
            done = await self._wait_stopped()
        if not done and self.state == State.PAUSED:
            self.note(f"paused, but not seen {'frozen' if isinstance(how, str) else 'stopped'}"
                      f" within {FREEZE_WAIT:g} s (in uninterruptible sleep?)")
        return True

    async def _wait_stopped(self) -> bool:
        """Until /proc says the process is stopped. The kernel tells a stop to the parent
        alone (a warm worker's is its zygote), so this looks, at growing intervals: a
        stop takes effect within a scheduling tick."""
        deadline = time.monotonic() + FREEZE_WAIT
        delay = 0.0002
        while self.state == State.PAUSED and self.process is not None:
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
        cgroup = self._frozen
        if isinstance(cgroup, str) and self.moves(Cause.RESUME):
            try:
                set_frozen(cgroup, False)
            except OSError as exc:
                if exc.errno != errno.ENOENT:  # gone with its process: nothing to thaw
                    raise ResumeFailed(f"replica {self.label} stays paused: cgroup.freeze "
                                       f"of {cgroup} cannot be written ({exc.strerror})"
                                       ) from None
        return self._apply(Cause.RESUME, reason).back

    def _freeze(self) -> None:
        proc = self.process
        if proc is None:  # pragma: no cover - a serving replica has its process
            return
        cgroup = self.host.containment.cgroup_of(proc.token)
        if cgroup is not None:
            try:
                set_frozen(cgroup, True)
                self._frozen = cgroup
                return
            except OSError as exc:
                self.note(f"cgroup.freeze of {cgroup} failed ({exc.strerror}); SIGSTOP")
        proc.kill_group(signal.SIGSTOP)
        self._frozen = True

    def _thaw(self) -> None:
        """Before a resume, a stop, or after a crash: a cgroup left frozen would freeze the
        next process placed in it."""
        frozen, self._frozen = self._frozen, False
        if isinstance(frozen, str):
            try:
                set_frozen(frozen, False)
            except OSError as exc:  # gone with its process (a crash): nothing to thaw
                if exc.errno != errno.ENOENT:
                    self.note(f"cgroup.freeze of {frozen} failed ({exc.strerror})")
        elif frozen and self.process is not None:
            self.process.kill_group(signal.SIGCONT)

    def _resumed(self) -> None:
        """Its silence while paused was corral's doing: the heartbeat counts afresh."""
        self._last_pong = self.host.listening.now()
        self._heard = False
        self._unread_since = None
        self._prev_cpu = None
        self._parked_ticks = -1

    def _down(self) -> None:
        """It is down, maybe for good (an agent's waiting tasks may end)."""

    @property
    def uptime(self) -> float | None:
        if self.spawned_at is None or self.state not in LIVE:
            return None
        return time.monotonic() - self.spawned_at

    def status(self) -> ReplicaStatus:
        up = self.uptime
        return ReplicaStatus(
            name=self.name,
            replica=self.index,
            state=self.state,
            pid=self.pid if self.state in LIVE else None,
            uptime=round(up, 3) if up is not None else None,
            restarts=self.restarts,
            last_exit=self.last_exit,
            reason=self.reason,
            cpu_percent=self.sample.cpu_percent,
            rss_bytes=self.sample.rss_bytes,
            open_fds=self.sample.open_fds,
            tasks_running=self.tasks_running,
        )

    def note(self, text: str) -> None:
        """A line of corral's own about this replica, into its log."""
        self.host.replica_log(self, "corral", LineBlock.one(text))

    # -- start ----------------------------------------------------------------------------
    def start(self, *, by_hand: bool = True, reason: str | None = None) -> None:
        """Spawn a process unless one is live; a start by hand forgives past restarts."""
        cause = Cause.SPAWN if by_hand else Cause.BACKOFF_OVER
        step = self._apply(cause, reason or ("started" if by_hand
                                             else f"restart #{self.restarts}"))
        if step.spawn:
            self._living = True
            self._lives += 1
            handed = self.host.containment.handed  # corral upgrade: adopt.py
            if handed is None or not handed(self):
                self._life = asyncio.ensure_future(self._live(self._lives))

    async def _live(self, life: int) -> None:
        try:
            await self._lifetime()  # a subclass's own (a remote server's session) too
        except BaseException as exc:
            self._life_failed(life, exc)
            raise

    def _life_failed(self, life: int, exc: BaseException) -> None:
        """corral's own handling of life `life` failed (a bug, logged by the loop): the
        life ends all the same, as an exit with the error for its reason, and the restart
        policy decides, so that the replica is never stuck half-way and stop() and close()
        never wait for it forever. A process still running is killed first: its exit then
        ends the life, with the same reason."""
        if not self._living or self._lives != life:
            return
        reason = f"corral error: {type(exc).__name__}: {exc}"
        proc = self.process
        if proc is not None and not proc.exited.done():
            self._apply(Cause.ERROR, reason)
            self._kill(proc)
            return
        self._end_life(reason, proc, clean=False, uptime=0.0, told=False)

    def _life_over(self) -> None:
        """The life has ended (spawn failed, or the process reaped): before the state
        that says so is set, since the transition's subscribers may start the next one."""
        self._living = False
        self._life = None
        over, self._over = self._over, None
        if over is not None and not over.done():
            over.set_result(None)

    def _limits(self) -> Limits:
        """The caps the next process starts under (its user's: runas.py)."""
        return self.run.limits if self.run is not None else self.spec.limits

    def _environment(self, uid: int | None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.spec.env)
        env[self.name_variable] = self.name
        env["CORRAL_REPLICA"] = str(self.index)
        env["CORRAL_PROCTITLE"] = f"{self.title_prefix} {self.label}"
        env.update(self.host.environment(self))  # e.g. the gateway's URL and token
        if self.spec.cwd is not None and "PWD" not in self.spec.env:
            # as a shell would have it (and the caps prologue's shell does): the same
            # for every way of starting, not corral's own directory
            env["PWD"] = os.path.abspath(self.spec.cwd)
        return as_user(env, uid)

    async def _lifetime(self) -> None:
        """Spawn a process and hand it to its callbacks: its exit (`_on_exited`) reaps it
        and asks the restart policy."""
        spec = self.spec
        try:
            # the tenant's user as it is now: a change applies from the next start
            run = self.run = run_as(spec, self.host.tenant_spec(tenant_of(spec)))
            uid, gid = resolve_user(run.user, run.group)
            env = self._environment(uid)
            spawning: dict[str, Any] = {
                "containment": self.host.containment, "kind": self.kind, "name": self.name,
                "index": self.index, "stop_timeout": spec.stop_timeout,
                "on_attach": self._attached, **self._stdio(),
            }
            async with self.host.spawn_slots:  # the pacing of a mass start
                self.process = await self._prestart(env, uid, gid, spawning)
                if self.process is None:
                    cold = self._launch(spec.argv(), env, uid, gid)
                    self.process = await ChildProcess.spawn(
                        cold.argv, env=cold.env, cwd=cold.cwd, limits=cold.limits,
                        uid=cold.uid, gid=cold.gid, **spawning)
        except OSError as exc:
            if exc.errno in CORRAL_RESOURCE_ERRORS:
                self._spawn_failed_for_want_of(exc)
            else:
                self._spawn_failed(f"spawn failed: {exc}")
            return
        except (ConfigError, ValueError, subprocess.SubprocessError) as exc:
            self._spawn_failed(f"spawn failed: {exc}")
            return
        self._resource_retries = 0
        proc = self.process
        # from here its exit ends the life, whatever else happens
        proc.exited.add_done_callback(self._on_exited)
        self.pid = proc.pid
        self.spawned_at = time.monotonic()
        self._prev_cpu = None
        self._cpu_over = 0
        self.host.stats.spawned += 1
        self.peer = peer = self._make_peer(proc)
        if peer is not None:
            # the process's requests wait, unread, while its stdin is full or MAX_IN_FLIGHT
            # of them are worked on; its answers and notifications before them are read (a
            # process kept from writing them could stop reading its stdin too)
            peer.reader, peer.max_handling, proc.peer = proc.reader, MAX_IN_FLIGHT, peer
        if self.state == State.SHUTTING_DOWN:  # stopped while spawning
            self._begin_shutdown(graceful=False)
        self._init = asyncio.ensure_future(self._initialize())
        self._life = None

    def _attached(self, proc: ChildProcess) -> None:
        """The process exists: the lines it writes from now on name its pid (they can be
        read before its spawn returns)."""
        self.pid = proc.pid

    def _stdio(self) -> dict[str, Any]:
        """How the process's output is read (ChildProcess.attach's callbacks): stdout
        is the protocol's channel, stderr its log."""
        return {"on_stdout_line": self._on_stdout_line,
                "on_stderr_lines": self._on_stderr_lines,
                "on_oversize": self._on_oversize,
                "max_line": self.max_line}

    async def _prestart(self, env: dict[str, str], uid: int | None, gid: int | None,
                        spawning: dict[str, Any]) -> ChildProcess | None:
        """A process started some other way than a cold spawn (an agent's warm start), or
        None."""
        return None

    def _launch(self, argv: list[str], env: dict[str, str], uid: int | None,
                gid: int | None, *, beside: bool = False) -> Launch:
        """`argv` started as this replica's processes are: in its directory, under its
        caps, as `uid`/`gid`, wrapped as `_wrap` says (`beside`: a command corral runs
        for the replica, not its own process)."""
        return Launch(self._wrap(argv, env, uid, beside=beside), env, self.spec.cwd,
                      self._limits(), uid, gid)

    def beside(self, argv: list[str], env: dict[str, str]) -> Launch:
        """A command corral runs for this replica (a health check, a recovery), started
        as the replica's process started last was: its user and group, its caps, its
        sandbox — never as corral itself (issue 34). Raises ConfigError or OSError when
        it cannot be (the user is gone, bubblewrap is missing)."""
        run = self.run or run_as(self.spec, self.host.tenant_spec(tenant_of(self.spec)))
        uid, gid = resolve_user(run.user, run.group)
        return self._launch(argv, as_user(env, uid), uid, gid, beside=True)

    def _wrap(self, argv: list[str], env: dict[str, str], uid: int | None, *,
              beside: bool = False) -> list[str]:
        """The argv to exec for `argv` (an agent's is wrapped in its sandbox)."""
        return argv

    def _exit_status(self, rc: int) -> int:
        """The process's own exit status from what its pid's exit says."""
        return rc

    def _on_exited(self, exited: asyncio.Future[int]) -> None:
        proc = self.process
        if proc is None or proc.exited is not exited:
            return  # a process given up on after SIGKILL (_unreaped): its life is over
        life = self._lives
        try:
            self._exit_seen(proc, exited)
        except BaseException as exc:
            self._life_failed(life, exc)
            raise

    def _exit_seen(self, proc: ChildProcess, exited: asyncio.Future[int]) -> None:
        if self._init is not None:  # an answer read after the exit makes nothing Ready
            self._init.cancel()
            self._init = None
        if self._escalate is not None:
            self._escalate.cancel()
            self._escalate = None
        rc = exited.result()
        # grandchildren still in the group (or its cgroup) die with their agent; those
        # that left it are found by containment once it hears of the exit
        proc.kill_group(signal.SIGKILL)
        containment = self.host.containment
        oom = containment.oom_killed(proc.token)
        containment.ended(proc.token)
        if proc.output_done:  # as it mostly is: the reap needs no task and no turn
            self._reap(proc, rc, oom)
        else:
            self._life = asyncio.ensure_future(self._reap_after_output(proc, rc, oom))

    async def _reap_after_output(self, proc: ChildProcess, rc: int, oom: bool) -> None:
        # what the process wrote before it died is read before its pipes are closed: the
        # last stderr lines explain a crash, the last stdout messages are answers
        life = self._lives
        try:
            await _wait(proc.output_closed, OUTPUT_GRACE)
            self._reap(proc, rc, oom)
        except BaseException as exc:
            self._life_failed(life, exc)
            raise

    def _make_peer(self, proc: ChildProcess) -> Peer | None:
        """The protocol's channel over the process's stdio (None: it speaks none)."""
        raise NotImplementedError

    def exit_message(self, reason: str) -> str:
        """What requests in flight fail with when the process is gone."""
        return f"{self.kind} {self.label} exited: {reason}"

    def _spawn_failed(self, reason: str) -> None:
        self._life_over()
        self.last_exit = reason
        self.host.stats.spawn_failures += 1
        self._life_ended(clean=False, uptime=0.0, reason=reason)

    def _spawn_failed_for_want_of(self, exc: OSError) -> None:
        """corral itself is out of fds, memory or processes: the process never ran, so
        this is no restart of it; try again once corral may have recovered."""
        reason = f"spawn failed for want of corral's own resources: {exc}"
        self._life_over()
        self.last_exit = reason
        self.host.stats.spawn_failures += 1
        self._apply(self.exit_cause, reason)
        if not self.wants_retry(self.host.closing):
            return
        delay = min(self.policy.backoff(self._resource_retries), RESOURCE_RETRY_MAX)
        self._resource_retries += 1
        step = self._apply(Cause.SPAWN_RETRY,
                           f"retrying in {delay:.2f} s (not counted as a restart) "
                           f"after: {reason}")
        if step.arm:
            self._timer = asyncio.get_running_loop().call_later(delay, self._retry_spawn)

    def _retry_spawn(self) -> None:
        self._timer = None
        self.start(by_hand=False, reason=f"spawn retry #{self._resource_retries}")

    async def _handshake(self) -> str:
        """The protocol's opening exchange; returns the reason for Ready, raises RpcError."""
        raise NotImplementedError

    def _start_timed_out(self, timeout: float) -> str:
        """The reason a start that was not ready within `timeout` is taken down for."""
        return f"start timeout: no answer to {self.handshake} within {timeout:g} s"

    async def _initialize(self) -> None:
        try:
            await self._initialize_steps()
        finally:
            if self._init is asyncio.current_task():
                self._init = None  # a done task kept is a task the collector walks

    async def _initialize_steps(self) -> None:
        timeout = self.spec.start_timeout
        try:
            ready_reason = await self._handshake()
        except RpcError as exc:
            if exc.code == jsonrpc.REQUEST_TIMEOUT:
                self.take_down(self._start_timed_out(timeout), graceful=False,
                               cause=Cause.HANG)
            elif exc.code != jsonrpc.PEER_CLOSED:
                self.take_down(f"{self.handshake_failed}: {exc.message}", graceful=False,
                               cause=Cause.UNHEALTHY)
            return
        if self.state != State.STARTING:  # on its way out meanwhile
            return
        self.ready_at = time.monotonic()
        self._last_pong = self.host.listening.now()
        # its CPU time as it answered: the first look at it parked compares with this, so
        # an idle worker is never pinged, not even once (see _parked)
        pid = self._measured_pid(self.process) if self.process is not None else None
        if pid is not None and procstat.READ_CALLS:
            st = self._proc_stat(pid)
            self._parked_ticks = st.cpu_ticks if st is not None else -1
        self._apply(Cause.READY, ready_reason)

    # -- stop -----------------------------------------------------------------------------
    def take_down(self, reason: str, *, graceful: bool, cause: Cause = Cause.HANG) -> None:
        """corral decided this process must go (`cause`: stop, hang, cap, unhealthy)."""
        step = self._apply(cause, reason)
        if step.shutdown and self.process is not None:
            self._begin_shutdown(graceful=graceful)

    def _begin_shutdown(self, *, graceful: bool) -> None:
        proc = self.process
        assert proc is not None
        if not graceful:
            self._kill(proc)
            return
        # the asking is done here, at once: a mass stop paces its stops (pacing.py), and
        # this write is the dear part of one; what follows if it goes unanswered is a
        # timer, not a task per stopping replica
        self._ask_to_stop()
        proc.close_stdin()
        self._escalate = asyncio.get_running_loop().call_later(
            self.spec.stop_timeout, self._stop_unanswered, proc, signal.SIGTERM)

    def _stop_unanswered(self, proc: ChildProcess, sig: int) -> None:
        """The stop's grace is over and `proc` (not self.process: that may be the next
        one) has not exited: SIGTERM, and after another grace, SIGKILL."""
        self._escalate = None
        if proc.pidfd < 0 or proc is not self.process:  # its exit is seen, if not settled
            return
        grace = self.spec.stop_timeout
        if sig == signal.SIGTERM:
            self._escalation = f"SIGTERM after {grace:g} s"
            proc.kill_group(signal.SIGTERM)
            self._escalate = asyncio.get_running_loop().call_later(
                grace, self._stop_unanswered, proc, signal.SIGKILL)
        else:
            self._escalation = f"SIGKILL after ignoring SIGTERM for {grace:g} s"
            self._kill(proc)

    def _kill(self, proc: ChildProcess) -> None:
        """SIGKILL to the group; if the process is not reaped within KILL_GRACE, it is
        given up on (_unreaped)."""
        proc.kill_group(signal.SIGKILL)
        if self._escalate is not None:
            self._escalate.cancel()
        self._escalate = asyncio.get_running_loop().call_later(
            KILL_GRACE, self._unreaped, proc)

    def _unreaped(self, proc: ChildProcess) -> None:
        """`proc` outlived SIGKILL by KILL_GRACE: it is in uninterruptible sleep (a hung
        mount, a driver), and dies only when its system call returns. The life ends now,
        so that stop() returns and the policy decides; the process stays watched, and is
        reaped whenever it does die."""
        self._escalate = None
        if proc is not self.process or proc.exited.done():
            return
        self.host.stats.stuck_after_kill += 1
        stuck = f"not reaped {KILL_GRACE:g} s after SIGKILL: given up"
        self._escalation = f"{self._escalation}; {stuck}" if self._escalation else stuck
        self.note(f"pid {proc.pid} was {stuck} (in uninterruptible sleep?); it is reaped "
                  "when it dies")
        proc.exited.add_done_callback(lambda _: self._late_reap(proc))
        if self._init is not None:
            self._init.cancel()
            self._init = None
        reason = self.taken_down_for() or f"corral error: pid {proc.pid} {stuck}"
        self._end_life(reason, None, clean=False, uptime=self._uptime_now())

    def _late_reap(self, proc: ChildProcess) -> None:
        """A process given up on after SIGKILL has died at last."""
        self.host.containment.ended(proc.token)
        proc.close()
        self.note(f"pid {proc.pid}, given up on after SIGKILL, is reaped")

    def _ask_to_stop(self) -> None:
        """The protocol's own way of asking the process to exit, before stdin closes
        (none by default: closing stdin is the request)."""

    async def stop(self, reason: str = "stopped", *, graceful: bool = True) -> None:
        """Take the replica down and keep it down; returns once it is Terminated.

        Graceful: ask (the protocol's own request, if it has one, and stdin closed), then
        after `stop_timeout` SIGTERM to the process group, and after another
        `stop_timeout` SIGKILL. Not graceful: SIGKILL at once (the supervisor must go
        now). A process still not reaped KILL_GRACE after SIGKILL (uninterruptible sleep)
        is given up on: the replica is Terminated with a reason that says so, the fact is
        in its log and counted (Stats.stuck_after_kill), and stop() returns; the process
        is reaped whenever it dies. So stop() returns within 2 * stop_timeout +
        KILL_GRACE, whatever the process does."""
        self.begin_stop(reason, graceful=graceful)
        await self.stopped()

    def begin_stop(self, reason: str, *, graceful: bool) -> None:
        """stop()'s first steps, at once: down and staying down (stop_all paces these)."""
        self.take_down(reason, graceful=graceful, cause=Cause.STOP)

    async def stopped(self) -> None:
        """Wait for the process of a stop begun to be gone (and the replica Terminated)."""
        if self._living:
            if self._over is None:
                self._over = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._over)

    # -- exit -----------------------------------------------------------------------------
    def _reap(self, proc: ChildProcess, rc: int, oom: bool) -> None:
        if self._escalate is not None:  # a stop begun while the output was awaited
            self._escalate.cancel()
            self._escalate = None
        cpu_used = self.sample.cpu_seconds
        reason = self.taken_down_for()
        gone = Cause.CRASH
        if reason is None:
            # the caps it ran under: its tenant's user's (runas.py), not only its own
            limits = self.run.limits if self.run is not None else self.spec.limits
            reason = oom_reason(limits) if oom else explain_exit(
                self._exit_status(rc),
                limits,
                [b.decode("utf-8", "replace") for b in proc.stderr_tail or ()],
                cpu_seconds_used=cpu_used,
                command=proc.argv0,
            )
            if oom or reason in describe(limits).values():  # a cap, named
                gone = Cause.CAP
        self._end_life(reason, proc, clean=rc == 0 and not self.clean_exit_asked,
                       uptime=self._uptime_now(), gone=gone)

    def _uptime_now(self) -> float:
        return time.monotonic() - (self.spawned_at or time.monotonic())

    def _end_life(self, reason: str, proc: ChildProcess | None, *, clean: bool,
                  uptime: float, told: bool = True, gone: Cause = Cause.CRASH) -> None:
        """What every end of a life does, whatever ended it (a reap, a process given up
        on after SIGKILL, corral's own error): the channel fails what is in flight with
        the reason, `proc` is closed (None: it stays watched), the host is told of the
        exit (`told`: a life that never had a process tells nothing), the life's fields
        are cleared, and the machine and the restart policy take it from there."""
        if self.peer is not None:
            self.peer.close(self.exit_message(reason))
        if proc is not None:
            proc.close()
        self._close_proc_files()
        if told:
            self.host.replica_exited(self, reason)
        self.process = self.peer = self.ready_at = None
        self.tasks_running = 0
        self.sample = Sample()
        self.last_exit = reason
        self._life_over()
        self._life_ended(clean=clean, uptime=uptime, reason=reason, gone=gone)

    def _life_ended(self, *, clean: bool, uptime: float, reason: str,
                    gone: Cause = Cause.CRASH) -> None:
        """The life is over: Terminated, and the restart policy's decision."""
        step = self._apply(self.exit_cause, reason)
        if not step.decide:
            return
        d = self.decide(clean=clean, uptime=uptime, now=time.monotonic(),
                        closing=self.host.closing, reason=reason, gone=gone)
        if d is None:
            return
        if d.cause is Cause.GIVE_UP:
            self.host.stats.failures += 1
        step = self._apply(d.cause, d.reason)
        if step.arm:
            self._timer = asyncio.get_running_loop().call_later(d.delay, self._backoff_over)

    def _restart_counted(self, cause: Cause) -> None:
        stats = self.host.stats
        stats.restarts += 1
        stats.restarts_by_cause[cause] = stats.restarts_by_cause.get(cause, 0) + 1

    def _backoff_over(self) -> None:
        self._timer = None
        self.start(by_hand=False)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- channel --------------------------------------------------------------------------
    def _on_stdout_line(self, line: bytes) -> None:
        self._heard = True
        if self.peer is not None:
            self.peer.feed_line(line)

    def _on_stderr_lines(self, lines: LineBlock) -> None:
        self.host.replica_log(self, "stderr", lines)

    @property
    def max_line(self) -> int:
        """The longest stdout line (one message) this process may write."""
        return self.host.max_line

    def _on_oversize(self, size: int, head: bytes, tail: bytes) -> None:
        self._oversize += 1
        self.note(f"discarded a {size}-byte line on stdout (limit {self.max_line} bytes)")
        # the answer to a request: that request fails now, not at its timeout
        if self.peer is not None:
            self.peer.oversized(size, head, tail, self.max_line)

    def _unread_too_long(self, now: float, timeout: float) -> bool:
        """corral has had bytes for the process (more than its stdin pipe holds) and it
        has read none of them for the heartbeat timeout: it is hung on its stdin,
        whatever it still writes, and is taken down. One that reads, if slowly, is not
        (a ping behind that backlog could not be answered sooner either)."""
        proc = self.process
        left = proc.stdin_backlog if proc is not None else 0
        if not left:
            self._unread_since = None
            return False
        if self._unread_since is None or left < self._unread_left:
            self._unread_since = now
        self._unread_left = left
        if now - self._unread_since <= timeout:
            return False
        self.take_down(f"hung: {left} bytes sent to it unread for {timeout:g} s",
                       graceful=False, cause=Cause.UNREAD)
        return True

    def _on_garbage(self, line: bytes, why: str) -> None:
        preview = line[:120].decode("utf-8", "replace")
        self.note(f"discarded a stdout line that is not JSON-RPC ({why}): {preview!r}")

    @property
    def garbage_lines(self) -> int:
        return (self.peer.garbage_lines if self.peer else 0) + self._oversize

    # -- heartbeat ------------------------------------------------------------------------
    def heartbeat(self, now: float, timeout: float, sample: bool, sample_fds: bool) -> None:
        """One visit of the heartbeat: hang check, a ping only if the worker has been quiet,
        a usage sample when this visit is one of this replica's sampling turns. `now` is
        the supervisor's listening clock (listening.py): silence during its stalls is not
        the worker's."""
        if self.state not in SERVING or self.peer is None:
            if self.state == State.STARTING and self.process is not None and sample:
                self._sample(sample_fds)
            return  # (a start has its own timeout, whatever it reads meanwhile)
        if self._unread_too_long(now, timeout):
            return
        if self.pings:
            # silence counts only while corral was able to read the pipe (`now` is the
            # listening clock) and chose to (not while it holds the process's requests),
            # not while corral has bytes for the process it did not take (a ping would wait
            # behind them; that has its own timeout, above), and not while the process is
            # excused (an MCP server in a call within its timeout)
            if self._heard or self.silence_excused or self._unread_since is not None or \
                    self.peer.held is not None:
                self._heard = False
                self._last_pong = now
            silent = now - self._last_pong
            if silent > timeout:
                self.take_down(f"hung: no heartbeat for {timeout:g} s", graceful=False,
                               cause=Cause.HANG)
                return
            # a worker that spoke within half the timeout needs no ping: an idle fleet
            # costs a ping per worker every timeout/2, a busy one none, and a hang is still
            # seen `timeout` after the last sign of life
            if not self._ping_out and silent >= timeout / 2:
                if self._parked():
                    self._last_pong = now
                    self.host.heartbeat_work.parked += 1
                else:
                    self._ping_out = True
                    self.host.heartbeat_work.pings += 1
                    _, fut = self.peer.request_future("ping", {})
                    fut.add_done_callback(self._pong)
        elif self.peer.silent_timeouts >= HUNG_AFTER_TIMEOUTS:  # no ping (stateless MCP)
            self.take_down(f"hung: {self.peer.silent_timeouts} requests in a row timed out "
                           "with no word from it", graceful=False, cause=Cause.HANG)
            return
        if sample:
            self._sample(sample_fds)

    @property
    def pings(self) -> bool:
        return True

    @property
    def silence_excused(self) -> bool:
        """Whether missed pings are not a hang now (an MCP server in a call)."""
        return False

    def _parked(self) -> bool:
        """Whether the process shows, without being woken, that it would answer a ping now:
        its main thread asleep reading its stdin (corral's pipe, so nothing of corral's is
        unread), no task or request of corral's on it, and no CPU used since the last
        look that found it so, or since its handshake (nothing else in it running: a
        thread spinning while it holds the interpreter would keep a ping from being
        answered). Anything else, or a /proc that will not say, and it is pinged: a
        stopped process (SIGSTOP) is not asleep, a deadlocked or busy main thread is not
        reading. An idle SDK worker is never woken (decision 79)."""
        proc = self.process
        if (proc is None or self.tasks_running or self.peer is None or self.peer.in_flight
                or proc.stdin_backlog or not procstat.READ_CALLS):
            return False
        pid = self._measured_pid(proc)
        if pid is None:
            return False
        if self._syscall_fd == -1:
            self._syscall_fd = procstat.UNAVAILABLE
            pipe = proc.stdin.get_extra_info("pipe") if proc.stdin is not None else None
            if pipe is not None and procstat.same_pipe(pid, pipe.fileno()):
                self._syscall_fd = procstat.open_proc(pid, "syscall")
        if self._syscall_fd < 0 or not procstat.reading_stdin(self._syscall_fd):
            self._parked_ticks = -1
            return False
        st = self._proc_stat(pid)
        if st is None or st.state != "S":  # (a stopped process shows its read too)
            return False
        # the dear read of a look (the kernel sums the threads' times) is the usage sample
        # too, when the replica's sampling turn comes
        self._looked = time.monotonic(), st
        before, self._parked_ticks = self._parked_ticks, st.cpu_ticks
        return before == st.cpu_ticks

    def _measured_pid(self, proc: ChildProcess) -> int | None:
        """The pid whose /proc says what the replica uses and does (its process's own;
        None: not known yet)."""
        return proc.pid

    def _proc_stat(self, pid: int) -> ProcStat | None:
        if self._stat_fd == -1:
            self._stat_fd = procstat.open_proc(pid, "stat")
        return procstat.stat_at(self._stat_fd, pid) if self._stat_fd >= 0 else None

    def _close_proc_files(self) -> None:
        for fd in (self._stat_fd, self._syscall_fd):
            if fd >= 0:
                os.close(fd)
        self._stat_fd = self._syscall_fd = self._parked_ticks = -1
        self._looked = None

    def _pong(self, fut: asyncio.Future[Any]) -> None:
        # the answer itself is a line on stdout, which marked the worker heard
        self._ping_out = False
        if not fut.cancelled():
            fut.exception()

    def _sample(self, sample_fds: bool) -> None:
        proc = self.process
        if proc is None:
            return
        looked, self._looked = self._looked, None
        if looked is not None:  # read by a look since the last sample: not read again
            now, st = looked
        else:
            pid = self._measured_pid(proc)
            fresh = self._proc_stat(pid) if pid is not None else None
            if fresh is None:
                return
            # wall time for CPU %, not the listening clock
            now, st = time.monotonic(), fresh
        total = st.cpu_ticks / procstat.CLOCK_TICKS
        rss = st.rss_pages * procstat.PAGE_SIZE
        s = self.sample
        if sample_fds:
            pid = self._measured_pid(proc)
            fds = procstat.open_fds(pid) if pid is not None else None
            if fds is not None:
                s.open_fds = fds
        if self._prev_cpu is not None:
            dt = now - self._prev_cpu[0]
            if dt > 0:
                s.cpu_percent = round(100.0 * (total - self._prev_cpu[1]) / dt, 1)
        self._prev_cpu = (now, total)
        s.cpu_seconds = total
        s.rss_bytes = rss
        limits = self.spec.limits
        if limits.rss_mb and rss > limits.rss_mb * 1024 * 1024:
            self.take_down(
                f"RSS soft limit ({rss // (1024 * 1024)} MiB > {limits.rss_mb} MiB)",
                graceful=True, cause=Cause.CAP,
            )
        elif limits.cpu_percent and not self.host.containment.throttles_cpu(proc.token):
            # (where cpu.max is in force the kernel holds the share; no restart for it)
            self._cpu_over = self._cpu_over + 1 if s.cpu_percent > limits.cpu_percent else 0
            if self._cpu_over >= CPU_PERCENT_SAMPLES:
                self.take_down(
                    f"CPU share limit ({s.cpu_percent:g}% > {limits.cpu_percent:g}% "
                    f"for {CPU_PERCENT_SAMPLES} samples)",
                    graceful=True, cause=Cause.CAP,
                )

    @property
    def serving(self) -> bool:
        return self.state in SERVING


def _swallow(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


async def _wait(fut: asyncio.Future[Any], timeout: float) -> bool:
    """True if `fut` finished within `timeout`; never cancels it."""
    if fut.done():  # wait_for would still take a turn, a timer and a waiter
        return True
    with contextlib.suppress(TimeoutError):
        await within(asyncio.shield(fut), timeout)
    return fut.done()
