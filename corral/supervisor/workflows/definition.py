"""A workflow's definition as the config (`[workflows.NAME]`) and the API write it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from ..errors import MissingReferent

MAX_CONCURRENCY = 1000
MAX_STEPS = 200
# items one map step may run: each is a task, and a row the run keeps (with its output)
# while it lives, so a list from a caller's input is bounded as the definition's steps are
MAX_MAP_ITEMS = 10_000


class WorkflowError(ValueError):
    """A definition that cannot run; the text says where and why."""


class WorkflowMissing(WorkflowError, MissingReferent):
    """A workflow's step names an agent or a workflow there is not."""


class Condition(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`when`: a reference compared to a value (`==`, `!=`), or whether it exists."""

    ref: str
    op: Literal["==", "!=", "exists", "missing"] = "=="
    value: Any = None


class StepSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    # what runs it: an agent (a task of it), or another workflow (a run of it, nested);
    # or nothing: it waits for the run's signal of this name (its output the signal's data)
    agent: str | None = None
    workflow: str | None = None
    signal: str | None = None
    # what the agent is sent: JSON with references (refs.py); absent (or null): the run's
    # input for the first step, a join's list, a map's item, else the step before's output
    input: Any = None
    map: str | None = None  # a reference to a list: one task per item ($item, $index)
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=MAX_CONCURRENCY)] = 8
    join: str | None = None  # a map step: this step's input is the list of its outputs
    when: Condition | None = None  # else the step is skipped
    timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None  # each task's, a signal's wait
    retries: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None  # each task's
    # a signal step past its timeout: fails (the run with it), or is skipped (output null);
    # None: fails (unset, so a table shown has no key the file did not write)
    on_timeout: Literal["fail", "skip"] | None = None


class WorkflowSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    steps: Annotated[list[StepSpec], msgspec.Meta(min_length=1, max_length=MAX_STEPS)]
    timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None  # the whole run's
    description: str = ""
