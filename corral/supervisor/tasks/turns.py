"""A session's turns, decided once for every home (decision 1380): when a turn may start,
which runs next, what a turn's end does to its session, and when the session may end.

A table keyed by the session's state and the event, as h11's `_state.py` is, with no
I/O: each store reads the state it keeps, asks `decide`, and applies the move (the
cluster's Lua only while the session is as it was read, cluster/sessionscripts.py).
"""

from __future__ import annotations

from enum import Enum


class Turns(Enum):
    IDLE = "idle"  # no turn of it unfinished
    RUNS = "runs"  # one turn holds its place (queued, held or running), none waits
    LINED = "lined"  # one holds its place, later ones wait in its line


class TurnEvent(Enum):
    SUBMIT = "submit"  # a turn is put in the queue (new, or its retry)
    ENDS = "ends"  # the turn holding the place ended (finished, failed, cancelled, lost)
    LEAVES = "leaves"  # a turn waiting in the line ended (cancelled)
    CLOSE = "close"  # sessions.end


class Move(Enum):
    START = "start"  # the turn takes the place: into the agent's queue
    WAIT = "wait"  # the turn waits at the end of the line
    ADVANCE = "advance"  # the line's first turn takes the place
    REST = "rest"  # the place is free: the session idles toward its session_ttl
    LEAVE = "leave"  # the turn leaves the line; the one holding the place goes on
    END = "end"  # the session and its keys are forgotten
    REFUSE = "refuse"  # not ended: sessions.end_turns' words


RULE: dict[tuple[Turns, TurnEvent], Move] = {
    (Turns.IDLE, TurnEvent.SUBMIT): Move.START,
    (Turns.RUNS, TurnEvent.SUBMIT): Move.WAIT,
    (Turns.LINED, TurnEvent.SUBMIT): Move.WAIT,
    (Turns.RUNS, TurnEvent.ENDS): Move.REST,
    (Turns.LINED, TurnEvent.ENDS): Move.ADVANCE,
    (Turns.LINED, TurnEvent.LEAVES): Move.LEAVE,
    (Turns.IDLE, TurnEvent.CLOSE): Move.END,
    (Turns.RUNS, TurnEvent.CLOSE): Move.REFUSE,
    (Turns.LINED, TurnEvent.CLOSE): Move.REFUSE,
}


def state(holds: bool, waiting: int) -> Turns:
    """The session's state from what a store keeps: whether a turn holds its place, and
    how many wait in its line."""
    if not holds:
        return Turns.IDLE
    return Turns.LINED if waiting else Turns.RUNS


def decide(now: Turns, event: TurnEvent) -> Move | None:
    """The move of `event` in state `now`; None: the event moves nothing (a turn of a
    session ended meanwhile, with its agent)."""
    return RULE.get((now, event))


def ended(holds: bool, waiting: int, in_line: bool) -> Move | None:
    """An ended turn's move on every home, from what its store read of its session:
    whether the turn held its place, its line's length, whether the turn waits in it.
    None: neither (a turn that left its line at its cancel, or whose session ended or
    has moved already)."""
    if holds:
        return decide(state(True, waiting), TurnEvent.ENDS)
    return decide(state(True, waiting), TurnEvent.LEAVES) if in_line else None
