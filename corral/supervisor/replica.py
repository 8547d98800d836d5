"""One replica of an agent: one process at a time, driven through the lifecycle.

A replica owns its current process, the JSON-RPC peer over its stdio, its restart policy
and its timers. Everything that happens to it is a transition in lifecycle.py, emitted as
an event with a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import pwd
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

import msgspec

from .. import jsonrpc
from ..jsonrpc import LineBlock, Peer, RpcError
from . import lifecycle, procstat
from .caps import explain_exit, oom_reason
from .config import ConfigError, ProcessSpec
from .lifecycle import LIVE, RUNNING, SERVING, State
from .process import ChildProcess, resolve_user
from .restart import RestartPolicy
from .zygote import Key, ZygoteUnavailable, warm_argv

if TYPE_CHECKING:
    from .core import Supervisor

PROTOCOL_VERSION = "1"
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


class Event(msgspec.Struct, omit_defaults=True):
    """A lifecycle transition, as the event stream and logs carry it."""

    time: float
    kind: str  # "agent" or "mcp"
    name: str
    replica: int
    state: str
    previous: str
    reason: str
    pid: int | None = None


class Sample(msgspec.Struct):
    cpu_percent: float = 0.0
    rss_bytes: int = 0
    open_fds: int = 0
    cpu_seconds: float = 0.0


class ReplicaStatus(msgspec.Struct):
    name: str
    replica: int
    state: str
    pid: int | None
    uptime: float | None
    restarts: int
    last_exit: str | None
    reason: str
    cpu_percent: float
    rss_bytes: int
    open_fds: int
    tasks_running: int


class Replica:
    kind = "agent"
    title_prefix = "corral: agent"
    name_variable = "CORRAL_AGENT"  # tells the process whose replica it is
    # the opening exchange, as exit reasons name it when it times out / fails
    handshake = "initialize"
    handshake_failed = "initialize failed"

    def __init__(self, sup: Supervisor, spec: ProcessSpec, name: str, index: int) -> None:
        self.sup = sup
        self.spec = spec
        self.name = name
        self.index = index
        self.state = State.INITIAL
        self.reason = "not started"
        self.last_exit: str | None = None
        self.process: ChildProcess | None = None
        self.peer: Peer | None = None
        self.pid: int | None = None
        self.restarts = 0
        self.spawned_at: float | None = None
        self.ready_at: float | None = None
        self.sample = Sample()
        self.tasks_running = 0
        self.policy = self._make_policy(spec)
        # A life is one process from spawn to reap. Tasks run only its spawn and its reap:
        # while the process runs, it is watched by callbacks (its exit future, the
        # handshake's answer), so a running fleet holds no task or coroutine per replica,
        # objects every full pass of the cyclic collector would walk (decision 60).
        self._living = False
        self._lives = 0  # lives begun: an error's clean-up ends its own life, no later one
        self._life: asyncio.Task[None] | None = None  # the spawn or the reap under way
        self._init: asyncio.Task[None] | None = None  # the handshake under way
        self._over: asyncio.Future[None] | None = None  # made for those who wait: stopped()
        # the next step of a stop that is not answered: SIGTERM, then SIGKILL
        self._escalate: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._down_reason: str | None = None  # why corral is taking the process down
        self._escalation: str | None = None
        self._stay_down = False  # an operator stop: no restart
        self._last_pong = 0.0
        self._ping_out = False
        self._heard = False  # a line arrived since the heartbeat last looked
        self._prev_cpu: tuple[float, float] | None = None
        self._cpu_over = 0
        self._oversize = 0
        self._resource_retries = 0  # consecutive spawns failed for corral's resources
        sup._counted(self)

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
    def _set(self, target: State, reason: str) -> None:
        lifecycle.check(self.state, target)
        previous, self.state, self.reason = self.state, target, reason
        self.sup._emit(
            Event(
                time=time.time(),
                kind=self.kind,
                name=self.name,
                replica=self.index,
                state=target.value,
                previous=previous.value,
                reason=reason,
                pid=self.pid,
            ),
            self,
        )

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
            state=self.state.value,
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
        self.sup._on_log(self, "corral", LineBlock.one(text))

    # -- start ----------------------------------------------------------------------------
    def start(self, *, by_hand: bool = True, reason: str | None = None) -> None:
        """Spawn a process unless one is live; a start by hand forgives past restarts."""
        if self.state in LIVE:
            return
        self._cancel_timer()
        if by_hand:
            self.policy.reset()
            self._stay_down = False
        reason = reason or ("started" if by_hand else f"restart #{self.restarts}")
        self._down_reason = None
        self._escalation = None
        self.pid = None
        self._set(State.STARTING, reason)
        self._living = True
        self._lives += 1
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
            self._down_reason = reason
            if self.state in RUNNING and self.state != State.SHUTTING_DOWN:
                self._set(State.SHUTTING_DOWN, reason)
            proc.kill_group(signal.SIGKILL)
            return
        if self.peer is not None:
            self.peer.close(self.exit_message(reason))
        if proc is not None:
            proc.close()
        self.process = self.peer = self.ready_at = None
        self.tasks_running = 0
        self.last_exit = reason
        self._life_over()
        if self.state != State.TERMINATED:
            self._set(State.TERMINATED, reason)
        self._after_exit(clean=False, uptime=0.0, reason=reason)

    def _life_over(self) -> None:
        """The life has ended (spawn failed, or the process reaped): before the state
        that says so is set, since the transition's listeners may start the next one."""
        self._living = False
        self._life = None
        over, self._over = self._over, None
        if over is not None and not over.done():
            over.set_result(None)

    def _environment(self, uid: int | None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.spec.env)
        env[self.name_variable] = self.name
        env["CORRAL_REPLICA"] = str(self.index)
        env["CORRAL_PROCTITLE"] = f"{self.title_prefix} {self.label}"
        for hook in self.sup.environment_hooks:  # e.g. the gateway's URL and token
            env.update(hook(self))
        if self.spec.cwd is not None and "PWD" not in self.spec.env:
            # as a shell would have it (and the caps prologue's shell does): the same
            # for every way of starting, not corral's own directory
            env["PWD"] = os.path.abspath(self.spec.cwd)
        if uid is not None:  # the user the process runs as, not root's
            pw = pwd.getpwuid(uid)
            env.setdefault("HOME", pw.pw_dir)
            env["USER"] = env["LOGNAME"] = pw.pw_name
        return env

    async def _lifetime(self) -> None:
        """Spawn a process and hand it to its callbacks: its exit (`_on_exited`) reaps it
        and asks the restart policy."""
        spec = self.spec
        try:
            uid, gid = resolve_user(spec.user, spec.group)
            env = self._environment(uid)
            spawning: dict[str, Any] = {
                "containment": self.sup.containment, "kind": self.kind, "name": self.name,
                "index": self.index, "stop_timeout": spec.stop_timeout,
                "on_stdout_line": self._on_stdout_line,
                "on_stderr_lines": self._on_stderr_lines,
                "on_oversize": self._on_oversize,
                "max_line": self.max_line,
            }
            async with self.sup.spawn_slots:  # the pacing of a mass start
                self.process = await self._warm_start(env, uid, gid, spawning)
                if self.process is None:
                    self.process = await ChildProcess.spawn(
                        spec.argv(), env=env, cwd=spec.cwd, limits=spec.limits, uid=uid,
                        gid=gid, **spawning)
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
        self.sup.stats.spawned += 1
        self.peer = self._make_peer(proc)
        if self.state == State.SHUTTING_DOWN:  # stopped while spawning
            self._begin_shutdown(graceful=False)
        self._init = asyncio.ensure_future(self._initialize())
        self._life = None

    def _on_exited(self, exited: asyncio.Future[int]) -> None:
        life = self._lives
        try:
            self._exit_seen(exited)
        except BaseException as exc:
            self._life_failed(life, exc)
            raise

    def _exit_seen(self, exited: asyncio.Future[int]) -> None:
        if self._init is not None:  # an answer read after the exit makes nothing Ready
            self._init.cancel()
            self._init = None
        if self._escalate is not None:
            self._escalate.cancel()
            self._escalate = None
        proc = self.process
        assert proc is not None
        rc = exited.result()
        # grandchildren still in the group (or its cgroup) die with their agent; those
        # that left it are found by containment once it hears of the exit
        proc.kill_group(signal.SIGKILL)
        oom = self.sup.containment.oom_killed(proc.token)
        self.sup.containment.ended(proc.token)
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

    async def _warm_start(self, env: dict[str, str], uid: int | None, gid: int | None,
                          spawning: dict[str, Any]) -> ChildProcess | None:
        """A fork from the zygote of this agent's interpreter, preload set and user, when
        the spec asks for one; None (and the reason in the log) to start cold."""
        spec = self.spec
        preload = tuple(getattr(spec, "preload", ()))
        if not (preload or getattr(spec, "warm", False)):
            return None
        try:
            argv = spec.argv()
            key = Key(warm_argv(argv, env), preload, uid, gid, env.get("PYTHONPATH"))
            zygote = await self.sup.zygotes.get(
                key, lambda: self.sup.zygote_environment(env))
            return await zygote.spawn(argv, env=env, cwd=spec.cwd, limits=spec.limits,
                                      **spawning)
        except ZygoteUnavailable as exc:
            self.sup.stats.cold_fallbacks += 1
            self.note(f"warm start unavailable, starting cold: {exc}")
            return None

    def _make_peer(self, proc: ChildProcess) -> Peer:
        return Peer(
            f"{self.kind} {self.label}",
            proc.write,
            send_parts=proc.write_parts,
            dispatch=self._dispatch,
            on_notification=self._on_notification,
            on_garbage=self._on_garbage,
        )

    def exit_message(self, reason: str) -> str:
        """What requests in flight fail with when the process is gone."""
        return f"worker exited: {reason}"

    def _spawn_failed(self, reason: str) -> None:
        self._life_over()
        self.last_exit = reason
        self.sup.stats.spawn_failures += 1
        self._set(State.TERMINATED, reason)
        self._after_exit(clean=False, uptime=0.0, reason=reason)

    def _spawn_failed_for_want_of(self, exc: OSError) -> None:
        """corral itself is out of fds, memory or processes: the agent never ran, so this
        is no restart of it; try again once corral may have recovered."""
        reason = f"spawn failed for want of corral's own resources: {exc}"
        self._life_over()
        self.last_exit = reason
        self.sup.stats.spawn_failures += 1
        self._set(State.TERMINATED, reason)
        if self._stay_down or self.sup.closing:
            return
        delay = min(self.policy.backoff(self._resource_retries), RESOURCE_RETRY_MAX)
        self._resource_retries += 1
        self._set(State.BACKOFF, f"retrying in {delay:.2f} s (not counted as a restart) "
                                 f"after: {reason}")
        self._timer = asyncio.get_running_loop().call_later(delay, self._retry_spawn)

    def _retry_spawn(self) -> None:
        self._timer = None
        if self.state == State.BACKOFF:
            self.start(by_hand=False, reason=f"spawn retry #{self._resource_retries}")

    def _initialize_params(self) -> dict[str, Any]:
        return {
            "agent": self.name,
            "replica": self.index,
            "protocol_version": PROTOCOL_VERSION,
            "config": getattr(self.spec, "config", {}),
            "state": self.sup.initial_state(self),
        }

    async def _handshake(self) -> str:
        """The protocol's opening exchange; returns the reason for Ready, raises RpcError."""
        assert self.peer is not None
        await self.peer.request(
            "initialize", self._initialize_params(), timeout=self.spec.start_timeout
        )
        return "initialized"

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
                self.take_down(
                    f"start timeout: no answer to {self.handshake} within {timeout:g} s",
                    graceful=False,
                )
            elif exc.code != jsonrpc.PEER_CLOSED:
                self.take_down(f"{self.handshake_failed}: {exc.message}", graceful=False)
            return
        if self.state != State.STARTING:
            return
        self.ready_at = time.monotonic()
        self._last_pong = self.sup.listening.now()
        self._set(State.READY, ready_reason)
        self.sup._on_ready(self)

    # -- stop -----------------------------------------------------------------------------
    def take_down(self, reason: str, *, graceful: bool) -> None:
        """corral decided this process must go (stop, hang, cap, timeout)."""
        if self.state not in RUNNING:
            return
        self._down_reason = reason
        self._set(State.SHUTTING_DOWN, reason)
        if self.process is not None:
            self._begin_shutdown(graceful=graceful)

    def _begin_shutdown(self, *, graceful: bool) -> None:
        proc = self.process
        assert proc is not None
        if not graceful:
            proc.kill_group(signal.SIGKILL)
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
            proc.kill_group(signal.SIGKILL)

    def _ask_to_stop(self) -> None:
        """The protocol's own way of asking the process to exit, before stdin closes."""
        if self.peer is not None and self.ready_at is not None and self.peer.closed is None:
            _, fut = self.peer.request_future("shutdown", {})
            fut.add_done_callback(_swallow)

    async def stop(self, reason: str = "stopped", *, graceful: bool = True) -> None:
        """Take the replica down and keep it down; returns once it is Terminated.
        Not graceful: SIGKILL at once (the supervisor must go now)."""
        self.begin_stop(reason, graceful=graceful)
        await self.stopped()

    def begin_stop(self, reason: str, *, graceful: bool) -> None:
        """stop()'s first steps, at once: down and staying down (stop_all paces these)."""
        self._stay_down = True
        self._cancel_timer()
        if self.state == State.BACKOFF:
            self._set(State.TERMINATED, reason)
            return
        self.take_down(reason, graceful=graceful)

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
        if self._down_reason is not None:
            reason = self._down_reason
            if self._escalation:
                reason = f"{reason} ({self._escalation})"
        elif oom:
            reason = oom_reason(self.spec.limits)
        else:
            reason = explain_exit(
                rc,
                self.spec.limits,
                [b.decode("utf-8", "replace") for b in proc.stderr_tail or ()],
                cpu_seconds_used=cpu_used,
                command=proc.argv0,
            )
        uptime = time.monotonic() - (self.spawned_at or time.monotonic())
        if self.peer is not None:
            self.peer.close(self.exit_message(reason))
        proc.close()
        self.sup._on_exit(self, reason)
        self.process = None
        self.peer = None
        self.ready_at = None
        self.tasks_running = 0
        self.sample = Sample()
        self.last_exit = reason
        self._life_over()
        self._set(State.TERMINATED, reason)
        clean = rc == 0 and self._down_reason is None
        self._after_exit(clean=clean, uptime=uptime, reason=reason)

    def _after_exit(self, *, clean: bool, uptime: float, reason: str) -> None:
        if self._stay_down or self.sup.closing:
            return
        decision = self.policy.on_exit(clean_exit=clean, uptime=uptime, now=time.monotonic())
        if decision.restart:
            self._set(State.BACKOFF, f"restarting in {decision.delay:.2f} s after: {reason}")
            self._timer = asyncio.get_running_loop().call_later(decision.delay, self._backoff_over)
        elif decision.give_up:
            self.sup.stats.failures += 1
            self._set(
                State.FAILED,
                f"too many restarts ({self.policy.max_restarts} within "
                f"{self.policy.window:g} s); last exit: {reason}",
            )

    def _backoff_over(self) -> None:
        self._timer = None
        if self.state == State.BACKOFF:
            self.restarts += 1
            self.sup.stats.restarts += 1
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
        self.sup._on_log(self, "stderr", lines)

    @property
    def max_line(self) -> int:
        """The longest stdout line (one message) this process may write."""
        return self.sup.max_line

    def _on_oversize(self, size: int, head: bytes, tail: bytes) -> None:
        self._oversize += 1
        self.note(f"discarded a {size}-byte line on stdout (limit {self.max_line} bytes)")
        # the answer to a request: that request fails now, not at its timeout
        if self.peer is not None:
            self.peer.oversized(size, head, tail, self.max_line)

    def _on_garbage(self, line: bytes, why: str) -> None:
        preview = line[:120].decode("utf-8", "replace")
        self.note(f"discarded a stdout line that is not JSON-RPC ({why}): {preview!r}")

    def _dispatch(self, method: str, params: Any, peer: Peer) -> Any:
        return self.sup._worker_request(self, method, params)

    def _on_notification(self, method: str, params: Any, peer: Peer) -> None:
        self.sup._worker_notification(self, method, params)

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
            return
        if self.pings:
            # silence counts only while corral was able to read the pipe (`now` is the
            # listening clock), and not while the process is excused (an MCP server in a
            # call within its timeout)
            if self._heard or self.silence_excused:  # a line since the last visit is life
                self._heard = False
                self._last_pong = now
            silent = now - self._last_pong
            if silent > timeout:
                self.take_down(f"hung: no heartbeat for {timeout:g} s", graceful=False)
                return
            # a worker that spoke within half the timeout needs no ping: an idle fleet
            # costs a ping per worker every timeout/2, a busy one none, and a hang is still
            # seen `timeout` after the last sign of life
            if not self._ping_out and silent >= timeout / 2:
                self._ping_out = True
                self.sup.heartbeat_work.pings += 1
                _, fut = self.peer.request_future("ping", {})
                fut.add_done_callback(self._pong)
        elif self.peer.silent_timeouts >= HUNG_AFTER_TIMEOUTS:  # no ping (stateless MCP)
            self.take_down(f"hung: {self.peer.silent_timeouts} requests in a row timed out "
                           "with no word from it", graceful=False)
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

    def _pong(self, fut: asyncio.Future[Any]) -> None:
        # the answer itself is a line on stdout, which marked the worker heard
        self._ping_out = False
        if not fut.cancelled():
            fut.exception()

    def _sample(self, sample_fds: bool) -> None:
        now = time.monotonic()  # wall time for CPU %, not the listening clock
        proc = self.process
        if proc is None:
            return
        usage = procstat.cpu_and_rss(proc.pid)
        if usage is None:
            return
        total, rss = usage
        s = self.sample
        if sample_fds:
            fds = procstat.open_fds(proc.pid)
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
                graceful=True,
            )
        elif limits.cpu_percent and not self.sup.containment.throttles_cpu(proc.token):
            # (where cpu.max is in force the kernel holds the share; no restart for it)
            self._cpu_over = self._cpu_over + 1 if s.cpu_percent > limits.cpu_percent else 0
            if self._cpu_over >= CPU_PERCENT_SAMPLES:
                self.take_down(
                    f"CPU share limit ({s.cpu_percent:g}% > {limits.cpu_percent:g}% "
                    f"for {CPU_PERCENT_SAMPLES} samples)",
                    graceful=True,
                )

    # -- work -----------------------------------------------------------------------------
    def task_started(self, task_id: str) -> None:
        self.tasks_running += 1
        if self.state in (State.READY, State.IDLE):
            self._set(State.BUSY, f"task {task_id}")

    def task_finished(self, task_id: str) -> None:
        self.tasks_running = max(0, self.tasks_running - 1)
        if self.tasks_running == 0 and self.state == State.BUSY:
            self._set(State.IDLE, f"task {task_id} done")

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
        await asyncio.wait_for(asyncio.shield(fut), timeout)
    return fut.done()

