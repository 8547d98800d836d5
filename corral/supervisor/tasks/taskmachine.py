"""A task's lifecycle: the machine, as pure data and code without I/O (docs/tasks.md
draws it).

A table keyed by (status, cause) gives the next status and what follows; a pair not in it
is a bug and raises. No other module assigns a task's status (tests/test_task_machine.py
walks corral for that); the cluster's Lua (cluster/scripts.py) keeps the same table, held
to it by tests/cluster/test_task_machine_lua.py, and a takeover's loss and retry is this
machine's own decision (cluster/reaper.py `decided`), which the Lua only keeps.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, NamedTuple, Protocol, TypeVar

from ... import jsonrpc
from ...jsonrpc import RpcError
from ...taskviews import TaskFailure
from .. import losses
from ..lifecycle import IllegalTransition

if TYPE_CHECKING:
    from ...taskviews import Attempt


class TaskStatus(enum.StrEnum):
    """A task's status; the values are the wire's, the journal's and Redis's."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"  # running, a call of it held for a person (an approval, a question)
    # waiting for a person with no attempt on a worker (suspend_after): resumed by replay
    SUSPENDED = "suspended"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    LOST = "lost"


TERMINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.TIMED_OUT,
                      TaskStatus.CANCELLED, TaskStatus.LOST})
# the statuses a journal gives back after a restart (a finished task is not restored)
UNFINISHED = frozenset({TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.WAITING,
                        TaskStatus.SUSPENDED})
# the statuses of a task whose attempt is on a worker
ON_WORKER = frozenset({TaskStatus.RUNNING, TaskStatus.WAITING})


class TaskCause(enum.StrEnum):
    """What moves a task."""

    START = "start"  # a worker takes its attempt
    ANSWERED = "answered"  # the worker answered the attempt with its output
    FAILED = "failed"  # the agent answered an error, or the attempt could not be made
    TIMED_OUT = "timed out"  # its deadline passed
    # lost to infrastructure: its worker killed from outside or hung, the daemon stopped
    # or restarted under it, its node died (losses.Loss.INFRA)
    LOST = "lost"
    # its worker died of its own doing or a cap, or was stopped by hand: as its retry policy says
    CRASHED = "crashed"
    CANCEL = "cancel"  # someone cancelled it (or its worker answered that it did)
    DROPPED = "dropped"  # its agent will not run it (failed, down, gone)
    RELEASED = "released"  # a cluster node gave its claim back: nothing of it failed
    WAIT = "wait"  # a call of its attempt waits for a person (inbox.py)
    RESUME = "resume"  # what it waited for has ended
    SUSPEND = "suspend"  # it waited for a person past its agent's suspend_after


S = TaskStatus
C = TaskCause
INFRA = losses.Loss.INFRA
# the members a task's every start and end read, as names of this module: a member read
# through its class goes through the enum's metaclass, many times the cost of a global
_QUEUED, _RUNNING, _WAITING, _SUSPENDED, _SUCCEEDED = (S.QUEUED, S.RUNNING, S.WAITING,
                                                      S.SUSPENDED, S.SUCCEEDED)


class TaskStep(NamedTuple):
    """A row of the table: the next status (None: nothing changes) and what follows."""

    target: TaskStatus | None
    # the attempt ended badly: the task's retry policy is asked, and a retry (RETRY)
    # taken instead of this row when it names the outcome (`target`) and one is left
    retry: bool = False
    retried: bool = False  # a retry: the task waits again (for its backoff)
    ends: bool = False  # the task's one outcome: kept, journaled, its waiters told
    # lost to infrastructure: retry_lost is asked before `retries`
    infra: bool = False
    # lost and not retried because its policy says at most once (retry_lost = 0)
    once: bool = False


IGNORE = TaskStep(None)
RETRY = TaskStep(S.QUEUED, retried=True)
AT_MOST_ONCE = TaskStep(S.LOST, ends=True, once=True)
# what the error of a task lost and not run again for its retry_lost = 0 adds
AT_MOST_ONCE_NOTE = "not run again: at most once, retry_lost = 0"


