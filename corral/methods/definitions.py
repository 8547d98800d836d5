# ruff: noqa: F405 - the results are corral.results', named by the methods
"""Definitions kept in revisions (workflows, teams), their runs and schedules: the same
params for each kind."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec

from ..results import *  # noqa: F403
from .declaration import ONE, Params, method, rest
from .tasks import MAX_WAIT


class DefinitionNamed(Params):
    name: str


class DefinitionUpdate(Params):
    name: str
    set: dict[str, Any]


class DefinitionsRemove(Params):
    names: list[str]


class DefinitionHistory(Params):
    name: str
    limit: int = 100


class DefinitionRollback(Params):
    name: str
    revision: int | None = None


# What a verb of a definition kept in revisions (workflows, teams: daemon/defcatalog.py)
# declares, the same for each kind: its result, whether it writes (agents:write) or reads
# (tasks:read), its visibility rule (of the kind's noun) and its REST route (HTTP verb,
# path after the kind's, summary, where its params come from).
_RUNTIME: dict[str, tuple[Any, bool, str, str, str, str, dict[str, Any]]] = {
    "add": (AddResult, True, "unnamed", "POST", "", "Add {section} from [{section}.NAME] tables",
            {"idempotent": True}),
    "describe": (DefinitionDescription, False, "{noun}", "GET", "/{name}",
                 "A {noun}'s definition and revision", {}),
    "update": (UpdateResult, True, "{noun}", "PATCH", "/{name}", "Change a runtime {noun}: "
               "`set` merged into its table (a JSON merge patch)", {"body": ("set",)}),
    "remove": (RemoveResult, True, "{noun}_names", "DELETE", "/{name}",
               "Remove a runtime {noun}", {"path_params": ONE}),
    "history": (DefinitionRevisions, False, "{noun}_past", "GET", "/{name}/history",
                "A runtime {noun}'s revisions", {"query": ("limit",)}),
    "rollback": (RollbackResult, True, "{noun}_past", "POST", "/{name}/rollback",
                 "Go back to an earlier revision of a runtime {noun}", {"body": ("revision",)}),
}


def _runtime(section: str, noun: str, verb: str) -> dict[str, Any]:
    """The declaration of the kind's method of `verb` (`workflows.update`) but its name."""
    result, writes, seen, http, path, summary, given = _RUNTIME[verb]
    if verb == "add":
        given = {**given, "body": (section,)}
    return {"result": result, "scope": "agents:write" if writes else "tasks:read",
            "mutating": writes, "seen": seen.format(noun=noun), "cli": f"{section} {verb}",
            "routes": (rest(http, f"/{section}{path}", summary.format(
                section=section, noun=noun), **given),)}


@method("workflows.list", result=WorkflowList, scope="tasks:read", seen="workflows",
        cli="workflows list", routes=(
    rest("GET", "/workflows", "The workflows: the config's and those "
         "added at runtime"),
))
class WorkflowsList(Params):
    """The workflows (the config file's and those added at runtime), with their steps
    and agents."""


@method("workflows.plan", result=WorkflowPlan, scope="tasks:read", seen="workflow",
        cli="workflows plan", routes=(
    rest("GET", "/workflows/{name}/plan", "A workflow's plan (nothing run)"),
))
class WorkflowsPlan(DefinitionNamed):
    """A workflow's plan, checked against the agents there are now (nothing is run)."""


MAX_RUN_ROWS = 10_000  # a run's step rows in one page of runs.get (a map's items)


@method("runs.get", result=RunView, scope="tasks:read", seen="run", cli="run-status",
        dashboard=True, routes=(
    rest("GET", "/runs/{run_id}", "One run, its graph, and a page of its "
         "steps' rows (with `outputs`, each with its output)",
         query=("wait", "step", "outputs", "offset", "limit")),
))
class RunsGet(Params):
    """One run: its status, its graph with each step's state, and a page of its step
    rows (a map's items too) with their tasks and outputs, read back from the state
    database (a page ends early past 4 MiB of outputs; `steps_next` is the offset of the
    next); of one step with `step`, without outputs with `outputs` false; with wait,
    held up to that many seconds for the run to end."""

    run_id: str
    wait: Annotated[float, msgspec.Meta(ge=0, le=MAX_WAIT)] | None = None
    step: str | None = None
    outputs: bool = True
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0
    limit: Annotated[int, msgspec.Meta(ge=0, le=MAX_RUN_ROWS)] = 1000


@method("workflows.run", result=RunView, scope="tasks:run", mutating=True, needs={"wait": RunsGet},
        seen="workflow", cli="workflows run", routes=(
    rest("POST", "/workflows/{name}/runs", "Start a run of a workflow: the "
         "run at once; with `wait`, as it is when it ends or the wait is over",
         query=("wait",), body=("input", "wait"), location="/runs/{run_id}"),
))
class WorkflowsRun(Params):
    """Start a run of a workflow with this input; its id at once, or with wait, the run
    as it is when it ends or the wait is over (the tasks:read scope too)."""

    logged: ClassVar[bool] = False

    name: str
    input: Any = None
    wait: Annotated[float, msgspec.Meta(ge=0, le=MAX_WAIT)] | None = None
    # W3C trace context of the caller: the run's trace is a child of it (with
    # [tracing]; docs/tracing.md)
    traceparent: str | None = None
    tracestate: str | None = None


