"""The workflow methods' handlers (corral/methods.py), put in the daemon's table by
commands.py. What a limited caller sees of them is said in visibility.py; a handler that
acts on a workflow or a run first asks it (`seen_workflow`), as a listing is filtered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ... import methods as m
from ...supervisor.workflows import Workflow, compile_workflow, plan_text
from ..caller import Caller, Channel
from ..services import Services
from ..store import row_limit
from ..visibility import seen_workflow
from .runstore import WHOLE, Run


def run_view(run: Run, *, steps: bool = True) -> m.RunView:
    order = {s.name: s.index for s in run.wf.steps}
    rows = sorted(run.rows.values(), key=lambda r: (order.get(r.step, 0), r.item))
    last = run.wf.steps[-1].name
    output = run.outputs().get(last) if run.status == "succeeded" else None
    return m.RunView(
        run_id=run.run_id, workflow=run.workflow, status=run.status, created=run.created,
        ended=run.ended, agents=run.agents, error=run.error, input=run.input, output=output,
        steps=[m.RunStepView(step=r.step, item=None if r.item == WHOLE else r.item,
                             status=r.status, task_id=r.task_id, started=r.started,
                             ended=r.ended, output=r.output, error=r.error)
               for r in rows] if steps else [])


def _entry(wf: Workflow) -> m.WorkflowEntry:
    return m.WorkflowEntry(name=wf.name, description=wf.spec.description,
                           steps=[s.name for s in wf.steps], agents=wf.agents,
                           timeout=wf.spec.timeout)


async def workflows_list(d: Services, p: m.WorkflowsList, caller: Caller, c: Channel
                         ) -> m.WorkflowList:
    return m.WorkflowList(workflows=[_entry(wf) for _, wf in
                                     sorted(d.workflows.definitions.items())])


async def workflows_plan(d: Services, p: m.WorkflowsPlan, caller: Caller, c: Channel
                         ) -> m.WorkflowPlan:
    wf = seen_workflow(caller, d.workflows.workflow(p.name))
    checked = compile_workflow(wf.name, wf.spec, d.agents.__contains__)
    return m.WorkflowPlan(name=wf.name, agents=wf.agents, plan=plan_text(checked))


async def workflows_run(d: Services, p: m.WorkflowsRun, caller: Caller, c: Channel
                        ) -> m.RunView:
    seen_workflow(caller, d.workflows.workflow(p.name))
    run = await d.workflows.start(p.name, p.input)
    if p.wait is not None:
        await d.workflows.wait(run.run_id, p.wait)
    return run_view(run)


async def runs_get(d: Services, p: m.RunsGet, caller: Caller, c: Channel) -> m.RunView:
    if p.wait is not None:
        await d.workflows.wait(p.run_id, p.wait)
    return run_view(d.workflows.get(p.run_id))


async def runs_list(d: Services, p: m.RunsList, caller: Caller, c: Channel) -> m.RunList:
    runs = d.workflows.list(p.workflow, p.status, row_limit(p.limit))
    return m.RunList(runs=[run_view(r, steps=False) for r in runs])


async def runs_cancel(d: Services, p: m.RunsCancel, caller: Caller, c: Channel
                      ) -> m.RunView:
    run = d.workflows.get(p.run_id)
    seen_workflow(caller, run.wf, what="run", name=run.run_id)
    return run_view(await d.workflows.cancel(p.run_id))


Handler = Callable[[Services, Any, Caller, Channel], Awaitable[Any]]
TABLE: dict[str, Handler] = {
    "workflows.list": workflows_list,
    "workflows.plan": workflows_plan,
    "workflows.run": workflows_run,
    "runs.get": runs_get,
    "runs.list": runs_list,
    "runs.cancel": runs_cancel,
}
