"""A team's call as it is kept: the definition it started on, its input and outcome, and
its steps (the router's, each member's, the leader's, each tool call of the leader's),
each naming its task. What keeps them is a `CallStore`: the daemon's is SQLite
(daemon/teams/store.py); without one they live in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .definition import TeamSpec

CALL_ENDED = frozenset({"succeeded", "failed", "cancelled"})
STEP_ENDED = frozenset({"succeeded", "failed", "cancelled", "timed_out", "lost"})


@dataclass
class CallStep:
    """`key`: "router", "member:NAME", "leader", or "tool:MEMBER:HASH:N" (the leader's
    N-th call of that member with those arguments)."""

    key: str
    status: str  # running, or one of STEP_ENDED
    task_id: str | None = None
    started: float | None = None
    ended: float | None = None
    output: Any = None
    error: str | None = None

    @property
    def member(self) -> str | None:
        kind, _, rest = self.key.partition(":")
        return rest.partition(":")[0] if kind in ("member", "tool") else None


@dataclass
class TeamCall:
    call_id: str  # a task id: the call is shown as a task of the team
    team: str
    spec: TeamSpec  # pinned: a reload does not change a call under way
    input: Any
    status: str  # running, or one of CALL_ENDED
    created: float
    tenant: str = ""
    ended: float | None = None
    output: Any = None
    error: str | None = None
    steps: dict[str, CallStep] = field(default_factory=dict)
    # the caller's W3C context: its steps' tasks are children of it (with [tracing])
    traceparent: str | None = None
    tracestate: str | None = None


class CallStore(Protocol):
    async def save_call(self, call: TeamCall) -> None:
        """Durable when it returns."""

    async def save_step(self, call_id: str, step: CallStep) -> None:
        """Durable when it returns: a step's task id before its task is submitted."""


class MemoryStore:
    """No store: an embedded engine's calls (the Python API), not kept across a restart."""

    async def save_call(self, call: TeamCall) -> None:
        return None

    async def save_step(self, call_id: str, step: CallStep) -> None:
        return None
