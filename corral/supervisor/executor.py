"""A replica's executor: the one place where the actions of a lifecycle step are run, in
one order, whoever fired the cause; what is the replica's own it does through the
replica's hooks (replicaparts.ReplicaParts).
"""

from __future__ import annotations

import asyncio
import errno
import signal
import time
from typing import NamedTuple

from .containment import set_frozen
from .lifecycle import Cause, ExitDecision, Machine, MachineStep
from .process import ChildProcess
from .replicaparts import ReplicaParts

# how long a process may take to be reaped after SIGKILL before stop() gives up on it (a
# process in uninterruptible sleep dies only when its system call returns)
KILL_GRACE = 5.0


class LifeEnd(NamedTuple):
    clean: bool  # it exited 0 of its own accord
    uptime: float
    gone: Cause = Cause.CRASH  # what ended a life corral did not take down
    # a spawn that failed for want of corral's own resources: tried again, no restart
    retry: bool = False


class Executor:
    """Runs the steps of one replica's machine; owns the timers a step arms."""

    __slots__ = ("escalate", "frozen", "machine", "r", "timer")

    def __init__(self, replica: ReplicaParts, machine: Machine) -> None:
        self.r = replica
        self.machine = machine
        self.timer: asyncio.TimerHandle | None = None  # the end of a backoff
        # the next step of a stop that is not answered: SIGTERM, SIGKILL, giving up
        self.escalate: asyncio.TimerHandle | None = None
        # how a paused process was stopped: its cgroup's freezer (the cgroup), or SIGSTOP
        # to its group (True); thawed the same way
        self.frozen: str | bool = False

    def fire(self, cause: Cause, reason: str, *, graceful: bool = False,
             end: LifeEnd | None = None) -> MachineStep:
        """Fire `cause` and run the step's actions. `end`: the life that ended, for the
        restart decision of an exit."""
        r, m = self.r, self.machine
        previous = m.state
        step = m.fire(cause, reason)
        if step.fresh:
            self.cancel_timer()
            r._fresh_life()
        if step.stay_down:
            self.cancel_timer()  # an operator's stop: no pending restart
        if step.tally:
            stats = r.host.stats
            stats.restarts += 1
            counted = m.restart_cause
            stats.restarts_by_cause[counted] = stats.restarts_by_cause.get(counted, 0) + 1
        if m.state is not previous:
            r._transitioned(previous, cause, reason)
        if step.freeze:
            self._freeze()
        if step.thaw:
            self._thaw()
        if step.back:
            r._resumed()
        if step.serving:
            r._serving()
        if step.down:
            r._down()
        if step.spawn:
            r._begin_life()
        if step.shutdown:
            r._shut_down(reason, graceful=graceful)
        if step.decide and end is not None:
            self._decide(reason, end)
        return step

    # -- the restart decision and its timer ------------------------------------------------
    def _decide(self, reason: str, end: LifeEnd) -> None:
        m, host = self.machine, self.r.host
        d: ExitDecision | None
        if end.retry:
            d = m.retry(closing=host.closing, reason=reason)
        else:
            d = m.decide(clean=end.clean, uptime=end.uptime, now=time.monotonic(),
                         closing=host.closing, reason=reason, gone=end.gone)
        if d is None:
            return
        if d.cause is Cause.GIVE_UP:
            host.stats.failures += 1
        if self.fire(d.cause, d.reason).arm:
            self.timer = asyncio.get_running_loop().call_later(d.delay, self._due, d.then)

    def _due(self, reason: str) -> None:
        self.timer = None
        self.fire(Cause.BACKOFF_OVER, reason)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # -- pause -----------------------------------------------------------------------------
    def _freeze(self) -> None:
        r = self.r
        proc = r.process
        if proc is None:  # pragma: no cover - a serving replica has its process
            return
        cgroup = r.host.containment.cgroup_of(proc.token)
        if cgroup is not None:
            try:
                set_frozen(cgroup, True)
                self.frozen = cgroup
                return
            except OSError as exc:
                r.note(f"cgroup.freeze of {cgroup} failed ({exc.strerror}); SIGSTOP")
        proc.kill_group(signal.SIGSTOP)
        self.frozen = True

    def _thaw(self) -> None:
        """Before a resume, a stop, or after a crash: a cgroup left frozen would freeze the
        next process placed in it."""
        frozen, self.frozen = self.frozen, False
        if isinstance(frozen, str):
            try:
                set_frozen(frozen, False)
            except OSError as exc:  # gone with its process (a crash): nothing to thaw
                if exc.errno != errno.ENOENT:
                    self.r.note(f"cgroup.freeze of {frozen} failed ({exc.strerror})")
        elif frozen and self.r.process is not None:
            self.r.process.kill_group(signal.SIGCONT)

    # -- taking the process down -----------------------------------------------------------
    def begin_shutdown(self, *, graceful: bool) -> None:
        r = self.r
        proc = r.process
        assert proc is not None
        if not graceful:
            self.kill(proc)
            return
        # the asking is done here, at once: a mass stop paces its stops (pacing.py), and
        # this write is the dear part of one; what follows if it goes unanswered is a
        # timer, not a task per stopping replica
        then = r._ask_to_stop(proc)
        self.escalate = asyncio.get_running_loop().call_later(
            r.spec.stop_timeout, self._stop_unanswered, proc, then)

    def _stop_unanswered(self, proc: ChildProcess, sig: int) -> None:
        """The stop's grace is over and `proc` (not r.process: that may be the next one)
        has not exited: SIGTERM (`stop_signal`), and after another grace, SIGKILL."""
        self.escalate = None
        if proc.pidfd < 0 or proc is not self.r.process:  # its exit is seen, if not settled
            return
        grace = self.r.spec.stop_timeout
        first = self.r.spec.stop_signum  # SIGTERM unless stop_signal says otherwise
        if sig != signal.SIGKILL:
            self.machine.escalate_anew(f"{first.name} after {grace:g} s")
            proc.kill_group(sig)
            self.escalate = asyncio.get_running_loop().call_later(
                grace, self._stop_unanswered, proc, signal.SIGKILL)
        else:
            self.machine.escalate_anew(f"SIGKILL after {grace:g} s" if first == signal.SIGKILL
                                       else f"SIGKILL after ignoring {first.name} for "
                                       f"{grace:g} s")
            self.kill(proc)

    def kill(self, proc: ChildProcess) -> None:
        """SIGKILL to the group; if the process is not reaped within KILL_GRACE, it is
        given up on (_unreaped)."""
        proc.kill_group(signal.SIGKILL)
        self.cancel_escalation()
        self.escalate = asyncio.get_running_loop().call_later(
            KILL_GRACE, self._unreaped, proc)

    def cancel_escalation(self) -> None:
        if self.escalate is not None:
            self.escalate.cancel()
            self.escalate = None

    def _unreaped(self, proc: ChildProcess) -> None:
        """`proc` outlived SIGKILL by KILL_GRACE (uninterruptible sleep): the life ends now,
        so stop() returns and the policy decides; the process stays watched until reaped."""
        self.escalate = None
        r = self.r
        if proc is not r.process or proc.exited.done():
            return
        r.host.stats.stuck_after_kill += 1
        stuck = f"not reaped {KILL_GRACE:g} s after SIGKILL: given up"
        self.machine.escalated(stuck)
        r.note(f"pid {proc.pid} was {stuck} (in uninterruptible sleep?); it is reaped "
               "when it dies")
        proc.exited.add_done_callback(lambda _: self._late_reap(proc))
        if r._init is not None:
            r._init.cancel()
            r._init = None
        reason = self.machine.taken_down_for() or f"corral error: pid {proc.pid} {stuck}"
        r._end_life(reason, None, clean=False, uptime=r._uptime_now())

    def _late_reap(self, proc: ChildProcess) -> None:
        self.r.host.containment.ended(proc.token)
        proc.close()
        self.r.note(f"pid {proc.pid}, given up on after SIGKILL, is reaped")
