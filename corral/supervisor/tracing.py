"""Traces of tasks, the engine's side (docs/tracing.md): the context a task starts with,
the sampling decision, and each span as one tuple appended to a bounded buffer; no I/O
(daemon/traces.py hands the tuples to the exporter). A task's spans are made once, at its
end, from what the Task records; only a tool call is timed as it happens.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from ..tracecontext import (
    CALLER,
    CURRENT,
    FROM_ID,
    ClientSpan,
    FromId,
    Parent,
    TaskTrace,
    meta,
    new_span_id,
    of_id,
    parse_or_none,
    parse_or_refuse,
)
from ..traceids import MASK64
from .process_replica import ReplicaExit
from .tasks.call import WORKER
from .tasks.interceptors import StepReplay, TaskInterceptor, TaskPath, TraceStart
from .tasks.steps import MODEL_STEP
from .tasks.taskmachine import TaskStatus
from .tracerecords import (
    CLIENT,
    INTERNAL,
    SPAN,
    TASK,
    TEXT_MAX,
    TOOL,
    Record,
    bounded,
    operation_of,
)

if TYPE_CHECKING:
    from .policy import PolicyVerdict
    from .tasks.call import Call
    from .tasks.model import Task

FAILED = frozenset({TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.LOST})
SUCCEEDED = TaskStatus.SUCCEEDED
HELD_MAX = 256  # tool spans an unsampled task keeps for the tail rule; past it, dropped
EVENTS_MAX = 64  # exits recorded on one task's attempts
# a record's encoded bytes past which its texts are cut before it is buffered, and the
# buffer's bytes past which records are dropped
RECORD_MAX = 16 * TEXT_MAX
BUFFER_BYTES = 64 << 20
FRAME_BYTES = 1 << 20  # a batch's bytes past which it is full whatever its records
LOW56 = (1 << 56) - 1
UNSAMPLED = FROM_ID[False]


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
        # TraceIdRatioBased: the trace id's random low 56 bits against the ratio's share
        # (the W3C's random part, and a task id's: its low 64 bits begin with a variant)
        return (trace_id & LOW56) < int(self.ratio * (1 << 56))


class Tracer(TaskInterceptor):
    """The spans of the engine's tasks, buffered for an exporter: an interceptor of the
    task path (tasks/interceptors.py)."""

    def __init__(self, sampling: Sampling | None = None, *, capacity: int = 65536,
                 batch: int = 512, ready: Callable[[], None] | None = None) -> None:
        """`ready`: told when the buffer takes its first span (the exporter's timer
        starts) and when a batch is full (daemon/traces.py's)."""
        self.sampling = sampling or Sampling()
        self.capacity = capacity
        self.batch = batch
        self.dropped = 0  # spans the buffer had no room for (the exporter counts its own)
        self._taken = 0  # records taken by the exporter (`recorded`: these and the waiting)
        self.buffered = 0  # records waiting, in `_frames` and `_frame`
        self._bytes = 0  # their bytes in `_frames`
        self._frame_spans = 0  # the spans the records in `_frame` make
        # each record encoded as it is put (see `put`): a batch's records are the items
        # of one msgpack array, `_frame` the one filling, `_frames` the full ones as
        # (records, spans, bytes with the array's header)
        self._frame = bytearray()
        self._in_frame = 0
        self._frames: deque[tuple[int, int, bytes]] = deque()
        self._encode = msgspec.msgpack.Encoder().encode_into
        self.ready = ready
        self._active: Mapping[str, Task] = {}  # the engine's tasks in flight (`bind`)

    @property
    def recorded(self) -> int:
        return self._taken + self.buffered

    @property
    def sampling(self) -> Sampling:
        return self._sampling

    @sampling.setter
    def sampling(self, sampling: Sampling) -> None:
        self._sampling = sampling
        self._all = sampling.ratio >= 1.0  # every new trace sampled: no decision to make
        # `head`'s bound on an id's low 56 bits written as an id's tail ("hh-" and 12 hex
        # digits), so that the id's own tail is compared with it as text, unparsed (fixed
        # width, lower-case hex: the order of the texts is the numbers')
        below = int(sampling.ratio * (1 << 56))
        self._below = "" if below <= 0 else "~" if self._all else \
            f"{below >> 48:02x}-{below & ((1 << 48) - 1):012x}"
        self._slow = sampling.slow

    # -- the engine's interceptor ----------------------------------------------------------
    def bind(self, path: TaskPath) -> None:
        self._active = path.active
        path.stream.subscribe(self._exited, ReplicaExit)

    def intercept_task_start(self, start: TraceStart, next: Callable[[TraceStart], None]
                             ) -> None:
        self.begin(start.task, start.traceparent, start.tracestate)
        next(start)

    def intercept_task_end(self, task: Task, next: Callable[[Task], None]) -> None:
        self.finished(task)
        next(task)

    def intercept_step_replay(self, replay: StepReplay,
                              next: Callable[[StepReplay], None]) -> None:
        self.replayed(replay.task, replay.kind, replay.name)
        next(replay)

    def intercept_tool_call(self, call: Call, next: Callable[[Call], Any]) -> Any:
        """The trace link: one client span a call, at every door (docs/tracing.md), whose
        context goes to the MCP server in `params._meta` (and to a team's member or an
        agent called as a tool: its task is the span's child). A traced task's call is
        under its attempt (or the worker's own span of the same trace); a call of no task
        under the context its caller sent in `_meta`, its decision to sample honoured,
        and, without one, not traced."""
        task = call.task
        said = CALLER.get()
        if task is None:
            context = parse_or_none(said.get("traceparent"), said.get("tracestate")) \
                if said else None
            if context is None:
                return next(call)
            more = _more(call)
            sampled = self._sampling.head(context.trace_id, context.sampled)
            owner = f"{'replica' if call.door == WORKER else 'gateway'}:{call.caller}"
            return self._timed(functools.partial(next, call), context.trace_id, sampled,
                               context.tracestate, self.put if sampled else None,
                               context.span_id, call.name, owner, 0, more)
        trace = self.full(task)
        if trace is None:
            return next(call)
        more = _more(call)
        # the worker's own span, when it sent one of this trace (else the attempt's)
        parent = own_span(said.get("traceparent"), trace.trace_id) if said else 0
        return self._timed(functools.partial(next, call), trace.trace_id, trace.sampled,
                           trace.tracestate, functools.partial(self._keep, trace),
                           parent or trace.attempt_span(task.attempt), call.name, task.id,
                           task.attempt, more)

    # a skill read's span is a call of no task's, its method in its record (decision 1691)
    intercept_skill_read = intercept_tool_call

    # -- the context in -----------------------------------------------------------------------
    def begin(self, task: Task, traceparent: str | None, tracestate: str | None) -> None:
        """The task's trace: a child of the caller's context, or a new one."""
        if traceparent:
            p = parse_or_refuse(traceparent, tracestate)
            task.trace = TaskTrace(p.trace_id, p.span_id,
                                   self._sampling.head(p.trace_id, p.sampled), p.tracestate)
        elif len(task.id) == 36:  # a UUIDv7: the trace is the task's id (FromId)
            # `head`'s decision, read from the id's last 14 hex digits without parsing
            # them: every unsampled task pays it
            task.trace = FROM_ID[task.id[21:] < self._below]
        else:  # an id from before UUIDv7 (a caller's): one draw for the trace and span ids
            bits = new_span_id(192)
            trace_id = (bits >> 64) or 1
            sampled = self._all or self._sampling.head(trace_id, None)
            task.trace = TaskTrace(trace_id, 0, sampled, None, bits & MASK64)

    @staticmethod
    def full(task: Task) -> TaskTrace | None:
        """The task's TaskTrace, made from its id when it was traced from it (a tool
        call's or an exit's: they keep spans and events on it)."""
        trace = task.trace
        if isinstance(trace, FromId):
            trace = task.trace = of_id(task.id, trace.sampled)
        return trace

    # -- the buffer ---------------------------------------------------------------------------
    def put(self, record: Record, spans: int = 1) -> None:
        """`spans`: how many spans the record makes (counted, when it is dropped). Encoded
        here, not kept: kept records brought on the collector's full passes (docs/tracing.md)."""
        if self.buffered >= self.capacity:
            self.dropped += spans
            return
        frame = self._frame
        mark = len(frame)
        try:
            self._encode(record, frame, -1)
            size = len(frame)
            if size - mark > RECORD_MAX:  # a worker's long texts: cut now, as the
                del frame[mark:]  # exporter would, so that the buffer's bytes stay bounded
                self._encode(bounded(msgspec.to_builtins(record)), frame, -1)
                size = len(frame)
        except (TypeError, ValueError, OverflowError):  # a value msgpack cannot carry
            del frame[mark:]
            self.dropped += spans
            return
        if self._bytes + size > BUFFER_BYTES:
            del frame[mark:]
            self.dropped += spans
            return
        self.buffered += 1
        self._in_frame += 1
        self._frame_spans += spans
        if self._in_frame == self.batch or size >= FRAME_BYTES:
            self._seal()
            if self.ready is not None:
                self.ready()
        elif self.buffered == 1 and self.ready is not None:
            self.ready()

    def _seal(self) -> None:
        n, frame = self._in_frame, self._frame
        body = (bytes((0x90 | n,)) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
                if n < 1 << 16 else b"\xdd" + n.to_bytes(4, "big")) + frame
        self._frames.append((n, self._frame_spans, body))
        self._bytes += len(body)
        frame.clear()
        self._in_frame = self._frame_spans = 0

    @property
    def batches(self) -> int:
        return len(self._frames)

    @property
    def waiting_bytes(self) -> int:
        """The full batches' bytes."""
        return self._bytes

    def take(self) -> list[tuple[int, int, bytes]]:
        """What waits, as frames: (records, the spans they make, a msgpack array of
        them), at most `batch` records each; the buffer empty after."""
        if self._in_frame:
            self._seal()
        frames = list(self._frames)
        self._frames.clear()
        self._taken += self.buffered
        self.buffered = self._bytes = 0
        return frames

    def pending(self) -> list[Any]:
        """The records waiting, as the exporter will read them (msgpack: tuples as arrays;
        for tests and the bench), left in the buffer."""
        out: list[Any] = []
        for _, _, body in self._frames:
            out.extend(msgspec.msgpack.decode(body))
        if self._in_frame:
            n = self._in_frame
            out.extend(msgspec.msgpack.decode(b"\xdd" + n.to_bytes(4, "big") + self._frame))
        return out

    # -- tool calls ---------------------------------------------------------------------------
    async def _timed(self, make: Callable[[], Any], trace_id: int, sampled: bool,
                     tracestate: str | None, keep: Callable[[Record], None] | None,
                     parent: int, name: str, owner: str, attempt: int,
                     more: tuple[Any, ...] = ()) -> Any:
        """`make()`'s tool call under a client span of its own, whose record `keep` is
        given at its end (None: not kept); `more`: the record's (agent, door, call_id)."""
        span_id = new_span_id(64) or 1
        client = ClientSpan(meta(trace_id, span_id, sampled, tracestate))
        # this call's alone: it may run in its HTTP request's own task, which goes on
        mine = CURRENT.set(client)
        start = time.time()
        error: str | None = None
        try:
            result = make()
            if inspect.isawaitable(result):
                result = await result
            if isinstance(result, dict) and result.get("isError"):
                error = "tool_error"
            return result
        except BaseException as exc:
            error = getattr(exc, "message", None) or type(exc).__name__
            raise
        finally:
            CURRENT.reset(mine)
            if keep is not None:
                keep((TOOL, trace_id >> 64, trace_id & MASK64, span_id, parent, name, owner,
                      attempt, client.transport, client.request_id, start, time.time(), error,
                      *more))

    def _keep(self, trace: TaskTrace, record: Record) -> None:
        """A span of a task's attempt: buffered when its trace is sampled, else held
        until its outcome, for the tail rule."""
        if trace.sampled:
            self.put(record)
            return
        held = trace.held
        if held is None:
            held = trace.held = []
        if len(held) < HELD_MAX:
            held.append(record)

    def replayed(self, task: Task, kind: str, name: str) -> None:
        """A tool call (`kind` "tool") or a named step ("step") of a retried attempt,
        answered from the task's step journal: a span of no length where the live call's
        would be."""
        attrs: dict[str, Any] = {"corral.task.id": task.id, "corral.attempt": task.attempt,
                                 "corral.step.replayed": True}
        if kind == "tool" and name.startswith(MODEL_STEP):
            model = name[len(MODEL_STEP):]
            attrs.update({"gen_ai.operation.name": "chat", "gen_ai.request.model": model})
            span_name, kind_of = f"chat {model}", CLIENT
        elif kind == "tool":
            server, _, tool = name.partition("__")
            attrs.update({"mcp.method.name": "tools/call",
                          "gen_ai.operation.name": operation_of(server),
                          "gen_ai.tool.name": tool or name, "corral.mcp.server": server})
            span_name, kind_of = f"tools/call {tool or name}", CLIENT
        else:
            attrs["corral.step.name"] = name
            span_name, kind_of = f"step {name}", INTERNAL
        now = time.time()
        self._of_attempt(task, span_name, kind_of, now, now, None, attrs)

    def policy_decision(self, task: Task, decision: PolicyVerdict) -> None:
        """A policy rule's verdict on a call of the task's attempt (policy.py): a span of
        no length under the attempt, the call's facts by shape only."""
        now = time.time()
        self._of_attempt(task, f"policy {decision.name}", INTERNAL, now, now, None, {
            "corral.task.id": task.id, "corral.attempt": task.attempt,
            "corral.policy.call": decision.kind, "corral.policy.name": decision.name,
            "corral.policy.effect": decision.effect, "corral.policy.rule": decision.rule,
            "corral.policy.shape": decision.shape})

    def model_call(self, task: Task, name: str, start: float, error: str | None,
                   attrs: dict[str, Any]) -> None:
        """A model call a task's attempt made through corral's model gateway: a client
        span named and attributed as the GenAI conventions say (`chat MODEL`)."""
        attrs.update({"corral.task.id": task.id, "corral.attempt": task.attempt})
        self._of_attempt(task, name, CLIENT, start, time.time(), error, attrs)

    def caller_span(self, context: Parent, name: str, key: str, start: float,
                    error: str | None, attrs: dict[str, Any]) -> None:
        """A client span of a call of no task made whole now, a child of the context its
        caller sent (its decision to sample honoured); `key` whose call it was."""
        if self._sampling.head(context.trace_id, context.sampled):
            self.put((SPAN, context.trace_id >> 64, context.trace_id & MASK64,
                      new_span_id(64) or 1, context.span_id, name, key, CLIENT, start,
                      time.time(), error, attrs))

    def _of_attempt(self, task: Task, name: str, kind: int, start: float, end: float,
                    error: str | None, attrs: dict[str, Any]) -> None:
        """A span made whole now, a child of the task's attempt's."""
        trace = self.full(task)
        if trace is not None:
            self._keep(trace, (SPAN, trace.trace_id >> 64, trace.trace_id & MASK64,
                               new_span_id(64) or 1, trace.attempt_span(task.attempt), name,
                               task.id, kind, start, end, error, attrs))

    # -- a worker's exit ----------------------------------------------------------------------
    def _exited(self, e: ReplicaExit) -> None:
        r = e.replica
        if getattr(r, "kind", None) != "agent":
            return
        now = time.time()
        name = "corral.cap_kill" if "limit" in e.reason else "corral.replica.exited"
        for task in self._active.values():
            if task.trace is None or task.replica is not r:
                continue
            trace = self.full(task)
            assert trace is not None
            events = trace.events
            if events is None:
                events = trace.events = []
            if len(events) < EVENTS_MAX:
                events.append((now, task.attempt, name, e.reason))

    # -- a task's end -------------------------------------------------------------------------
    def finished(self, task: Task) -> None:
        trace = task.trace
        if trace is None:
            return
        end = task.finished or time.time()
        status = task.status
        if trace is UNSAMPLED:  # the commonest end when sampling: nothing held to drop
            if status not in FAILED and end - task.created < self._slow:
                return
        elif not trace.sampled and status not in FAILED and end - task.created < self._slow:
            if not isinstance(trace, FromId):
                trace.held = None
            return
        error = task.error
        attempts = task.attempts
        # the status's text, not its enum member: a record of plain values is one the
        # collector stops tracking at its first pass
        text = status._value_
        spans = 1 + (2 * len(attempts) or 1)  # as `spans_of` counts them
        said = error.message if error is not None and status != SUCCEEDED else None
        if isinstance(trace, FromId):  # its ids are its id's: the exporter's to derive
            self.put((TASK, None, None, None, 0, task.agent, task.id, text, said,
                      task.priority, task.tool_calls, task.created, end, task.usage,
                      attempts, None, task.session), spans)
            return
        self.put((TASK, trace.trace_id >> 64, trace.trace_id & MASK64, trace.span_id,
                  trace.parent_id, task.agent, task.id, text, said, task.priority,
                  task.tool_calls, task.created, end, task.usage, attempts, trace.events,
                  task.session), spans)
        if trace.held:
            for record in trace.held:
                self.put(record)
        trace.held = None

    def stats(self) -> dict[str, int]:
        return {"recorded": self.recorded, "dropped": self.dropped,
                "buffered": self.buffered}


def _more(call: Call) -> tuple[Any, ...]:
    """A call's span's record past its name: its replica (None: a gateway client's, no
    agent's, named by its client), door and key, and a skill read's method."""
    r = call.replica
    more: tuple[Any, ...] = (r.name if r is not None else None, call.door, call.key)
    return more if call.skill is None else (*more, call.skill)


def own_span(traceparent: Any, trace_id: int) -> int:
    """The span id of a worker's `traceparent` when it is of `trace_id` and valid, else 0
    (`parse_or_none`'s reading). Version 00's one layout, what workers send with each
    tool call, is read by its fixed places without the regular expression."""
    if type(traceparent) is str and len(traceparent) == 55 and traceparent[:3] == "00-" \
            and traceparent[35] == "-" and traceparent[52] == "-":
        try:
            trace = bytes.fromhex(traceparent[3:35])
            span = bytes.fromhex(traceparent[36:52])
            flags = bytes.fromhex(traceparent[53:])
        except ValueError:
            return 0
        if len(trace) != 16 or len(span) != 8 or len(flags) != 1:
            return 0  # (a space among the digits: fromhex skips it, the format does not)
        return int.from_bytes(span) if int.from_bytes(trace) == trace_id else 0
    own = parse_or_none(traceparent)
    return own.span_id if own is not None and own.trace_id == trace_id else 0


