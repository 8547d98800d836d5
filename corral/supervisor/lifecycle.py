"""The lifecycle of a supervised process: the machine, as pure data and code without I/O
(its states in short: docs/architecture.md). A table keyed by (state, cause) gives the next
state and the actions the replica runs; a pair not in the table is a bug in corral and
raises. `Machine` holds the state and the extra bits, all unit-tested without processes.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import NamedTuple

from .restart import RestartPolicy


class State(StrEnum):
    INITIAL = "initial"
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    IDLE = "idle"
    PAUSED = "paused"  # frozen by an operator, its memory kept (corral pause)
    SHUTTING_DOWN = "shutting_down"
    TERMINATED = "terminated"
    BACKOFF = "backoff"
    FAILED = "failed"


class Cause(StrEnum):
    """What made a transition: every event carries one, and restarts are counted by it."""

    SPAWN = "spawn"  # a start by hand: forgives past restarts
    READY = "ready"  # the handshake was answered
    TASK = "task"
    DONE = "done"  # the last running task ended
    STOP = "stop"  # an operator's (stop, scale down, replace, remove, shutdown): stay down
    HANG = "hang"  # no heartbeat, or no answer to the handshake in time
    # a limit: a soft one corral acts on (RSS, a tenant's memory or CPU), or, as what ended
    # a life it did not take down, a hard one the exit reason names (RLIMIT_*, OOM kill)
    CAP = "cap"
    UNREAD = "unread"  # what corral sent it went unread past the budget (a hang of its stdin)
    UNHEALTHY = "unhealthy"  # the handshake failed, a remote session was lost
    ERROR = "error"  # corral's own handling of the life failed (a bug, logged)
    EXIT = "exit"  # the process corral was taking down is gone
    CRASH = "crash"  # the process is gone (or never spawned) without corral asking
    POLICY_RESTART = "policy restart"
    # a spawn failed for want of corral's own resources: tried again, and no restart (the
    # process never ran), so not counted as one
    SPAWN_RETRY = "spawn retry"
    BACKOFF_OVER = "backoff over"
    GIVE_UP = "give up"
    PAUSE = "pause"  # an operator's: freeze the process where it is
    RESUME = "resume"  # an operator's: let it run on, back to where it was


S = State
C = Cause

SERVING = frozenset({S.READY, S.BUSY, S.IDLE})  # has answered initialize
RUNNING = frozenset({S.STARTING}) | SERVING  # and is meant to keep running
LIVE = RUNNING | {S.PAUSED, S.SHUTTING_DOWN}  # a process exists
# a paused replica is settled: it stays so until an operator resumes it
TRANSIENT = frozenset({S.STARTING, S.SHUTTING_DOWN})
STOPPED = frozenset({S.INITIAL, S.TERMINATED, S.FAILED})
UNSETTLED = TRANSIENT | {S.BACKOFF}

# the reason a replica stopped by a restart someone asked for gives: its `last exit`
# then reads as what happened, not as a fault
RESTARTED = "restarted on request"
# a replica held down by an operator's stop (before a daemon's restart too)
STOPPED_BY_HAND = "stopped by hand"

# corral decided the process must go
TAKE_DOWN = frozenset({C.STOP, C.HANG, C.CAP, C.UNREAD, C.UNHEALTHY, C.ERROR})


class MachineStep(NamedTuple):
    """A row of the table: the next state (None: stay, emit nothing) and what follows."""

    target: State | None
    spawn: bool = False  # begin a life: spawn a process
    shutdown: bool = False  # take the process down (ask, or kill: the caller's choice)
    decide: bool = False  # the life is over: ask the restart policy
    arm: bool = False  # arm the timer (the backoff's delay)
    # a restart is decided: counted now, by what ended the life (during its backoff the
    # replica has restarted as far as anyone reading its status is concerned)
    tally: bool = False
    serving: bool = False  # tell the host: the replica takes work
    down: bool = False  # tell the host: the replica is down (maybe for good)
    # the extra bits
    forgive: bool = False  # a start by hand: the policy's past and stay-down forgotten
    fresh: bool = False  # a new life: no down reason, no escalation
    stay_down: bool = False  # no restart after this
    remember: bool = False  # keep the cause and reason the process is taken down for
    # pause and resume
    freeze: bool = False  # stop the process where it is; the state it was in is kept
    thaw: bool = False  # let a frozen process run again (before it is asked to stop)
    back: bool = False  # the next state is the one it was paused in (target: None)
    # while paused: a task's start or end changes the state it goes back to, silently
    behind: bool = False


IGNORE = MachineStep(None)


def _table() -> dict[tuple[State, Cause], MachineStep]:
    t: dict[tuple[State, Cause], MachineStep] = {}

    def rows(states: Iterable[State], causes: Iterable[Cause], step: MachineStep) -> None:
        for s in states:
            for c in causes:
                assert (s, c) not in t, (s, c)
                t[s, c] = step

    stopped_or_waiting = (S.INITIAL, S.TERMINATED, S.FAILED, S.BACKOFF)
    rows(stopped_or_waiting, [C.SPAWN],
         MachineStep(S.STARTING, spawn=True, forgive=True, fresh=True))
    rows([S.BACKOFF], [C.BACKOFF_OVER], MachineStep(S.STARTING, spawn=True, fresh=True))
    rows(LIVE, [C.SPAWN, C.BACKOFF_OVER], IGNORE)  # it runs already
    rows(STOPPED, [C.BACKOFF_OVER], IGNORE)  # a timer outlived its backoff
    rows([S.STARTING], [C.READY], MachineStep(S.READY, serving=True))
    rows([S.READY, S.IDLE], [C.TASK], MachineStep(S.BUSY))
    # busy, or on its way out (paused: below)
    rows(sorted(set(State) - {S.READY, S.IDLE, S.PAUSED}), [C.TASK], IGNORE)
    rows([S.BUSY], [C.DONE], MachineStep(S.IDLE))
    rows(sorted(set(State) - {S.BUSY, S.PAUSED}), [C.DONE], IGNORE)
    rows(RUNNING, TAKE_DOWN - {C.STOP}, MachineStep(S.SHUTTING_DOWN, shutdown=True, remember=True))
    rows(RUNNING, [C.STOP], MachineStep(S.SHUTTING_DOWN, shutdown=True, remember=True,
                                        stay_down=True))
    # a stop while it waits to restart: no process to take down
    rows([S.BACKOFF], [C.STOP], MachineStep(S.TERMINATED, stay_down=True, down=True))
    rows(STOPPED | {S.SHUTTING_DOWN}, [C.STOP], MachineStep(None, stay_down=True))
    # on its way out already: the first reason stands; corral's own error replaces it
    rows([S.SHUTTING_DOWN], TAKE_DOWN - {C.STOP, C.ERROR}, IGNORE)
    rows([S.SHUTTING_DOWN], [C.ERROR], MachineStep(None, remember=True))
    rows(stopped_or_waiting, TAKE_DOWN - {C.STOP}, IGNORE)  # no process
    rows([S.SHUTTING_DOWN], [C.EXIT], MachineStep(S.TERMINATED, decide=True, down=True))
    rows(RUNNING, [C.CRASH], MachineStep(S.TERMINATED, decide=True, down=True))
    rows([S.TERMINATED], [C.POLICY_RESTART], MachineStep(S.BACKOFF, arm=True, tally=True))
    rows([S.TERMINATED], [C.SPAWN_RETRY], MachineStep(S.BACKOFF, arm=True))
    rows([S.TERMINATED], [C.GIVE_UP], MachineStep(S.FAILED, down=True))
    # pause: a serving replica freezes; resume thaws it and it serves again as it was. A
    # replica on its way up or down, or without a process, is not paused (the command
    # says why); a paused one paused again stays as it is
    rows(SERVING, [C.PAUSE], MachineStep(S.PAUSED, freeze=True))
    rows(sorted(set(State) - SERVING), [C.PAUSE], IGNORE)
    rows([S.PAUSED], [C.RESUME], MachineStep(None, back=True, thaw=True, serving=True))
    rows(sorted(set(State) - {S.PAUSED}), [C.RESUME], IGNORE)
    # while paused: no task is started on it (it is not serving), but an answer read after
    # the freeze ends one
    rows([S.PAUSED], [C.TASK, C.DONE], MachineStep(None, behind=True))
    # taken down while paused: thawed first, so that it can be asked to stop and handle
    # SIGTERM; a crash (killed from outside, the OOM killer) is a crash
    rows([S.PAUSED], TAKE_DOWN - {C.STOP},
         MachineStep(S.SHUTTING_DOWN, shutdown=True, remember=True, thaw=True))
    rows([S.PAUSED], [C.STOP], MachineStep(S.SHUTTING_DOWN, shutdown=True, remember=True,
                                           stay_down=True, thaw=True))
    rows([S.PAUSED], [C.CRASH], MachineStep(S.TERMINATED, decide=True, down=True, thaw=True))
    return t


TABLE = _table()
# the same rows by state, then cause: a lookup per event without a key built for it
_ROWS: dict[State, dict[Cause, MachineStep]] = {s: {} for s in State}
for (_s, _c), _step in TABLE.items():
    _ROWS[_s][_c] = _step


class IllegalTransition(RuntimeError):
    """A pair not in the table: always a bug in corral, never an operator error."""


class ExitDecision(NamedTuple):
    """The answer to an exit: the cause to fire, its reason, the delay, and the reason of
    the start at the delay's end."""

    cause: Cause
    reason: str
    delay: float = 0.0
    then: str = ""


