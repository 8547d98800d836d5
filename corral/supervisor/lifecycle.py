"""The lifecycle of a supervised process, as pure data.

Every edge a process may take is listed in TRANSITIONS; taking any other is a bug and
raises. Dependency-free on purpose, so it reads like the diagram in DESIGN.md section 4:

    Initial -spawn-> Starting -initialize ok-> Ready -task-> Busy -done-> Idle -task-> Busy
    any running state -stop / hang / cap / start timeout-> ShuttingDown -> Terminated
    any running state -crash (the process is already gone)-> Terminated
    Terminated -policy says restart-> Backoff -delay over-> Starting
    Terminated -too many restarts in the window-> Failed (stays down until started by hand)
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    INITIAL = "initial"
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    IDLE = "idle"
    SHUTTING_DOWN = "shutting_down"
    TERMINATED = "terminated"
    BACKOFF = "backoff"
    FAILED = "failed"


S = State

# has answered initialize and can take work
SERVING = frozenset({S.READY, S.BUSY, S.IDLE})
# a process exists and is meant to keep running
RUNNING = frozenset({S.STARTING}) | SERVING
# a process exists (maybe on its way out)
LIVE = RUNNING | {S.SHUTTING_DOWN}
# no process, and none will be started without an operator or a policy
STOPPED = frozenset({S.INITIAL, S.TERMINATED, S.FAILED})

TRANSITIONS: dict[State, frozenset[State]] = {
    S.INITIAL: frozenset({S.STARTING}),
    S.STARTING: frozenset({S.READY, S.SHUTTING_DOWN, S.TERMINATED}),
    S.READY: frozenset({S.BUSY, S.SHUTTING_DOWN, S.TERMINATED}),
    S.BUSY: frozenset({S.IDLE, S.SHUTTING_DOWN, S.TERMINATED}),
    S.IDLE: frozenset({S.BUSY, S.SHUTTING_DOWN, S.TERMINATED}),
    S.SHUTTING_DOWN: frozenset({S.TERMINATED}),
    # Terminated -> Starting is a start by hand; -> Backoff / Failed is the restart policy.
    S.TERMINATED: frozenset({S.STARTING, S.BACKOFF, S.FAILED}),
    # Backoff -> Terminated: stopped by hand while waiting to restart.
    S.BACKOFF: frozenset({S.STARTING, S.TERMINATED}),
    S.FAILED: frozenset({S.STARTING}),
}


class IllegalTransition(RuntimeError):
    """A transition not in the table: always a bug in corral, never an operator error."""


def check(current: State, target: State) -> None:
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(f"illegal transition {current.value} -> {target.value}")
