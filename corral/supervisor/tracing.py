"""Traces of tasks, the engine's side: the context a task starts with, the sampling
decision, and each span as one tuple appended to a bounded buffer. No I/O here: the
daemon's exporter (daemon/traces.py) takes the tuples off the buffer in its own thread,
encodes and sends them (docs/tracing.md).

What the loop pays for a span is a tuple and a deque append; the spans of a task, its
queue waits and its attempts are made from what the Task already records, once, when it
finishes (a `TaskFinished` on the stream). Only a tool call is timed as it happens: its
client span is the one whose context goes to the MCP server in `params._meta`.
"""

from __future__ import annotations

import inspect
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..mcp.pool import SEP
from ..tracecontext import (
    CURRENT,
    MASK64,
    BadTraceparent,
    ClientSpan,
    TaskTrace,
    meta,
    new_span_id,
    new_trace_id,
    parse,
)
from .process_replica import Exited
from .tasks.model import Task, TaskFinished, TaskStatus

if TYPE_CHECKING:
    from .replica import Replica
    from .tasks.manager import TaskManager

# OTLP's SpanKind values
INTERNAL, SERVER, CLIENT = 1, 2, 3

# a span as the buffer holds it:
# (trace_id, span_id, parent_id, name, kind, start, end, error, attributes, events, task_id)
# times in seconds since the epoch; error None or its message; attributes a dict; events
# a tuple of (time, name, attributes)
Span = tuple[int, int, int, str, int, float, float, "str | None", dict[str, Any],
             tuple[tuple[float, str, dict[str, Any]], ...], str]

FAILED = frozenset({TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.LOST})
HELD_MAX = 256  # tool spans an unsampled task keeps for the tail rule; past it, dropped
EVENTS_MAX = 64  # exits recorded on one task's attempts


class Sampling(NamedTuple):
    """Head sampling: a ratio of new traces, a caller's decision honoured (parent-based);
    and the tail rule: a task that failed, or took `slow` seconds or more, is kept
    whatever the head said."""

    ratio: float = 1.0
    parent_based: bool = True
    slow: float = 10.0

    def head(self, trace_id: int, parent_sampled: bool | None) -> bool:
        if parent_sampled is not None and self.parent_based:
            return parent_sampled
        if self.ratio >= 1.0:
            return True
        # TraceIdRatioBased: the trace id's low 64 bits against the ratio's share
        return (trace_id & MASK64) < int(self.ratio * (1 << 64))


