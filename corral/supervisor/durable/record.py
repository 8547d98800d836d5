"""A durable call as it is kept, whatever its kind, and its steps' rows."""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import msgspec

WHOLE = -1  # the item of a step's own row (a workflow map's items are 0...)
STEP_ENDED = frozenset({"succeeded", "failed", "skipped", "cancelled", "timed_out", "lost"})
CALL_ENDED = frozenset({"succeeded", "failed", "cancelled", "timed_out"})

StepKey = tuple[str, int]  # (step, item)


class StepRow(msgspec.Struct):  # a spawn tree holds one per child: thousands pending
    step: str
    item: int
    status: str  # running, or one of STEP_ENDED
    task_id: str | None = None  # its task's (a nested workflow step's: its run's) id
    started: float | None = None
    ended: float | None = None
    output: Any = None
    error: str | None = None


class StepEnd(msgspec.Struct, frozen=True):
    """How a step ended: its status (one of STEP_ENDED), its output and error."""

    status: str
    output: Any = None
    error: str | None = None


class CallRecord(msgspec.Struct):
    """A call as a store keeps it: `kind` says whose planner reads `definition` (pinned
    when the call started); `rows` without their outputs (read back when asked for)."""

    call_id: str
    kind: str
    name: str
    definition: bytes
    input: Any
    status: str  # running, or one of CALL_ENDED
    created: float
    tenant: str | None = None
    ended: float | None = None
    deadline: float | None = None
    output: Any = None
    error: str | None = None
    revision: int | None = None  # of a definition added at runtime (None: the config's)
    agents: list[str] | None = None  # every agent it may run (None: not known)
    traceparent: str | None = None  # the caller's W3C context, as it was when it started
    tracestate: str | None = None
    rows: dict[StepKey, StepRow] = msgspec.field(default_factory=dict)


class Durable(Protocol):
    """A call as the engine drives it: its planner's own record, made a CallRecord to be kept."""

    @property
    def call_id(self) -> str: ...

    status: str
    error: str | None
    ended: float | None
    rows: dict[StepKey, StepRow]

    @property
    def deadline(self) -> float | None: ...

    @property
    def tenant(self) -> str | None: ...

    def record(self) -> CallRecord: ...


class CallHandover(NamedTuple):
    """A call whose holder (a node incarnation) died, taken here: its planner drives it on."""

    record: CallRecord
    holder: str
