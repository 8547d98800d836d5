"""A life of a process replica, from its spawn to its reap: who the process runs as, its
environment, the spawn (cold or warm), the handshake that makes it Ready, the exit seen and
explained, and the end every life goes through; the restart decision is the executor's.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import time
from typing import Any

from .. import jsonrpc
from ..jsonrpc import Peer, RpcError
from ..text import plural
from . import losses, procstat
from .caps import describe, explain_exit, oom_reason
from .config import ConfigError, Limits
from .dynamicusers import DynamicUsers
from .envfiles import read_env_files
from .executor import Executor, LifeEnd
from .lifecycle import Cause
from .losses import Loss
from .process import ChildProcess, Launch
from .replicaparts import ReplicaParts, Sample
from .runas import environment_of, ids, run_as, tenant_of

# a spawn that fails for want of corral's own resources (fds, memory, processes) is not
# the agent's failure: retried (lifecycle.Machine.retry), without counting as a restart
CORRAL_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN})
# a process's requests worked on at once (tool calls, resource reads); more wait in its
# stdout pipe, which is not read meanwhile
MAX_IN_FLIGHT = 256
# the gateways' addresses and token: set by corral's host alone, never kept from the
# spec's env or the daemon's (a CORRAL_MCP_SOCKET naming a host directory was bound
# writable into the sandbox: issue 88)
GATEWAY_VARIABLES = ("CORRAL_MCP_URL", "CORRAL_MCP_TOKEN", "CORRAL_MCP_SOCKET")


class Life(ReplicaParts):
    """The launch's members of a process replica; a life is one process from spawn to
    reap. Only its spawn and reap are tasks: a running fleet holds no task or coroutine
    per replica for the cyclic collector to walk (callbacks watch the process)."""

    name_variable: str
    title_prefix: str
    handshake: str
    handshake_failed: str
    executor: Executor
    # (the monitor's, reset at a spawn and at Ready)
    _prev_cpu: tuple[float, float] | None
    _cpu_over: int
    _last_pong: float
    _parked_ticks: int

    def _life_init(self) -> None:
        self._living = False
        self._lives = 0  # lives begun: an error's clean-up ends its own life, no later one
        self._life: asyncio.Task[None] | None = None  # the spawn or the reap under way
        self._over: asyncio.Future[None] | None = None  # made for those who wait: stopped()

    def _begin_life(self) -> None:
        self._living = True
        self._lives += 1
        handed = self.host.containment.handed  # corral upgrade: adopt.py
        if handed is None or not handed(self):
            self._life = asyncio.ensure_future(self._live(self._lives))

    def _exited(self, reason: str) -> None:
        """Its host told the process is gone."""
        raise NotImplementedError

    def _dynamic_users(self) -> DynamicUsers | None:
        """Where a uid of its own comes from when nothing names its user (an agent's)."""
        return None

    def _host_environment(self) -> dict[str, str]:
        """More environment from its host for the process about to start."""
        raise NotImplementedError

    async def _live(self, life: int) -> None:
        try:
            await self._lifetime()  # a subclass's own (a remote server's session) too
        except BaseException as exc:
            self._life_failed(life, exc)
            raise

    def _life_failed(self, life: int, exc: BaseException) -> None:
        """corral's own handling of life `life` failed (a bug, logged by the loop): the
        life ends all the same, so that the replica is never stuck half-way and stop() and
        close() never wait for it forever. A process still running is killed first."""
        if not self._living or self._lives != life:
            return
        reason = f"corral error: {type(exc).__name__}: {exc}"
        proc = self.process
        if proc is not None and not proc.exited.done():
            if not self.executor.fire(Cause.ERROR, reason, graceful=False).shutdown:
                self.executor.kill(proc)  # on its way out already: now
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
        return self.run.limits if self.run is not None else self.spec.limits

    def _environment(self, uid: int | None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(read_env_files(self.spec.env_file))  # a file not read fails the start
        env.update(self.spec.env)
        env[self.name_variable] = self.name
        env["CORRAL_REPLICA"] = str(self.index)
        env["CORRAL_PROCTITLE"] = f"{self.title_prefix} {self.label}"
        for name in GATEWAY_VARIABLES:  # corral's alone: the sandbox binds the socket named
            env.pop(name, None)
        env.update(self._host_environment())  # e.g. the gateway's URL and token
        if self.spec.cwd is not None and "PWD" not in self.spec.env:
            # as a shell would have it (and the caps prologue's shell does): the same
            # for every way of starting, not corral's own directory
            env["PWD"] = os.path.abspath(self.spec.cwd)
        return environment_of(env, self.run, uid, self.name, self.spec.env)

    async def _lifetime(self) -> None:
        """Spawn a process and hand it to its callbacks: its exit (`_on_exited`) reaps it
        and asks the restart policy."""
        spec = self.spec
        try:
            # the tenant's user as it is now: a change applies from the next start
            run = self.run = run_as(spec, self.host.tenant_spec(tenant_of(spec)),
                                    self._dynamic_users())
            uid, gid = ids(run)
            env = self._environment(uid)
            spawning: dict[str, Any] = {
                "containment": self.host.containment, "kind": self.kind, "name": self.name,
                "index": self.index, "stop_timeout": spec.stop_timeout,
                "on_attach": self._attached, **self._stdio(),
            }
            self._early_lines(None)  # (an earlier spawn's that failed: not this one's)
            async with self.host.spawn_slots:  # the pacing of a mass start
                self.process = await self._prestart(env, uid, gid, spawning)
                if self.process is None:
                    self.process = await ChildProcess.spawn(
                        self._launch(spec.argv(), env, uid, gid), **spawning)
        except (OSError, ConfigError, ValueError, subprocess.SubprocessError) as exc:
            ours = isinstance(exc, OSError) and exc.errno in CORRAL_RESOURCE_ERRORS
            why = " for want of corral's own resources" if ours else ""
            self._spawn_failed(f"spawn failed{why}: {exc}", retry=ours)
            return
        self.machine.spawned()
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
            peer.flow(proc.reader, MAX_IN_FLIGHT)
            proc.peer = peer
        self._early_lines(peer)
        if self.machine.leaving:  # stopped while spawning
            self.executor.begin_shutdown(graceful=False)
        self._init = asyncio.ensure_future(self._initialize())
        self._life = None

    def _attached(self, proc: ChildProcess) -> None:
        """The process exists: the lines it writes from now on name its pid (they can be
        read before its spawn returns)."""
        self.pid = proc.pid

    async def _prestart(self, env: dict[str, str], uid: int | None, gid: int | None,
                        spawning: dict[str, Any]) -> ChildProcess | None:
        """A process started otherwise than by a cold spawn (an agent's warm start), or None."""
        return None

    def _launch(self, argv: list[str], env: dict[str, str], uid: int | None,
                gid: int | None, *, beside: bool = False) -> Launch:
        """`argv` started as this replica's processes are (`beside`: a command corral runs
        for the replica, not its own process)."""
        return Launch(self._wrap(argv, env, uid, beside=beside), env, self.spec.cwd,
                      self._limits(), uid, gid)

    def beside(self, argv: list[str], env: dict[str, str]) -> Launch:
        """A command corral runs for this replica (a health check, a recovery), started
        as the replica's process started last was — never as corral itself. Raises
        ConfigError or OSError when it cannot be (the user is gone, bubblewrap is missing)."""
        run = self.run or run_as(self.spec, self.host.tenant_spec(tenant_of(self.spec)),
                                 self._dynamic_users())
        uid, gid = ids(run)
        return self._launch(argv, environment_of(env, run, uid, self.name, self.spec.env),
                            uid, gid, beside=True)

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
        self.executor.cancel_escalation()
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
            await proc.output_read()
            if self.peer is not None and (n := self.peer.dropped):
                self.note(f"{plural(n, 'request')} held at its exit or read after it not run")
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

    def _spawn_failed(self, reason: str, *, retry: bool = False) -> None:
        self._life_over()
        self.last_exit = reason
        self.host.stats.spawn_failures += 1
        self.exited_clean = False
        self.executor.fire(self.machine.exit_cause, reason,
                           end=LifeEnd(clean=False, uptime=0.0, retry=retry))

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
        if not self.machine.starting:  # on its way out meanwhile
            return
        hold = self.spec.start_secs - self._uptime_now()
        if hold > 0:  # the start window: ready once up that long (an exit cancels this)
            await asyncio.sleep(hold)
            if not self.machine.starting:  # taken down meanwhile
                return
            ready_reason = f"{ready_reason}, up {self.spec.start_secs:g} s (start_secs)"
        self.ready_at = time.monotonic()
        self._last_pong = self.host.listening.now()
        # its CPU time as it answered: the first look at it parked compares with this, so
        # an idle worker is never pinged, not even once (see _parked)
        pid = self._measured_pid(self.process) if self.process is not None else None
        if pid is not None and procstat.READ_CALLS:
            st = self._proc_stat(pid)
            self._parked_ticks = st.cpu_ticks if st is not None else -1
        self.executor.fire(Cause.READY, ready_reason)

    def _reap(self, proc: ChildProcess, rc: int, oom: bool) -> None:
        self.executor.cancel_escalation()  # a stop begun while the output was awaited
        cpu_used = self.sample.cpu_seconds
        reason = self.machine.taken_down_for()
        gone = Cause.CRASH
        loss = None  # (taken down: the cause it was taken down for says)
        if reason is None:
            limits = self._limits()  # the caps it ran under: its tenant's user's (runas.py)
            reason = oom_reason(limits) if oom else explain_exit(
                self._exit_status(rc),
                limits,
                proc.recent_stderr(),
                cpu_seconds_used=cpu_used,
                command=proc.argv0,
            )
            if oom or reason in describe(limits).values():  # a cap, named
                gone = Cause.CAP
            loss = losses.of_exit(self._exit_status(rc), gone is Cause.CAP)
        # an exit status of exit_codes (0 alone by default) of its own accord is clean
        clean = rc in self.spec.exit_codes and not self.machine.clean_exit_asked
        self._end_life(reason, proc, clean=clean, uptime=self._uptime_now(), gone=gone, loss=loss)

    def _uptime_now(self) -> float:
        return time.monotonic() - (self.spawned_at or time.monotonic())

    def _end_life(self, reason: str, proc: ChildProcess | None, *, clean: bool,
                  uptime: float, told: bool = True, gone: Cause = Cause.CRASH,
                  loss: Loss | None = None) -> None:
        """What every end of a life does, whatever ended it (a reap, a process given up
        on after SIGKILL, corral's own error). `proc` None: it stays watched; `told`
        False: a life that never had a process tells its host nothing."""
        if self.peer is not None:
            if loss is None:  # corral ended the life: as its cause says, else its own error
                down = self.machine.down_cause
                loss = Loss.INFRA if down is None else losses.of_take_down(down)
            self.peer.close(self.exit_message(reason), losses.data(loss))
        if proc is not None:
            proc.close()
        self._close_proc_files()
        if told:
            self._exited(reason)
        self.process = self.peer = self.ready_at = None
        self.tasks_running = 0
        self.sample = Sample()
        self.last_exit = reason
        self.exited_clean = clean
        self._life_over()
        self.executor.fire(self.machine.exit_cause, reason,
                           end=LifeEnd(clean=clean, uptime=uptime, gone=gone))
