"""A run's events (`corral.run.*`, `corral.step.*`): emitted once what each says is
committed, and published on the event bus. The data names every agent of the run
(`agents`): a caller limited to some agents is sent a run's events only when it sees them
all, as it sees the run (visibility.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ...supervisor.durable import WHOLE, StepRow
from ...supervisor.events import EventBus
from ...supervisor.stream import Stream
from .runstore import Run

# no tenant has this name: an event published in it reaches operators' followers alone
NO_TENANT = ""


class RunStarted(NamedTuple):
    run: Run


class RunEnded(NamedTuple):
    run: Run


class StepStarted(NamedTuple):
    """A step (or a map's item) started: its task id (a nested step's run id) committed."""

    run: Run
    row: StepRow


class StepEnded(NamedTuple):
    run: Run
    row: StepRow


RunEvent = RunStarted | RunEnded | StepStarted | StepEnded


def _run_data(run: Run) -> dict[str, Any]:
    data: dict[str, Any] = {"run_id": run.run_id, "workflow": run.workflow,
                            "status": run.status, "agents": run.agents}
    if run.ended is not None:
        data["ended"] = run.ended
        if run.error is not None:
            data["error"] = run.error
    return data


def _step_data(run: Run, row: StepRow) -> dict[str, Any]:
    nested = run.wf.step(row.step).spec.workflow is not None
    data: dict[str, Any] = {
        "run_id": run.run_id, "workflow": run.workflow, "agents": run.agents,
        "step": row.step, "item": None if row.item == WHOLE else row.item,
        "status": row.status, "started": row.started}
    if row.task_id is not None:
        data["child_run_id" if nested else "task_id"] = row.task_id
    if row.ended is not None:
        data["ended"] = row.ended
        if row.error is not None:
            data["error"] = row.error
    return data


def topic_and_data(e: RunEvent) -> tuple[str, dict[str, Any]]:
    if isinstance(e, RunStarted):
        return "corral.run.started", _run_data(e.run)
    if isinstance(e, RunEnded):
        return f"corral.run.{e.run.status}", _run_data(e.run)
    if isinstance(e, StepStarted):
        return "corral.step.started", _step_data(e.run, e.row)
    return f"corral.step.{e.row.status}", _step_data(e.run, e.row)


def publish_runs(stream: Stream, bus: EventBus) -> None:
    """Every run event on the Stream, published on the bus from now on, in the part of
    the run's tenant (a run of no one tenant: operators' followers alone)."""
    def publish(e: RunEvent) -> None:
        if not bus.followers and not bus.subscriptions:
            return  # nobody on this node could hear it: nothing built
        topic, data = topic_and_data(e)
        tenant = e.run.tenant if e.run.tenant is not None else NO_TENANT
        # to this node's followers and workers only: a run is its node's,
        # and a map's thousand steps are not sent through Redis to every other node
        bus.publish_local(topic, data, "corral", tenant)

    kinds: tuple[type[RunEvent], ...] = (RunStarted, RunEnded, StepStarted, StepEnded)
    stream.subscribe(publish, *kinds)
