"""The workflow methods' handlers (corral.methods.definitions). What a limited caller sees
of them is said in visibility.py: the dispatcher asks whose the workflow or the run a call
names is before the handler runs (records.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator
from typing import Any

import msgspec

from ... import jsonrpc
from ... import methods as m
from ...jsonrpc import RpcError
from ...supervisor.agents import Agents
from ...supervisor.durable import STEP_ENDED, WHOLE, StepRow
from ...supervisor.durable.record import StepKey
from ...supervisor.workflows import (
    Workflow,
    WorkflowSpec,
    compile_workflow,
    plan_text,
)
from .. import defcatalog
from ..api import Commands
from ..caller import Caller, Channel
from ..defcatalog import Check
from ..services import Services
from ..tasks.front import page_window
from .catalog import Catalog, against
from .runstore import RUN_STATUSES, Run, RunStore
from .service import WorkflowService
from .signals import Signal

# a run's output, and a page of its rows' outputs, shown up to this many bytes of JSON
# (the rest read a page at a time)
MAX_OUTPUT_SHOWN = 4 * 1024 * 1024


def _step_view(run: Run, r: StepRow, output: Any) -> m.RunStepView:
    st = run.wf.step(r.step)
    nested = st.spec.workflow is not None
    tasked = st.spec.agent is not None  # (a signal step's row id is no task's)
    return m.RunStepView(
        step=r.step, item=None if r.item == WHOLE else r.item, status=r.status,
        task_id=r.task_id if tasked else None, run_id=r.task_id if nested else None,
        started=r.started, ended=r.ended, output=output, error=r.error)


def _graph(run: Run) -> list[m.RunGraphStep]:
    """Each step with the steps it waits for and where it is (a map's items counted)."""
    wf = run.wf
    items: dict[str, dict[str, int]] = {}
    for (name, item), r in run.rows.items():
        if item != WHOLE:
            counts = items.setdefault(name, {})
            counts[r.status] = counts.get(r.status, 0) + 1
    out = []
    for s in wf.steps:
        row = run.rows.get((s.name, WHOLE))
        nested = s.spec.workflow is not None
        out.append(m.RunGraphStep(
            step=s.name, after=sorted(s.deps, key=lambda d: wf.step(d).index),
            runs=f"agent {s.spec.agent}" if s.spec.agent is not None
            else f"signal {s.spec.signal}" if s.spec.signal is not None
            else f"workflow {s.spec.workflow}", map=s.mapped,
            status=row.status if row is not None else "pending",
            started=row.started if row is not None else None,
            ended=row.ended if row is not None else None,
            task_id=row.task_id if row is not None and s.spec.agent is not None else None,
            run_id=row.task_id if row is not None and nested else None,
            error=row.error if row is not None else None, items=items.get(s.name, {})))
    return out


Read = tuple[int, m.RunStepView] | None  # a row's output's bytes as kept, and its view


def _page(run: Run, store: RunStore, p: m.RunsGet, key: StepKey
          ) -> tuple[list[m.RunStepView], int | None, Read]:
    """A page of the run's step rows, ended early past MAX_OUTPUT_SHOWN bytes of their
    outputs (one row at least); the offset of the next page, None at the last; and the
    row `key`'s output's bytes and its view where the page read it."""
    order = {s.name: s.index for s in run.wf.steps}
    rows = sorted((r for r in run.rows.values() if r.step in order
                   and (p.step is None or r.step == p.step)),
                  key=lambda r: (order[r.step], r.item))
    wanted = rows[p.offset:p.offset + p.limit]
    if not p.outputs:
        return _rows(run, wanted, None, len(rows), p.offset, key)
    # (read lazily, a step's rows with one query: the page may end before its last)
    with contextlib.closing(_outputs(run, store, [(r.step, r.item) for r in wanted])
                            ) as blobs:
        return _rows(run, wanted, blobs, len(rows), p.offset, key)


def _outputs(run: Run, store: RunStore, keys: list[StepKey]
             ) -> Generator[bytes | None, None, None]:
    """The outputs of these rows as kept, in their order: the one the run holds for its
    answer (Run.answer: its last step's, kept with its end) not read back."""
    held = run.answer
    row = run.rows.get(held[0]) if held else None
    if not held or row is None or row.status not in STEP_ENDED or held[0] not in keys:
        yield from store.outputs_of(run.run_id, keys)
        return
    rest = store.outputs_of(run.run_id, [k for k in keys if k != held[0]])
    try:
        for k in keys:
            yield held[1] if k == held[0] else next(rest)
    finally:
        rest.close()


def _rows(run: Run, wanted: list[StepRow], blobs: Iterator[bytes | None] | None,
          total: int, offset: int, key: StepKey
          ) -> tuple[list[m.RunStepView], int | None, Read]:
    page: list[m.RunStepView] = []
    read: Read = None
    shown = 0
    for r in wanted:
        output = None
        if blobs is not None:
            raw = next(blobs)  # (a map's own row has none: its items have theirs)
            shown += len(raw) if raw is not None else 0
            if page and shown > MAX_OUTPUT_SHOWN:
                break
            output = msgspec.json.decode(raw) if raw is not None else None
        page.append(_step_view(run, r, output))
        if blobs is not None and (r.step, r.item) == key:
            read = (len(raw) if raw is not None else len(b"null"), page[-1])
    end = offset + len(page)
    return page, end if end < total else None, read


def run_view(run: Run, store: RunStore, page: m.RunsGet | None) -> m.RunView:
    """A run as runs.get answers it, with the page of its rows `page` asks for (None: a
    line of runs.list, without its graph, rows and output)."""
    view = m.RunView(
        run_id=run.run_id, workflow=run.workflow, status=run.status, created=run.created,
        ended=run.ended, agents=run.agents, error=run.error, input=run.input,
        revision=run.revision, tenant=run.tenant)
    if page is None:
        return view
    view.graph = _graph(run)
    last = run.wf.steps[-1]
    view.steps, following, read = _page(run, store, page, (last.name, WHOLE))
    if following is not None:
        view.steps_next = following
    if run.status == "succeeded":
        if read is not None and not last.mapped:  # on the page: not read again
            view.output_bytes, shown = read
            if view.output_bytes <= MAX_OUTPUT_SHOWN:
                view.output = shown.output
        else:
            view.output_bytes = store.output_bytes(run.run_id, last.name, last.mapped)
            if view.output_bytes <= MAX_OUTPUT_SHOWN:
                view.output = store.outputs(run).get(last.name)
    return view


def _entry(d: WorkflowServices, wf: Workflow) -> m.WorkflowEntry:
    rev = d.catalog.revision_of(wf.name)
    return m.WorkflowEntry(name=wf.name, description=wf.spec.description,
                           steps=[s.name for s in wf.steps], agents=wf.agents,
                           timeout=wf.spec.timeout,
                           revision=rev.revision if rev is not None else None,
                           tenant=d.workflows.tenant(wf.name))


class WorkflowServices(msgspec.Struct, frozen=True):
    """With what the methods every kind of definition has (defcatalog.Kind) ask of a
    workflow."""

    workflows: WorkflowService  # [workflows.NAME] and their runs
    catalog: Catalog  # the workflows added at runtime, with revisions
    agents: Agents  # the agents a plan is checked against

    def defined(self, name: str) -> tuple[WorkflowSpec, list[str]]:
        wf = self.catalog.workflow(name)
        return wf.spec, wf.agents

    def tenant(self, name: str) -> str | None:
        return self.workflows.tenant(name)

    def check(self, caller: Caller) -> Check[WorkflowSpec]:
        return _check(self, caller)


def workflow_services(d: Services) -> WorkflowServices:
    return WorkflowServices(d.workflows, d.workflows.catalog, d.agents)


COMMANDS: Commands[Services, WorkflowServices] = Commands(workflow_services)
implements = COMMANDS.implements


@implements(m.WorkflowsList)
async def workflows_list(d: WorkflowServices, p: m.WorkflowsList, caller: Caller, c: Channel
                         ) -> m.WorkflowList:
    return m.WorkflowList(workflows=[_entry(d, d.catalog.workflow(name))
                                     for name in sorted(d.catalog.specs())])


# -- runtime changes (catalog.py): a limited caller names only the agents and workflows
# it sees, and sees only workflows of its tenant all of whose agents it sees -----------
def _check(d: WorkflowServices, caller: Caller) -> Check[WorkflowSpec]:
    def agent(name: str) -> str | None:
        return d.workflows.agent_tenant(name) if caller.sees(name) else None

    specs = d.catalog.specs()
    if caller.limited:
        specs = {n: s for n, s in specs.items()
                 if all(caller.sees_record(a, d.workflows.tenant(n))
                        for a in d.catalog.workflow(n).agents)}
    return against(agent, specs)


@implements(m.WorkflowsAdd)
async def workflows_add(d: WorkflowServices, p: m.WorkflowsAdd, caller: Caller, c: Channel
                        ) -> m.AddResult:
    return m.AddResult(added=await d.catalog.add(p.workflows, caller.who, caller.tenant,
                                                 d.check(caller)))


implements(m.WorkflowsDescribe)(defcatalog.describe)
implements(m.WorkflowsUpdate)(defcatalog.update)
implements(m.WorkflowsRemove)(defcatalog.remove)
implements(m.WorkflowsHistory)(defcatalog.history)
implements(m.WorkflowsRollback)(defcatalog.rollback)


@implements(m.WorkflowsPlan)
async def workflows_plan(d: WorkflowServices, p: m.WorkflowsPlan, caller: Caller, c: Channel
                         ) -> m.WorkflowPlan:
    wf = d.catalog.workflow(p.name)
    checked = compile_workflow(wf.name, wf.spec, d.agents.__contains__,
                               d.catalog.specs())
    return m.WorkflowPlan(name=wf.name, agents=wf.agents, plan=plan_text(checked))


@implements(m.WorkflowsRun)
async def workflows_run(d: WorkflowServices, p: m.WorkflowsRun, caller: Caller, c: Channel
                        ) -> m.RunView:
    run = await d.workflows.start(p.name, p.input, traceparent=p.traceparent,
                                  tracestate=p.tracestate)
    run.answer = []  # (before its driver's first step: it runs on a later turn)
    try:
        if p.wait is not None:
            await d.workflows.wait(run.run_id, p.wait)
        await d.workflows.kept(run.run_id)
        return run_view(run, d.workflows.rows, m.RunsGet(run_id=run.run_id))
    finally:
        run.answer = None


@implements(m.RunsGet)
async def runs_get(d: WorkflowServices, p: m.RunsGet, caller: Caller, c: Channel) -> m.RunView:
    if p.wait is not None:
        await d.workflows.wait(p.run_id, p.wait)
    await d.workflows.read(p.run_id)
    await d.workflows.kept(p.run_id)
    with d.workflows.snapshot():  # the run's row, its steps' rows, their outputs
        run = d.workflows.get(p.run_id)
        if p.step is not None and p.step not in {s.name for s in run.wf.steps}:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"run {run.run_id} has no step {p.step} "
                           f"(its steps: {', '.join(s.name for s in run.wf.steps)})")
        return run_view(run, d.workflows.rows, p)


