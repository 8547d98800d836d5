"""A team's call as it is kept: a durable call of kind "team", its definition pinned, each
step (the router's, a member's, the leader's, a leader's tool call) naming its task."""

from __future__ import annotations

from typing import Any

import msgspec

from ..durable import WHOLE, CallRecord, StepRow
from ..durable.record import StepKey
from .definition import TeamSpec

KIND = "team"


def key_of(key: str) -> StepKey:
    """A step's row key: `key` is "router", "member:NAME", "leader", or
    "tool:MEMBER:HASH:N" (the leader's N-th call of that member with those arguments)."""
    return (key, WHOLE)


def driven_with(record: CallRecord) -> list[str]:
    """The agents a node taking the call over must run itself: a coordinate team's leader."""
    if record.kind != KIND:
        return []
    leader = msgspec.json.decode(record.definition, type=TeamSpec).leader
    return [leader] if leader is not None else []


class TeamCall(msgspec.Struct):
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
    rows: dict[StepKey, StepRow] = msgspec.field(default_factory=dict)
    # the caller's W3C context: its steps' tasks are children of it (with [tracing])
    traceparent: str | None = None
    tracestate: str | None = None

    @property
    def deadline(self) -> float | None:
        return None  # (each step's task has the team's `timeout`, the call none)

    def record(self) -> CallRecord:
        return CallRecord(self.call_id, KIND, self.team, msgspec.json.encode(self.spec),
                          self.input, self.status, self.created, self.tenant, self.ended,
                          None, self.output, self.error, agents=self.spec.agents,
                          traceparent=self.traceparent, tracestate=self.tracestate)

    @classmethod
    def kept(cls, record: CallRecord) -> TeamCall:
        return cls(record.call_id, record.name,
                   msgspec.json.decode(record.definition, type=TeamSpec), record.input,
                   record.status, record.created, record.tenant or "", record.ended,
                   record.output, record.error, record.rows,
                   traceparent=record.traceparent, tracestate=record.tracestate)
