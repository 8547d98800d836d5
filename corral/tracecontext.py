"""W3C trace context (`traceparent`, `tracestate`) as corral carries it: read from a
caller, written into the `_meta` of what corral sends (a worker's `task/run`, an MCP
server's requests: the MCP revision 2026-07-28 reserves these keys in `params._meta`), and
the client span an MCP request is made under, held in a context variable so that the MCP
client puts it on the wire without the pool between them knowing of it (docs/tracing.md).
"""

from __future__ import annotations

import contextvars
import os
import random
import re
from typing import Any, NamedTuple

from . import jsonrpc
from .traceids import GOLDEN, MASK64, id_span, id_trace

# version 00 as the W3C Recommendation writes it; a later version is read by its first
# four fields, as the Recommendation asks of a reader that knows only 00
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
SAMPLED = 0x01
MAX_TRACESTATE = 512  # bytes kept of a caller's tracestate (the Recommendation's own bound)

_random = random.Random(os.urandom(16))  # ids, not secrets: a fast generator, seeded once
new_span_id = _random.getrandbits  # new_span_id(64); new_span_id(128) for a trace id


def new_trace_id() -> int:
    return _random.getrandbits(128) or 1


class Parent(NamedTuple):
    """A caller's context: the trace and its span, and whether the caller samples it."""

    trace_id: int
    span_id: int
    sampled: bool
    tracestate: str | None = None


class BadTraceparent(ValueError):
    """A `traceparent` that is not the W3C format (the caller is told why)."""


def parse(traceparent: str, tracestate: str | None = None) -> Parent:
    m = _TRACEPARENT.fullmatch(traceparent.strip().lower())
    if m is not None:  # (its groups read at once: a call each was most of a parse)
        version, trace, span, flags, rest = m.groups()
    if m is None or version == "ff" or (version == "00" and rest):
        raise BadTraceparent(f"traceparent must be the W3C format 00-<32 hex>-<16 hex>-<2 "
                             f"hex>, not {traceparent!r:.80}")
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not trace_id or not span_id:
        raise BadTraceparent("traceparent: an all-zero trace id or span id is invalid")
    state = tracestate.strip()[:MAX_TRACESTATE] if tracestate else None
    if state and not (state.isascii() and state.isprintable()):
        # the W3C's characters are printable ASCII; anything else (an HTTP header's
        # bytes that are not UTF-8 arrive as lone surrogates) is none of a context's,
        # and would fail every write of it (the run store's, a worker's message)
        state = None
    return Parent(trace_id, span_id, bool(int(flags, 16) & SAMPLED), state or None)


def parse_or_refuse(traceparent: str, tracestate: str | None = None) -> Parent:
    """A caller's context given with its request (a task's, a run's, a team call's, a
    cluster submit's): RpcError (INVALID_PARAMS) with the reason when it is not the
    format, the request refused before anything is accepted."""
    try:  # (not jsonrpc.invalid_params: each traced task's submit is here, ~1 us a `with`)
        return parse(traceparent, tracestate)
    except BadTraceparent as exc:
        raise jsonrpc.RpcError(jsonrpc.INVALID_PARAMS, str(exc)) from None


def parse_or_none(traceparent: Any, tracestate: Any = None) -> Parent | None:
    """A context as an MCP client or a worker may send it in `_meta`: None when there is
    none, or it is not the format (a peer's bad context starts a new trace, never fails
    its request)."""
    if not isinstance(traceparent, str):
        return None
    try:
        return parse(traceparent, tracestate if isinstance(tracestate, str) else None)
    except BadTraceparent:
        return None


def traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def meta(trace_id: int, span_id: int, sampled: bool, tracestate: str | None) -> dict[str, str]:
    out = {"traceparent": traceparent(trace_id, span_id, sampled)}
    if tracestate:
        out["tracestate"] = tracestate
    return out


class ClientSpan:
    """The span an MCP request is made under (a tool call of a task): its `_meta`
    entries, and the JSON-RPC id the request went out with (told back by the client)."""

    __slots__ = ("meta", "request_id", "transport")

    def __init__(self, entries: dict[str, str]) -> None:
        self.meta = entries
        self.request_id: Any = None
        self.transport = "pipe"  # a remote server's client says "tcp"