def _table() -> dict[tuple[TaskStatus, TaskCause], TaskStep]:
    t: dict[tuple[TaskStatus, TaskCause], TaskStep] = {}

    def rows(statuses: Iterable[TaskStatus], causes: Iterable[TaskCause],
             step: TaskStep) -> None:
        for s in statuses:
            for c in causes:
                assert (s, c) not in t, (s, c)
                t[s, c] = step

    on_worker = sorted(ON_WORKER)
    rows([S.QUEUED], [C.START], TaskStep(S.RUNNING))
    rows(on_worker, [C.ANSWERED], TaskStep(S.SUCCEEDED, ends=True))
    rows(on_worker, [C.FAILED], TaskStep(S.FAILED, retry=True, ends=True))
    rows(on_worker, [C.TIMED_OUT], TaskStep(S.TIMED_OUT, retry=True, ends=True))
    rows(on_worker, [C.LOST], TaskStep(S.LOST, retry=True, ends=True, infra=True))
    rows(on_worker, [C.CRASHED], TaskStep(S.LOST, retry=True, ends=True))
    rows([S.QUEUED, *on_worker, S.SUSPENDED], [C.CANCEL], TaskStep(S.CANCELLED, ends=True))
    rows([S.QUEUED, S.SUSPENDED], [C.DROPPED], TaskStep(S.LOST, ends=True))
    rows(on_worker, [C.RELEASED], TaskStep(S.QUEUED))
    rows([S.RUNNING], [C.WAIT], TaskStep(S.WAITING))
    rows([S.WAITING], [C.WAIT], IGNORE)
    rows([S.WAITING], [C.RESUME], TaskStep(S.RUNNING))
    rows([S.WAITING], [C.SUSPEND], TaskStep(S.SUSPENDED))
    rows([S.SUSPENDED], [C.RESUME], TaskStep(S.QUEUED))
    # a task has one outcome: what comes after it changes nothing (never a start: a
    # finished task is in no queue)
    rows(sorted(TERMINAL), sorted(set(TaskCause) - {C.START}), IGNORE)
    return t


TABLE = _table()
# the same rows by status, then cause: a lookup per event without a key built for it
_ROWS: dict[TaskStatus, dict[TaskCause, TaskStep]] = {s: {} for s in TaskStatus}
for (_s, _c), _step in TABLE.items():
    _ROWS[_s][_c] = _step


M = TypeVar("M", bound="TaskMachine")
T = TypeVar("T", bound="TaskMachine", contravariant=True)


class RetryPolicy(Protocol[T]):
    """A task's retry policy (its own, else its agent's), asked when an outcome may be retried."""

    def retried_on(self, task: T, /) -> Collection[str] | None:
        """The outcomes the task's policy retries; None: none (its agent is gone)."""

    def lost_budget(self, task: T, /) -> LostBudget | None:
        """The task's retry_lost and lost attempts (the one just ended too); None: no retry."""


class LostBudget(NamedTuple):
    """What the retry rule reads for an attempt lost to infrastructure."""

    retry_lost: int  # lost attempts a task may have and still run again (0: at most once)
    lost: int  # its attempts lost so far, of every kind (the one just ended among them)


class TaskMachine:
    """A task's status and retries left: `fire` moves it; what the rest of corral decides
    from a task's status it asks here (`queued`, `running`, `ended`)."""

    __slots__ = ("retries_left", "status")

    def __init__(self, retries: int) -> None:
        self.status = _QUEUED
        self.retries_left = retries

    def fire(self: M, cause: TaskCause, policy: RetryPolicy[M] | None = None) -> TaskStep:
        """Apply the row of (status, cause) and, where it asks, the retry rule (a loss to
        infrastructure within retry_lost: no retry spent; else a retry left that `policy` names)."""
        try:
            step = _ROWS[self.status][cause]
        except KeyError:
            raise IllegalTransition(
                f"no task transition from {self.status.value} on {cause.value}") from None
        if step.infra and policy is not None:
            budget = policy.lost_budget(self)
            if budget is not None and budget.retry_lost == 0:
                self.status = S.LOST
                return AT_MOST_ONCE
            if budget is not None and budget.lost <= budget.retry_lost:
                self.status = _QUEUED
                return RETRY
        if step.retry and policy is not None and self.retries_left > 0:
            retried_on = policy.retried_on(self)
            if retried_on is not None and step.target in retried_on:
                self.retries_left -= 1
                step = RETRY
        if step.target is not None:
            self.status = step.target
        return step

    def restored(self, status: str) -> None:
        """A journal's unfinished task, made again after a restart, takes its record's status."""
        if status not in UNFINISHED:
            raise IllegalTransition(f"a task restored from a journal is unfinished, "
                                    f"not {status}")
        self.status = TaskStatus(status)

    # -- what the rest of corral asks ------------------------------------------------------
    @property
    def queued(self) -> bool:
        """Waiting: for a replica, for its time (a delay, a retry's backoff), or for its
        timed-out attempt to stop before its retry."""
        return self.status is _QUEUED

    @property
    def running(self) -> bool:
        """An attempt of it runs on a worker (waiting for a person, or not)."""
        return self.status in ON_WORKER

    @property
    def waiting(self) -> bool:
        """A call of its attempt waits for a person."""
        return self.status is _WAITING

    @property
    def suspended(self) -> bool:
        """It waits for a person with no attempt on a worker (suspend_after)."""
        return self.status is _SUSPENDED

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL


