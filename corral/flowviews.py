"""What corral shows of its compositions, one Struct each, shared by the daemon that sends
them and the CLI that reads them: workflows and their runs, schedules, teams
(corral.results imports them as results)."""

from __future__ import annotations

from typing import Any

from msgspec import UNSET, UnsetType

from .views import Result


# -- workflows (docs/workflows.md) -----------------------------------------------------------
class WorkflowEntry(Result):
    name: str
    description: str
    steps: list[str]
    agents: list[str]  # a tenant's caller sees a workflow whose agents are all its own
    timeout: float | None = None
    revision: int | None = None  # one added at runtime: its revision (None: the file's)
    # whose it is (a runtime one's: its agents' tenant when it was made; the file's: its
    # agents' now); None: of no one tenant, the operator's
    tenant: str | None = None


class WorkflowList(Result):
    workflows: list[WorkflowEntry]


class WorkflowPlan(Result):
    name: str
    agents: list[str]
    plan: str  # the steps in order: what each waits for, is sent and runs on


class RunStepView(Result):
    step: str
    item: int | None  # a map's item (0...), or None for the step itself
    status: str  # running, succeeded, failed, skipped, cancelled, timed_out, lost
    task_id: str | None
    started: float | None
    ended: float | None
    output: Any = None
    error: str | None = None
    run_id: str | None = None  # a nested workflow's step: its run (task_id None)


class RunGraphStep(Result):
    step: str
    after: list[str]  # the steps it waits for
    runs: str  # "agent NAME", "workflow NAME" or "signal NAME" (waited for)
    map: bool = False
    # where it is: its own row's (pending before it starts), a map's items counted by
    # status; what the dashboard draws and the CLI's tree says, whichever page of rows
    # `steps` is
    status: str = "pending"
    started: float | None = None
    ended: float | None = None
    task_id: str | None = None
    run_id: str | None = None  # a nested step's run
    error: str | None = None
    items: dict[str, int] = {}


class RunView(Result):
    run_id: str
    workflow: str
    status: str  # running, succeeded, failed, cancelled, timed_out
    created: float
    ended: float | None
    agents: list[str]
    error: str | None = None
    input: Any = None
    # the last step's output, once the run succeeded, read back from the state database
    # (absent past MAX_OUTPUT_SHOWN: its step's rows with `outputs` give it, a page at a
    # time), and how long it is as JSON
    output: Any = None
    output_bytes: int | None = None
    # a page of step rows (of `step`, when asked), in the definition's order, a map's
    # items after it; each with its output when asked (`outputs`), read back
    steps: list[RunStepView] = []
    steps_next: int | UnsetType = UNSET  # the `offset` of the next page; absent: the last
    revision: int | None = None  # of a workflow added at runtime it started on
    # the run's graph: each step, in the definition's order, with the steps it waits
    # for (those not started yet have no row in `steps`); what the dashboard draws
    graph: list[RunGraphStep] = []
    # whose run it is: its workflow's tenant when it started (None: of no one tenant, the
    # operator's); a tenant's caller sees its own tenant's runs alone
    tenant: str | None = None


class SignalSent(Result):
    """`runs.signal`'s answer: the signal kept for the run's step that waits for it."""

    run_id: str
    name: str
    seq: int  # its place among the run's signals, from 1
    duplicate: bool = False  # its key was sent before: this is that signal, not a second


class RunList(Result):
    runs: list[RunView]  # newest first, without their steps
    # the cursor of the next page (older runs): `before` of the next call; absent on the
    # last page
    next: str | UnsetType = UNSET


# -- a definition kept with revisions, of any kind (a workflow, a team): one answer each
class DefinitionDescription(Result):
    """`workflows.describe`'s and `teams.describe`'s answer."""

    name: str
    source: str  # "config" (the file's) or "runtime" (added by a command)
    revision: int | None  # a runtime definition's current revision
    tenant: str | None  # whose it is (its own, or its agents')
    agents: list[str]  # every agent it may run (a workflow's nested workflows' too)
    definition: dict[str, Any]  # the [workflows.NAME] or [teams.NAME] table


class DefinitionRevision(Result):
    revision: int
    time: float
    who: str
    change: str  # "created", "removed", "rollback to revision 1: timeout 5 -> 10", ...
    definition: dict[str, Any] | None  # None: this revision removed it
    # whose definition it was then (its agents' tenant; None: the operator's)
    tenant: str | None = None


class DefinitionRevisions(Result):
    """`workflows.history`'s and `teams.history`'s answer: who changed what, when."""

    name: str
    current: int | None  # None: removed
    revisions: list[DefinitionRevision]  # oldest first


# -- schedules (docs/workflows.md#schedules) -------------------------------------------------
class ScheduleEntry(Result):
    name: str
    agent: str | None  # a task of this agent, or
    workflow: str | None  # a run of this workflow
    every: str | None
    cron: str | None
    missed: str  # skip, once, catch_up
    paused: bool
    last_fire: float  # the last fire time accounted for (fired, or skipped as missed)
    next_fire: float | None  # None: paused, or another cluster node's to fire
    fires: int
    last_started: str | None  # the task or run its last fire started
    agents: list[str]  # whose tasks it starts: a limited caller sees it when it sees all
    description: str = ""
    # the tenant the file gives its agents (None: several, or none known): whose it is,
    # whoever holds their names now (DESIGN 20)
    tenant: str | None = None


class ScheduleList(Result):
    schedules: list[ScheduleEntry]


# -- teams (docs/teams.md): the config file's and those added at runtime, with revisions
class TeamEntry(Result):
    name: str
    mode: str  # route, broadcast or coordinate
    members: list[str]
    agents: list[str]  # its members, router and leader: a limited caller sees all of them
    description: str = ""
    revision: int | None = None  # one added at runtime: its revision (None: the file's)
    tenant: str | None = None  # whose it is (as a workflow's)


class TeamList(Result):
    teams: list[TeamEntry]
