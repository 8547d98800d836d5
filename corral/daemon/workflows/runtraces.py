"""A workflow run as one trace (docs/tracing.md): the run's span, a span for each step
under it, and each step's task under its step's span (submitted with that span as its
traceparent). The ids are derived from the run's id, the step's name and its item, not
kept: a step's task is given its parent before the step's span exists, and a run resumed
by the next daemon keeps its ids (its own parent is saved: `Run.traceparent`).
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

from ...supervisor.durable import WHOLE
from ...supervisor.stream import Stream
from ...supervisor.tasks.ids import FORMAT
from ...supervisor.tracerecords import INTERNAL, SPAN
from ...supervisor.tracing import Tracer
from ...tracecontext import (
    parse_or_none,
    parse_or_refuse,
    traceparent,
)
from ...traceids import MASK64, id_span, id_trace
from .runevents import RunEnded, StepEnded
from .runstore import Run

KEPT = ("succeeded", "skipped")  # ends that are kept only when sampled


class RunTraceContext(NamedTuple):
    trace_id: int
    span_id: int  # the run's span
    parent_id: int  # its parent's (a nested step's, a caller's), or 0
    sampled: bool
    tracestate: str | None = None  # a caller's, carried to the run's tasks


def run_trace(run_id: str) -> tuple[int, int]:
    if FORMAT.fullmatch(run_id):
        trace_id = id_trace(run_id)
    else:  # an id of another form: its hash
        trace_id = int.from_bytes(hashlib.blake2b(run_id.encode(), digest_size=16).digest(),
                                  "big") or 1
    return trace_id, id_span(trace_id)


def step_span(run_span: int, step: str, item: int) -> int:
    """The span id of a step (`item` WHOLE) or of a map's item, under its run's span."""
    digest = hashlib.blake2b(f"{run_span:x}/{item}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") or 1


class RunTraces:
    """The spans of the runs and steps that end, put in the engine's tracer's buffer, and
    the contexts their tasks and nested runs are started with."""

    def __init__(self, tracer: Tracer, stream: Stream) -> None:
        self.tracer = tracer
        self._runs: dict[str, RunTraceContext] = {}  # the contexts of runs that have not ended
        # a run's parent, named before the run is made (its caller's context, a nested
        # run's step), taken by the run's context as the run is made (`context`), or
        # forgotten when it is not (`forget`)
        self._parents: dict[str, RunTraceContext] = {}
        stream.subscribe(self._step_ended, StepEnded)
        stream.subscribe(self._run_ended, RunEnded)

    def context(self, run: Run) -> RunTraceContext:
        """Made when it is first asked for: the service asks as it makes the run, with
        its parent named just before."""
        ctx = self._runs.get(run.run_id)
        if ctx is None:
            trace_id, span_id = run_trace(run.run_id)
            parent = self._parents.pop(run.run_id, None)
            if parent is not None:
                ctx = parent._replace(span_id=span_id)
                run.traceparent = traceparent(parent.trace_id, parent.parent_id,
                                              parent.sampled)
                run.tracestate = parent.tracestate
            elif (p := parse_or_none(run.traceparent, run.tracestate)) is not None:
                # resumed by this daemon: its parent and decision as it was started with
                ctx = RunTraceContext(p.trace_id, span_id, p.span_id, p.sampled, p.tracestate)
            else:
                ctx = RunTraceContext(trace_id, span_id, 0,
                                      self.tracer.sampling.head(trace_id, None))
            self._runs[run.run_id] = ctx
        return ctx

    def forget(self, run_id: str) -> None:
        self._parents.pop(run_id, None)
        self._runs.pop(run_id, None)

    def forget_parent(self, run_id: str) -> None:
        """A nested run's parent, named for a run that was not made here (refused, or
        already there): its context, if it was made, stays its own until its end."""
        self._parents.pop(run_id, None)

    def step_context(self, run: Run, step: str, item: int) -> tuple[str, str | None]:
        """The context a step's task is submitted with: its step's span."""
        ctx = self.context(run)
        return (traceparent(ctx.trace_id, step_span(ctx.span_id, step, item), ctx.sampled),
                ctx.tracestate)

    def caller(self, run_id: str, traceparent: str, tracestate: str | None) -> None:
        """A run (made next, under this id) is a child of its caller's context (RpcError
        when it is not the format, as a task's is refused)."""
        p = parse_or_refuse(traceparent, tracestate)
        self._parents[run_id] = RunTraceContext(p.trace_id, 0, p.span_id,
                                                self.tracer.sampling.head(p.trace_id, p.sampled),
                                                p.tracestate)

    def nested(self, child_run_id: str, run: Run, step: str, item: int) -> None:
        """A nested step's run (made next, under this id) is a child of its step."""
        ctx = self.context(run)
        self._parents[child_run_id] = RunTraceContext(ctx.trace_id, 0,
                                                      step_span(ctx.span_id, step, item),
                                                      ctx.sampled, ctx.tracestate)

    def _step_ended(self, e: StepEnded) -> None:
        run, row = e.run, e.row
        ctx = self.context(run)
        if not ctx.sampled and row.status in KEPT:
            return
        nested = run.wf.step(row.step).spec.workflow is not None
        attrs: dict[str, Any] = {"corral.workflow.name": run.workflow,
                                 "corral.run.id": run.run_id,
                                 "corral.workflow.step": row.step,
                                 "corral.step.status": row.status}
        if row.item != WHOLE:
            attrs["corral.workflow.item"] = row.item
        if row.task_id is not None:
            attrs["corral.child_run.id" if nested else "corral.task.id"] = row.task_id
        if row.status not in KEPT:
            attrs["error.type"] = row.status
        ended = row.ended if row.ended is not None else row.started or 0.0
        parent = ctx.span_id if row.item == WHOLE else step_span(ctx.span_id, row.step,
                                                                   WHOLE)
        self.tracer.put((SPAN, ctx.trace_id >> 64, ctx.trace_id & MASK64,
                         step_span(ctx.span_id, row.step, row.item), parent,
                         f"step {row.step}", row.task_id or run.run_id, INTERNAL,
                         row.started or ended, ended, row.error, attrs))

    def _run_ended(self, e: RunEnded) -> None:
        run = e.run
        ctx = self.context(run)
        del self._runs[run.run_id]
        if not ctx.sampled and run.status in KEPT:
            return
        attrs: dict[str, Any] = {"gen_ai.operation.name": "invoke_workflow",
                                 "corral.workflow.name": run.workflow,
                                 "corral.run.id": run.run_id,
                                 "corral.run.status": run.status,
                                 "corral.run.steps": len(run.wf.steps)}
        if run.status not in KEPT:
            attrs["error.type"] = run.status
        self.tracer.put((SPAN, ctx.trace_id >> 64, ctx.trace_id & MASK64, ctx.span_id,
                         ctx.parent_id, f"invoke_workflow {run.workflow}", run.run_id,
                         INTERNAL, run.created, run.ended or run.created, run.error, attrs))