class AttemptOutcome(NamedTuple):
    """What moves a task, with the error it ends with should it end. Cause None: the attempt
    ended late (the task moved on); `again`: the task's retry waited for it to stop."""

    cause: TaskCause | None
    error: TaskFailure | None = None
    again: bool = False


ANSWERED = AttemptOutcome(C.ANSWERED)
LATE = AttemptOutcome(None)
LATE_AGAIN = AttemptOutcome(None, again=True)


def attempt_end(task: TaskMachine, attempt: Attempt, latest: Attempt,
                exc: BaseException | None, handed: str | None) -> AttemptOutcome:
    """The worker answered `attempt` (`exc` None: with its output), or its request ended
    without an answer; `handed`: why the attempt was handed over, when it was. Records
    the attempt's outcome and error, and says what the task does."""
    if attempt.outcome != _RUNNING or task.status in TERMINAL:
        attempt.error = attempt.error or ("answered after the task ended" if exc is None
                                          else getattr(exc, "message", str(exc)))
        return LATE_AGAIN if task.status is _QUEUED and attempt is latest else LATE
    if exc is None:
        attempt.outcome = _SUCCEEDED
        return ANSWERED
    if handed is not None or (isinstance(exc, RpcError) and exc.code == jsonrpc.PEER_CLOSED):
        # lost with its worker, or to a stop (whatever the cancelled worker answered)
        lost = handed if handed is not None else getattr(exc, "message", str(exc))
        attempt.outcome, attempt.error = S.LOST, lost
        # a hand-over is the daemon's; a worker's end says what kind of loss it was
        infra = handed is not None or losses.of_error(getattr(exc, "data", None)) is INFRA
        return AttemptOutcome(C.LOST if infra else C.CRASHED,
                              TaskFailure(jsonrpc.PEER_CLOSED, lost))
    if not isinstance(exc, RpcError):
        attempt.outcome, attempt.error = S.FAILED, str(exc)
        return AttemptOutcome(C.FAILED, TaskFailure(jsonrpc.INTERNAL_ERROR, str(exc)))
    if exc.code == jsonrpc.REQUEST_CANCELLED:
        attempt.outcome = S.CANCELLED
        return AttemptOutcome(C.CANCEL, TaskFailure(exc.code, exc.message))
    attempt.outcome, attempt.error = S.FAILED, exc.message
    return AttemptOutcome(C.FAILED, TaskFailure(exc.code, exc.message, exc.data))


def timed_out(attempt: Attempt, timeout: float) -> AttemptOutcome:
    """A running attempt's deadline passed (its worker is then asked to stop it)."""
    attempt.outcome = S.TIMED_OUT
    return AttemptOutcome(C.TIMED_OUT, TaskFailure(jsonrpc.REQUEST_TIMEOUT,
                                             f"task timed out after {timeout:g} s"))


def failed_outside(attempt: Attempt, error: TaskFailure) -> AttemptOutcome:
    """A running attempt failed from outside its worker (a denied call failing the task)."""
    attempt.outcome, attempt.error = S.FAILED, error.message
    return AttemptOutcome(C.FAILED, error)


def suspended(attempt: Attempt, why: str) -> None:
    """A waiting attempt is stopped to give its slot back."""
    attempt.outcome = S.SUSPENDED
    # one string for every task suspended for the same reason: thousands may wait
    attempt.error = sys.intern(suspension_error(why))


def suspension_error(why: str) -> str:
    return f"{why}: its task resumes by replay when what it asked has ended"


def cancelled(attempt: Attempt) -> None:
    attempt.outcome = S.CANCELLED


# the status a cancel finds, in its words (any other unended: on a worker, running)
_WHILE: dict[str, str] = {S.QUEUED: "queued", S.SUSPENDED: "suspended (waiting for a person)"}


def cancel_failure(status: str, task_id: str = "") -> TaskFailure:
    """A task cancelled in `status` ends with this error on either home (the engine's
    cancel; the cluster's CANCEL, FINISH, takeover); a finished one refuses the cancel."""
    if status in TERMINAL:
        raise RpcError(jsonrpc.CONFLICT, f"task {task_id} already finished ({status})")
    return TaskFailure(jsonrpc.REQUEST_CANCELLED,
                       f"cancelled while {_WHILE.get(status, 'running')}")
