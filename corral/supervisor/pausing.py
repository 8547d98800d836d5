"""Pause and resume of an agent's replicas (corral pause|resume NAME[#N]): which replicas
a command names, and why it is refused."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import jsonrpc
from ..text import plural
from .lifecycle import Cause

if TYPE_CHECKING:
    from .agent import Agent
    from .replica import Replica


class PauseRefused(jsonrpc.RpcError):
    """A replica named is in no state to be paused (or resumed); nothing was done."""

    def __init__(self, message: str) -> None:
        super().__init__(jsonrpc.CONFLICT, message)


def selected(agent: Agent, index: int | None) -> list[Replica]:
    """Every replica of `agent`, or replica `index` (NOT_FOUND if it has none such)."""
    if index is None:
        return list(agent.replicas)
    if not 0 <= index < len(agent.replicas):
        raise jsonrpc.RpcError(jsonrpc.NOT_FOUND, f"no such replica: {agent.name}#{index} "
                               f"({agent.name} has "
                               f"{plural(len(agent.replicas), 'replica')})")
    return [agent.replicas[index]]


def to_pause(agent: Agent, index: int | None) -> list[Replica]:
    """The replicas a pause freezes: every one named must be serving or paused already
    (a second pause changes nothing), or none is paused: an agent paused but for a
    replica in backoff would serve again once that one started."""
    reps = selected(agent, index)
    if not reps:
        raise PauseRefused(f"agent {agent.name} has no replicas to pause")
    for r in reps:
        if not (r.machine.paused or r.machine.moves(Cause.PAUSE)):
            raise PauseRefused(f"replica {r.label} is {r.state.value}: only a running "
                               "replica can be paused")
    return [r for r in reps if r.machine.moves(Cause.PAUSE)]


def to_resume(agent: Agent, index: int | None) -> list[Replica]:
    """The paused replicas among those named; refused when there is none."""
    reps = selected(agent, index)
    paused = [r for r in reps if r.machine.moves(Cause.RESUME)]
    if not paused:
        if index is not None:
            r = reps[0]
            raise PauseRefused(f"replica {r.label} is {r.state.value}: only a paused "
                               "replica can be resumed")
        raise PauseRefused(f"agent {agent.name} has no paused replica")
    return paused
