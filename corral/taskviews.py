"""What a task looks like from outside the engine: its outcome, its record, its line in a
listing, its attempts and the usage its worker reported. The CLI imports this module, so
it holds plain Structs and nothing of the engine (no asyncio); the engine computes what
a view derives (`queue_wait`), a decode never does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from .askviews import Ask
from .taskoptions import NO_OPTIONS, TaskOptions


# gc=False: scalars, and a dict of names to scalars, can be in no cycle; a finished task
# that reported usage then adds nothing for the cyclic collector to walk (Endings.ended)
class Usage(msgspec.Struct, gc=False):
    """Tokens and dollars an agent's worker reported (`usage/report`), and in how many
    reports."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    reports: int = 0

    def add(self, input_tokens: int, output_tokens: int, cost_usd: float,
            reports: int = 1) -> None:
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cost_usd += cost_usd
        self.reports += reports


# the models one usage keeps apart; a report of any further model is counted under
# OTHER_MODELS: a worker naming a new model in each report would otherwise grow its
# agent's totals (and /metrics' series) for as long as the daemon runs
MODELS_MAX = 64
OTHER_MODELS = "(other models)"


class ModelUsage(Usage, gc=False):
    """Usage in total and per model (a task's, an agent's since the daemon started): at
    most MODELS_MAX models by name, the rest together under OTHER_MODELS."""

    models: dict[str, Usage] = {}

    def add_model(self, model: str, input_tokens: int, output_tokens: int,
                  cost_usd: float, reports: int = 1) -> None:
        self.add(input_tokens, output_tokens, cost_usd, reports)
        one = self.models.get(model)
        if one is None and len(self.models) >= MODELS_MAX:
            model = OTHER_MODELS
            one = self.models.get(model)
        if one is None:
            # (not the shared default: msgspec copies a mutable default per instance)
            one = self.models[model] = Usage()
        one.add(input_tokens, output_tokens, cost_usd, reports)


class MadeAgain(msgspec.Struct, gc=False):
    """A tool call an attempt made again under the key an earlier attempt's had, that
    one's answer never kept: `why` says what became of it (docs/durable.md)."""

    tool: str
    key: str
    why: str


class Attempt(msgspec.Struct, gc=False):  # (no cycles: nothing to collect)
    replica: int
    pid: int | None
    started: float
    finished: float | None = None
    outcome: str = "running"
    error: str | None = None
    # the cluster node that ran it (a cluster task's attempts only: docs/cluster.md)
    node: str | UnsetType = UNSET
    # its steps answered from the task's step journal, and the tool call at which it
    # stopped matching the journal and went live (docs/durable.md)
    replayed: int | UnsetType = UNSET
    diverged: int | UnsetType = UNSET
    # the calls it made again under an earlier attempt's key (docs/durable.md)
    made_again: list[MadeAgain] | UnsetType = UNSET
    # seconds the task was to wait after this attempt before its retry (the agent's
    # retry_backoff, jitter and all): set on an attempt that was retried
    backoff: float | UnsetType = UNSET


class TaskFailure(msgspec.Struct, omit_defaults=True):
    code: int
    message: str
    data: Any = None


class TaskResult(msgspec.Struct, gc=False):
    """A task's outcome: what `corral run --json` prints and the Python API returns.
    Never walked by the garbage collector: what it holds was decoded from JSON (no
    cycles), and its attempts are a tuple of untracked Attempts, so that a map's list
    of a million results is no work for the collector's full passes."""

    task_id: str
    status: str
    output: Any  # whatever the agent answered
    error: TaskFailure | None
    attempts: Sequence[Attempt]  # a tuple where corral makes it (untracked: class doc)


class _TaskHead(msgspec.Struct):
    """What `corral task ID` and a line of `corral tasks` begin with (in this order)."""

    task_id: str
    agent: str
    status: str
    priority: int
    created: float
    started: float | None
    finished: float | None


class TaskInfo(_TaskHead):
    """`corral task ID`."""

    tool_calls: int
    progress: Any  # as the agent reported it
    output: Any
    error: TaskFailure | None
    attempts: list[Attempt]
    # the output was dropped from memory to bound it (no journal to read it back from)
    output_dropped: bool = False
    usage: ModelUsage | None = None  # what the worker reported (usage/report)
    waiting: str | None = None  # why a queued task is not started yet (a budget)
    # seconds from accepted to its first start: its wait in the queue, a sleeping agent's
    # wake among it (None: not started)
    queue_wait: float | None = None
    # the input as it was sent, when asked for (tasks.get with input) and kept: absent
    # when not asked, or not kept (a task of a daemon without a journal once it has
    # finished, a row pruned; a cluster task's is its record's)
    input: Any | UnsetType = UNSET
    # a queued task's earliest start (wall time): submitted with a delay, or a retry's
    # backoff; None: as soon as a replica is free
    not_before: float | None = None
    # the tenant its agent was of when it was accepted: whose record it is, whoever holds
    # the agent's name now (DESIGN 20); None: not recorded
    tenant: str | None = None
    # as its submitter asked (taskoptions.py; the one shared value when none was given)
    options: TaskOptions = msgspec.field(default_factory=lambda: NO_OPTIONS)
    # what a waiting task waits for: its pending asks (docs/approvals.md); absent when
    # it waits for none
    asks: list[Ask] | UnsetType = UNSET

    def outcome(self) -> TaskResult:
        return TaskResult(self.task_id, self.status, self.output, self.error,
                          tuple(self.attempts))


def queue_wait(created: float, started: float | None) -> float | None:
    """TaskInfo.queue_wait of a task this node accepted."""
    return None if started is None else round(max(0.0, started - created), 6)


class TaskSummary(_TaskHead):
    """One line of `corral tasks`."""

    attempts: int
    # a cluster task's node: the one running it, or that ran its last attempt
    node: str | UnsetType = UNSET
    tenant: str | None = None  # as TaskInfo.tenant
    options: TaskOptions = msgspec.field(default_factory=lambda: NO_OPTIONS)