# set inside the coroutine of one tool call (its own asyncio task: nothing else sees it)
CURRENT: contextvars.ContextVar[ClientSpan | None] = contextvars.ContextVar(
    "corral_client_span", default=None)


def current_context() -> tuple[str | None, str | None]:
    """The (traceparent, tracestate) of the client span a call is made under now, (None,
    None) under none: what a task it starts (an agent called as a tool) is the child of."""
    span = CURRENT.get()
    if span is None:
        return None, None
    return span.meta.get("traceparent"), span.meta.get("tracestate")


# the `_meta` of the worker's `tools/call` being routed: set around the tool router's
# call, which is synchronous up to the coroutine it returns (supervisor/tasks/worker.py)
CALLER: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "corral_caller_meta", default=None)


class FromId:
    """A task's new trace, sampled or not, whose ids are its task id's (a UUIDv7: 32 hex
    digits, the low 62 bits random): the trace id is the id, its first attempt's span id
    the id's low half, the task's span that ^ GOLDEN (as TaskTrace derives an attempt's
    from the task's). Nothing is made per task to trace it: one of two shared objects
    (FROM_ID) stands for it until a tool call or an exit needs a TaskTrace (`of_id`);
    what a task costs the loop to carry its context is then its `task/run`'s `_meta`."""

    __slots__ = ("bit", "flags", "sampled")

    def __init__(self, sampled: bool) -> None:
        self.sampled = sampled
        self.flags = "01" if sampled else "00"
        self.bit = 1 if sampled else 0  # `task/run`'s `trace` (docs/protocol.md)

    def run_meta(self, attempt: int, task_id: str) -> dict[str, str]:
        if attempt == 1:  # the id's hex once, its low half the attempt's span (one copy)
            h = task_id.replace("-", "")
            return {"traceparent": f"00-{h}-{h[16:]}-{self.flags}"}
        return of_id(task_id, self.sampled).run_meta(attempt, task_id)


FROM_ID = (FromId(False), FromId(True))


def of_id(task_id: str, sampled: bool) -> TaskTrace:
    """The TaskTrace of a task traced from its id (FromId), with the same ids."""
    trace_id = id_trace(task_id)
    return TaskTrace(trace_id, 0, sampled, None, id_span(trace_id))


class TaskTrace:
    """A task's place in its trace: the task's own span (a child of the caller's, or a
    root), whether it is sampled ahead, and the spans held back for the tail rule while
    it is not (docs/tracing.md). An attempt's span id is derived from the task's, so that
    nothing is kept per attempt to find it again."""

    __slots__ = ("events", "held", "parent_id", "sampled", "span_id", "trace_id",
                 "tracestate")

    def __init__(self, trace_id: int, parent_id: int, sampled: bool,
                 tracestate: str | None, span_id: int = 0) -> None:
        self.trace_id = trace_id
        self.span_id = span_id or new_span_id(64) or 1
        self.parent_id = parent_id  # 0: the task's span is the trace's root
        self.sampled = sampled
        self.tracestate = tracestate
        self.held: list[tuple[Any, ...]] | None = None  # spans kept until the outcome
        self.events: list[tuple[float, int, str, str]] | None = None  # (t, attempt, name, why)

    def attempt_span(self, attempt: int) -> int:
        return ((self.span_id ^ (attempt * GOLDEN)) & MASK64) or 1

    def run_meta(self, attempt: int, task_id: str = "") -> dict[str, str]:
        """`_meta` of an attempt's `task/run`: the attempt's span is the worker's parent
        (every task's: written here without a call more than it takes); `task_id`: what
        FromId's is made from (not read here)."""
        span = ((self.span_id ^ (attempt * GOLDEN)) & MASK64) or 1
        out = {"traceparent": f"00-{self.trace_id:032x}-{span:016x}-"
                              f"{'01' if self.sampled else '00'}"}
        if self.tracestate:
            out["tracestate"] = self.tracestate
        return out