class Tracer:
    """The spans of the engine's tasks, buffered for an exporter."""

    def __init__(self, sampling: Sampling | None = None, *, capacity: int = 65536,
                 batch: int = 512) -> None:
        self.sampling = sampling or Sampling()
        self.spans: deque[Span] = deque()
        self.capacity = capacity
        self.batch = batch
        self.dropped = 0  # spans the buffer had no room for (the exporter counts its own)
        self.recorded = 0
        # told when a batch is ready (the exporter's wake-up; its own timer does the rest)
        self.ready: Callable[[], None] | None = None
        self._tasks: TaskManager | None = None

    # -- wiring -----------------------------------------------------------------------------
    def install(self, tasks: TaskManager) -> None:
        """Trace the engine's tasks: their start (the manager's `trace_begin` hook), their
        tool calls (around its tool router), their ends and their workers' exits (the
        stream)."""
        self._tasks = tasks
        tasks.trace_begin = self.begin
        tasks.worker.tool_router = self.traced(tasks.worker.tool_router)
        tasks.stream.subscribe(self._finished, TaskFinished)
        tasks.stream.subscribe(self._exited, Exited)

    # -- the context in -----------------------------------------------------------------------
    def begin(self, task: Task, traceparent: str | None, tracestate: str | None) -> None:
        """The task's trace: a child of the caller's context, or a new one."""
        if traceparent:
            try:
                p = parse(traceparent, tracestate)
            except BadTraceparent as exc:
                raise RpcError(jsonrpc.INVALID_PARAMS, str(exc)) from None
            task.trace = TaskTrace(p.trace_id, p.span_id,
                                   self.sampling.head(p.trace_id, p.sampled), p.tracestate)
        else:
            trace_id = new_trace_id()
            task.trace = TaskTrace(trace_id, 0, self.sampling.head(trace_id, None), None)

    # -- the buffer ---------------------------------------------------------------------------
    def put(self, span: Span) -> None:
        spans = self.spans
        if len(spans) >= self.capacity:
            self.dropped += 1
            return
        spans.append(span)
        self.recorded += 1
        if len(spans) == self.batch and self.ready is not None:
            self.ready()

    # -- tool calls ---------------------------------------------------------------------------
    def traced(self, router: Callable[..., Any]) -> Callable[..., Any]:
        """The tool router, with a client span around each call of a traced task."""

        def route(r: Replica, name: str, arguments: dict[str, Any], task: Task | None
                  ) -> Any:
            trace = task.trace if task is not None else None
            if trace is None or task is None:
                return router(r, name, arguments, task)
            return self._call(router, r, name, arguments, task, trace)

        return route

    async def _call(self, router: Callable[..., Any], r: Replica, name: str,
                    arguments: dict[str, Any], task: Task, trace: TaskTrace) -> Any:
        span_id = new_span_id(64) or 1
        attempt = task.attempt
        client = ClientSpan(meta(trace.trace_id, span_id, trace.sampled, trace.tracestate))
        CURRENT.set(client)  # this call's own asyncio task: its context only
        start = time.time()
        error: str | None = None
        try:
            result = router(r, name, arguments, task)
            if inspect.isawaitable(result):
                result = await result
            if isinstance(result, dict) and result.get("isError"):
                error = "tool_error"
            return result
        except BaseException as exc:
            error = getattr(exc, "message", None) or type(exc).__name__
            raise
        finally:
            server, _, tool = name.partition(SEP)
            attrs: dict[str, Any] = {
                "mcp.method.name": "tools/call", "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": tool or name, "corral.mcp.server": server,
                "network.transport": client.transport, "corral.task.id": task.id,
                "corral.attempt": attempt}
            if client.request_id is not None:
                attrs["jsonrpc.request.id"] = str(client.request_id)
            if error is not None:
                attrs["error.type"] = "tool_error" if error == "tool_error" else "rpc_error"
            span: Span = (trace.trace_id, span_id, trace.attempt_span(attempt),
                          f"tools/call {tool or name}", CLIENT, start, time.time(), error,
                          attrs, (), task.id)
            if trace.sampled:
                self.put(span)
            else:
                held = trace.held
                if held is None:
                    held = trace.held = []
                if len(held) < HELD_MAX:
                    held.append(span)

    # -- a worker's exit ----------------------------------------------------------------------
    def _exited(self, e: Exited) -> None:
        r = e.replica
        if self._tasks is None or getattr(r, "kind", None) != "agent":
            return
        now = time.time()
        name = "corral.cap_kill" if "limit" in e.reason else "corral.replica.exited"
        for task in self._tasks.active.values():
            trace = task.trace
            if trace is None or task.replica is not r:
                continue
            events = trace.events
            if events is None:
                events = trace.events = []
            if len(events) < EVENTS_MAX:
                events.append((now, task.attempt, name, e.reason))

    # -- a task's end -------------------------------------------------------------------------
    def _finished(self, e: TaskFinished) -> None:
        task = e.task
        trace = task.trace
        if trace is None:
            return
        end = task.finished or time.time()
        kept = trace.sampled or task.status in FAILED or (
            end - task.created >= self.sampling.slow)
        if not kept:
            trace.held = None
            return
        for span in self.spans_of(task, trace, end):
            self.put(span)
        if trace.held:
            for span in trace.held:
                self.put(span)
        trace.held = None

    def spans_of(self, task: Task, trace: TaskTrace, end: float) -> list[Span]:
        """The task's span, its queue waits and its attempts, from what it recorded."""
        tid, own, agent = trace.trace_id, trace.span_id, task.agent
        error = task.error.message if task.error is not None and task.status != \
            TaskStatus.SUCCEEDED else None
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent,
            "corral.task.id": task.id, "corral.task.status": str(task.status),
            "corral.task.priority": task.priority, "corral.task.attempts": len(task.attempts),
            "corral.task.tool_calls": task.tool_calls}
        if error is not None:
            attrs["error.type"] = str(task.status)
        usage = task.usage
        if usage is not None:
            attrs["gen_ai.usage.input_tokens"] = usage.input_tokens
            attrs["gen_ai.usage.output_tokens"] = usage.output_tokens
            attrs["corral.usage.cost_usd"] = usage.cost_usd
            if len(usage.models) == 1:
                attrs["gen_ai.request.model"] = next(iter(usage.models))
        events_by: dict[int, list[tuple[float, str, dict[str, Any]]]] = {}
        for t, n, name, why in trace.events or ():
            events_by.setdefault(n, []).append((t, name, {"corral.exit.reason": why}))
        retries = tuple((a.started, "corral.task.retried", {"corral.attempt": i + 1})
                        for i, a in enumerate(task.attempts) if i)
        out: list[Span] = [(tid, own, trace.parent_id, f"invoke_agent {agent}", SERVER,
                            task.created, end, error, attrs, retries, task.id)]
        waited_from = task.created
        for i, a in enumerate(task.attempts):
            n = i + 1
            out.append((tid, new_span_id(64) or 1, own, "corral.queue", INTERNAL,
                        waited_from, a.started, None,
                        {"gen_ai.agent.name": agent, "corral.attempt": n}, (), task.id))
            finished = a.finished or end
            waited_from = finished
            a_attrs: dict[str, Any] = {
                "gen_ai.agent.name": agent, "corral.attempt": n,
                "corral.replica": f"{agent}#{a.replica}", "corral.attempt.outcome": a.outcome,
                "network.transport": "pipe", "rpc.system": "jsonrpc",
                "rpc.method": "task/run"}
            if a.pid is not None:
                a_attrs["process.pid"] = a.pid
            if isinstance(a.node, str):
                a_attrs["corral.node"] = a.node
            a_error = None
            if a.outcome != TaskStatus.SUCCEEDED:
                a_error = a.error or str(a.outcome)
                a_attrs["error.type"] = str(a.outcome)
            out.append((tid, trace.attempt_span(n), own, f"task/run {agent}", CLIENT,
                        a.started, finished, a_error, a_attrs,
                        tuple(events_by.get(n, ())), task.id))
        if not task.attempts:  # ended while waiting (cancelled, its agent gone)
            out.append((tid, new_span_id(64) or 1, own, "corral.queue", INTERNAL,
                        task.created, end, None, {"gen_ai.agent.name": agent}, (), task.id))
        return out

    def stats(self) -> dict[str, int]:
        return {"recorded": self.recorded, "dropped": self.dropped,
                "buffered": len(self.spans)}