@implements(m.RunsList)
async def runs_list(d: WorkflowServices, p: m.RunsList, caller: Caller, c: Channel) -> m.RunList:
    # checked as tasks.list checks its own; a caller limited to some agents pages
    # through the runs it sees only (whole pages; a cursor of another's reads as absent)
    since, limit = page_window(p.status, p.before, p.since, p.limit, RUN_STATUSES, "run")
    await d.workflows.read(newest=limit)
    runs, older = d.workflows.list(p.workflow, p.status, since, limit,
                                   p.before, caller.sees_record if caller.limited else None)
    return m.RunList(runs=[run_view(r, d.workflows.rows, None) for r in runs],
                     next=older if older is not None else msgspec.UNSET)


@implements(m.RunsCancel)
async def runs_cancel(d: WorkflowServices, p: m.RunsCancel, caller: Caller, c: Channel
                      ) -> m.RunView:
    return run_view(await d.workflows.cancel(p.run_id), d.workflows.rows,
                    m.RunsGet(run_id=p.run_id))


@implements(m.RunsSignal)
async def runs_signal(d: WorkflowServices, p: m.RunsSignal, caller: Caller, c: Channel
                      ) -> m.SignalSent:
    sent = await d.workflows.signal(p.run_id, Signal(p.name, p.data, p.key, caller.who))
    return m.SignalSent(run_id=p.run_id, name=p.name, seq=sent.seq, duplicate=sent.duplicate)