# a spawn that fails for want of corral's own resources (fds, memory, processes) is not
# the agent's failure: retried, with backoff up to this, without counting as a restart
RESOURCE_RETRY_MAX = 5.0


class Machine:
    """A replica's state, the extra bits, and the table applied to them; no I/O. `fire`
    gives the step whose actions the replica's executor runs, and the rest of corral asks
    a replica's state through the predicates below, never by comparing states itself
    (tests/test_machine.py walks the code for that)."""

    __slots__ = ("_down_cause", "_down_reason", "_escalation", "_paused_in",
                 "_restart_cause", "_spawn_retries", "_stay_down", "policy", "reason",
                 "restarts", "state")

    def __init__(self, policy: RestartPolicy) -> None:
        self.state = State.INITIAL
        self.reason = "not started"
        self.policy = policy
        self.restarts = 0  # restarts decided by the policy, in all (a start by hand keeps them)
        self._stay_down = False
        self._down_reason: str | None = None  # why corral is taking the process down
        self._down_cause: Cause | None = None
        self._escalation: str | None = None  # how far the stop went past asking
        self._restart_cause = Cause.CRASH  # what ended the life the policy chose to restart
        self._paused_in: State | None = None  # the state a paused replica goes back to
        self._spawn_retries = 0  # consecutive spawns failed for corral's own resources

    def row(self, cause: Cause) -> MachineStep:
        try:
            return _ROWS[self.state][cause]
        except KeyError:
            raise IllegalTransition(
                f"no transition from {self.state.value} on {cause.value}") from None

    def fire(self, cause: Cause, reason: str) -> MachineStep:
        """Apply the row of (state, cause): the extra bits, then the state (no row leads a
        state to itself)."""
        step = self.row(cause)
        if step.forgive:
            self.policy.reset()
            self._stay_down = False
        if step.fresh:
            self._down_reason = self._down_cause = self._escalation = None
            self._paused_in = None
        if step.stay_down:
            self._stay_down = True
        if step.remember:
            self._down_reason, self._down_cause = reason, cause
        if step.tally:
            self.restarts += 1
        target = step.target
        if step.behind:
            assert self._paused_in is not None
            self._paused_in = _ROWS[self._paused_in][cause].target or self._paused_in
        if step.freeze:
            self._paused_in = self.state
        if step.back:
            target = self._paused_in
        if step.thaw:
            self._paused_in = None
        if target is not None:
            self.state, self.reason = target, reason
        return step

    def moves(self, cause: Cause) -> bool:
        """Whether `cause` does anything now (a reason need not be made for nothing)."""
        step = _ROWS[self.state].get(cause)  # (asked at every task's start: no `row` call)
        return (step if step is not None else self.row(cause)) is not IGNORE

    # -- what the rest of corral asks ------------------------------------------------------
    @property
    def takes_work(self) -> bool:
        return self.state in SERVING

    @property
    def idle(self) -> bool:
        """Serving, and has run a task since it was Ready (none running now)."""
        return self.state is State.IDLE

    @property
    def starting(self) -> bool:
        return self.state is State.STARTING

    @property
    def running(self) -> bool:
        return self.state in RUNNING

    @property
    def live(self) -> bool:
        """A process exists (maybe frozen, maybe on its way out)."""
        return self.state in LIVE

    @property
    def paused(self) -> bool:
        return self.state is State.PAUSED

    @property
    def leaving(self) -> bool:
        return self.state is State.SHUTTING_DOWN

    @property
    def failed(self) -> bool:
        """Given up on by the restart policy: down until started by hand."""
        return self.state is State.FAILED

    @property
    def will_run_again(self) -> bool:
        """It has a process or a restart is due: work given to its agent may yet run on
        it."""
        return self.state in LIVE or self.state is State.BACKOFF

    @property
    def settled(self) -> bool:
        """What a wait for a settled fleet (READY=1 to systemd) waits for."""
        return self.state not in UNSETTLED

    @property
    def untouched(self) -> bool:
        return self.state is State.INITIAL

    @property
    def down(self) -> bool:
        """No process and none coming without a start."""
        return self.state in STOPPED

    @property
    def startable(self) -> bool:
        """No process and none coming, and not given up on."""
        return self.state is State.INITIAL or self.state is State.TERMINATED

    @property
    def ended(self) -> bool:
        """Its process ended and the policy starts no other: down, not given up on."""
        return self.state is State.TERMINATED

    @property
    def never_started(self) -> bool:
        """Not started, or given up on: nothing brings it up but a start."""
        return self.state is State.INITIAL or self.state is State.FAILED

    @property
    def stays_down(self) -> bool:
        """An operator's stop holds: no restart after this life (until a start by hand)."""
        return self._stay_down

    @property
    def stopped_by_hand(self) -> bool:
        """Down until an operator starts it: stopped by one, or never started."""
        return self.state is State.INITIAL or (self.state in STOPPED and self._stay_down)

    @property
    def paused_in(self) -> State | None:
        return self._paused_in

    @property
    def restart_cause(self) -> Cause:
        """What ended the life whose restart was decided last (as restarts are counted)."""
        return self._restart_cause

    # -- the life's end --------------------------------------------------------------------
    def escalated(self, how: str) -> None:
        """The stop went past asking (`how`: SIGTERM, SIGKILL, given up after it)."""
        self._escalation = how if self._escalation is None else f"{self._escalation}; {how}"

    def escalate_anew(self, how: str) -> None:
        self._escalation = how

    @property
    def exit_cause(self) -> Cause:
        """The cause to fire when the process is gone: corral took it down, or it went."""
        return Cause.EXIT if self._down_cause is not None else Cause.CRASH

    @property
    def down_reason(self) -> str | None:
        return self._down_reason

    @property
    def down_cause(self) -> Cause | None:
        return self._down_cause

    def taken_down_for(self) -> str | None:
        """Why corral took the process down (and how far the stop had to go), or None
        when it went by itself."""
        if self._down_reason is None:
            return None
        if self._escalation:
            return f"{self._down_reason} ({self._escalation})"
        return self._down_reason

    @property
    def clean_exit_asked(self) -> bool:
        """(An exit status of 0 then is no clean exit of its own accord.)"""
        return self._down_reason is not None

    def spawned(self) -> None:
        self._spawn_retries = 0

    def retry(self, *, closing: bool, reason: str) -> ExitDecision | None:
        """After a spawn that failed for want of corral's own resources: the process never
        ran, so no restart of it (None: stopped by hand, or the supervisor closing)."""
        if self._stay_down or closing:
            return None
        delay = min(self.policy.backoff(self._spawn_retries), RESOURCE_RETRY_MAX)
        self._spawn_retries += 1
        return ExitDecision(Cause.SPAWN_RETRY, f"retrying in {delay:.2f} s (not counted as a "
                            f"restart) after: {reason}", delay,
                            f"spawn retry #{self._spawn_retries}")

    def decide(self, *, clean: bool, uptime: float, now: float, closing: bool,
               reason: str, gone: Cause = Cause.CRASH) -> ExitDecision | None:
        """The restart decision after an exit: None when the replica stays down. `gone`:
        what ended a life corral did not take down, as restarts are counted."""
        if self._stay_down or closing:
            return None
        d = self.policy.on_exit(clean_exit=clean, uptime=uptime, now=now)
        window = self.policy.start
        if d.failed_start and d.give_up:
            return ExitDecision(Cause.GIVE_UP,
                                f"failed to start: exited within start_secs ({window.secs:g} s) "
                                f"{d.failed_start} times in a row (start_retries = "
                                f"{window.retries}); last exit: {reason}")
        if d.failed_start:
            reason = (f"failed start {d.failed_start} of {window.retries + 1} (up "
                      f"{uptime:.2f} s, under start_secs = {window.secs:g}): {reason}")
        if d.restart:
            self._restart_cause = self._down_cause or gone
            return ExitDecision(Cause.POLICY_RESTART,
                                f"restarting in {d.delay:.2f} s after: {reason}", d.delay,
                                f"restart #{self.restarts + 1}")
        if d.give_up:
            return ExitDecision(Cause.GIVE_UP,
                                f"too many restarts ({self.policy.max_restarts} within "
                                f"{self.policy.window:g} s); last exit: {reason}")
        return None


def began_serving(previous: State, state: State) -> bool:
    return state in SERVING and previous not in SERVING


def at_work(previous: State, state: State) -> bool:
    """A serving replica's move between READY, BUSY and IDLE: a task taken or ended."""
    return previous in SERVING and state in SERVING


def serving_changed(previous: State, state: State) -> bool:
    return (previous in SERVING) != (state in SERVING)
