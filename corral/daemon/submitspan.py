"""The trace link of a task submitted (DESIGN 28, decision 1251): with [tracing], a
submission accepted by REST or the A2A door is one `invoke_agent` span of its own (the
door's name for it, `corral.call.door`; its agent, its task, and the conversation its
message names, an A2A contextId), a child of the caller's `traceparent` where it sent
one, and the parent of the task's own spans. A replica's call of an agent of no task at
`/mcp/corral` has that span already, the chain's trace link's (supervisor/tracing.py):
its task is that span's child. The control socket's is the task's own, as before."""

from __future__ import annotations

import time

import msgspec

from .. import methods as m
from ..supervisor.tracerecords import SERVER, SPAN
from ..supervisor.tracing import Tracer
from ..tracecontext import meta, new_span_id, parse_or_none
from ..traceids import MASK64
from .caller import A2A_VIA, Caller
from .submitted import door_of

SPANNED = frozenset({"http", A2A_VIA})  # the doors whose submission no span is made of yet


class SubmitSpan(msgspec.Struct, frozen=True):
    """A submission's span until its task is accepted."""

    trace_id: int
    span_id: int
    parent_id: int
    start: float


def begin(tracer: Tracer | None, caller: Caller, p: m.TasksSubmit
          ) -> tuple[m.TasksSubmit, SubmitSpan | None]:
    """The submission with its span's context for the task's parent, and the span; the
    submission as it is when there is none to make (no [tracing], another door, a trace
    not sampled: the task's trace is then as the caller's context makes it)."""
    if tracer is None or caller.via not in SPANNED:
        return p, None
    parent = parse_or_none(p.traceparent, p.tracestate)  # (REST's checked at its door)
    if parent is None:
        trace_id, parent_id, tracestate = new_span_id(128) or 1, 0, None
        sampled = tracer.sampling.head(trace_id, None)
    else:
        trace_id, parent_id, tracestate = parent.trace_id, parent.span_id, parent.tracestate
        sampled = tracer.sampling.head(trace_id, parent.sampled)
    if not sampled:
        return p, None
    span_id = new_span_id(64) or 1
    given = meta(trace_id, span_id, True, tracestate)
    return (msgspec.structs.replace(p, traceparent=given["traceparent"],
                                    tracestate=given.get("tracestate")),
            SubmitSpan(trace_id, span_id, parent_id, time.time()))


def accepted(tracer: Tracer | None, pending: SubmitSpan | None, caller: Caller,
             p: m.TasksSubmit, task_id: str) -> None:
    """The span of the submission accepted, made whole: kept with its task's spans."""
    if tracer is None or pending is None:
        return
    attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": p.agent,
             "corral.call.door": door_of(caller), "corral.task.id": task_id}
    if p.session is not None:  # a conversation (an A2A contextId), not the task
        attrs["gen_ai.conversation.id"] = p.session
    tid = pending.trace_id
    tracer.put((SPAN, tid >> 64, tid & MASK64, pending.span_id, pending.parent_id,
                f"tasks.submit {p.agent}", task_id, SERVER, pending.start, time.time(),
                None, attrs))