@method("workflows.add", **_runtime("workflows", "workflow", "add"))
class WorkflowsAdd(Params):
    """Add workflows at runtime from [workflows.NAME] tables (all or nothing, each
    checked whole); they survive a daemon restart, each change a revision."""

    workflows: dict[str, Any]


@method("workflows.describe", **_runtime("workflows", "workflow", "describe"))
class WorkflowsDescribe(DefinitionNamed):
    """A workflow's definition, where it comes from and its revision."""


@method("workflows.update", **_runtime("workflows", "workflow", "update"))
class WorkflowsUpdate(DefinitionUpdate):
    """Change a workflow added at runtime: `set` merged into its table (a JSON merge
    patch; a list, such as steps, replaced whole); runs under way keep their revision."""


@method("workflows.remove", **_runtime("workflows", "workflow", "remove"))
class WorkflowsRemove(DefinitionsRemove):
    """Remove workflows added at runtime (runs under way end on their revision)."""


@method("workflows.history", **_runtime("workflows", "workflow", "history"))
class WorkflowsHistory(DefinitionHistory):
    """A runtime workflow's revisions: who changed what, when."""


@method("workflows.rollback", **_runtime("workflows", "workflow", "rollback"))
class WorkflowsRollback(DefinitionRollback):
    """Back to an earlier revision of a runtime workflow (default: the one before the
    newest; a removed workflow comes back so)."""


@method("runs.list", result=RunList, scope="tasks:read", seen="runs", cli="runs",
        dashboard=True, routes=(
    rest("GET", "/runs", "Recent runs, newest first, a page at a time",
         query=("workflow", "status", "since", "limit", "before"), cursor="before"),
))
class RunsList(Params):
    """Recent runs, newest first, a page of `limit` at a time: `next`, when there are
    older runs, is the `before` that lists them (every run until it is pruned)."""

    workflow: str | None = None
    status: str | None = None
    limit: int = 100
    since: float | None = None  # seconds ago
    before: str | None = None  # a run id: only the runs started before it


@method("runs.cancel", result=RunView, scope="tasks:run", mutating=True, seen="run",
        cli="run-cancel", routes=(
    rest("POST", "/runs/{run_id}/cancel", "Cancel a run and its running steps"),
))
class RunsCancel(Params):
    """Cancel a run: its steps' queued and running tasks are cancelled."""

    run_id: str


@method("runs.signal", result=SignalSent, scope="tasks:run", mutating=True, seen="run",
        cli="runs signal", routes=(
    rest("POST", "/runs/{run_id}/signals/{name}", "Send a run the signal a step of it "
         "waits for", body=("data", "key")),
))
class RunsSignal(Params):
    """Send a run's step that waits for the signal NAME its data (the step's output):
    kept before it is answered, for the step that waits or the one that will. A run takes
    as many signals of a name as it has steps that wait for it; one sent again with the
    same key is answered as the first."""

    run_id: str
    name: str
    data: Any = None
    key: str | None = None  # names the signal: sent again under it, it is the first


@method("schedules.list", result=ScheduleList, scope="tasks:read", seen="schedules",
        cli="schedules", routes=(
    rest("GET", "/schedules", "The schedules: each clock, last and next fire"),
))
class SchedulesList(Params):
    """The schedules, each with its clock, its last and next fire and whether it is
    paused (a limited caller: those of the agents and workflows it sees)."""


@method("schedules.pause", result=ScheduleEntry, scope="tasks:run", mutating=True, seen="schedule",
        cli="schedules pause", routes=(
    rest("POST", "/schedules/{name}/pause", "Pause a schedule"),
))
class SchedulesPause(Params):
    """Pause a schedule: it fires nothing until resumed (kept across restarts)."""

    name: str


@method("teams.list", result=TeamList, scope="tasks:read", seen="teams", cli="teams list", routes=(
    rest("GET", "/teams", "The teams: the config's and those added at runtime"),
))
class TeamsList(Params):
    """The teams (the config file's and those added at runtime), with their members."""


@method("teams.add", **_runtime("teams", "team", "add"))
class TeamsAdd(Params):
    """Add teams at runtime from [teams.NAME] tables (all or nothing, each checked
    whole); they survive a daemon restart, each change a revision."""

    teams: dict[str, Any]


@method("teams.describe", **_runtime("teams", "team", "describe"))
class TeamsDescribe(DefinitionNamed):
    """A team's definition, where it comes from and its revision."""


@method("schedules.resume", result=ScheduleEntry, scope="tasks:run", mutating=True, seen="schedule",
        cli="schedules resume", routes=(
    rest("POST", "/schedules/{name}/resume", "Resume a paused schedule"),
))
class SchedulesResume(Params):
    """Resume a paused schedule: its next fire is its clock's next from now (what it
    missed while paused is not caught up)."""

    name: str


@method("teams.update", **_runtime("teams", "team", "update"))
class TeamsUpdate(DefinitionUpdate):
    """Change a team added at runtime: `set` merged into its table (a JSON merge patch;
    a list, such as members, replaced whole); calls under way keep their definition."""


@method("teams.remove", **_runtime("teams", "team", "remove"))
class TeamsRemove(DefinitionsRemove):
    """Remove teams added at runtime (calls under way end on their definition)."""


@method("teams.history", **_runtime("teams", "team", "history"))
class TeamsHistory(DefinitionHistory):
    """A runtime team's revisions: who changed what, when."""


@method("teams.rollback", **_runtime("teams", "team", "rollback"))
class TeamsRollback(DefinitionRollback):
    """Back to an earlier revision of a runtime team (default: the one before the
    newest; a removed team comes back so)."""
