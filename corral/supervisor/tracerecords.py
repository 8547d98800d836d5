"""The trace records the engine buffers and the spans the exporter makes of them
(docs/tracing.md): the records' layout and the pure functions of a record (`expand`,
`spans_of`, `bounded`). The exporter's process (daemon/traceexport.py) imports this module
and none of the engine's: no asyncio, no task machine, so that its start is an
interpreter's and msgspec's, not the daemon's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..traceids import GOLDEN, MASK64, id_span, id_trace
from .tasks.interceptors import AGENT_TOOL

# a tool's name is split at its "__" here as the tools' rules split it: the engine's
# (mcp.pool, tasks.steps) are none of the exporter's imports
AGENT_SERVER = AGENT_TOOL.removesuffix("__")  # "corral": its tools are agents
# OTLP's SpanKind values
INTERNAL, SERVER, CLIENT = 1, 2, 3

# a span as the exporter makes it from a record (`expand`):
# (trace_id, span_id, parent_id, name, kind, start, end, error, attributes, events, task_id)
# times in seconds since the epoch; error None or its message; attributes a dict; events
# a sequence of (time, name, attributes)
Span = tuple[int, int, int, str, int, float, float, "str | None", dict[str, Any],
             Sequence[Sequence[Any]], str]

# What the loop buffers is a record, the fewest fields that make the spans (the exporter's
# `expand` writes the rest, in its own process):
# TASK: (TASK, trace_hi, trace_lo, span_id, parent_id, agent, task_id, status, error,
#        priority, tool_calls, created, end, usage, attempts, events, session): a task
#        and its attempts (trace_hi None: traced from its id, tracecontext.FromId, and
#        the ids are the exporter's to derive; session: the session it is a turn of, or
#        None; a record stored before sessions were traced ends at events)
# TOOL: (TOOL, trace_hi, trace_lo, span_id, parent_id, name, task_id, attempt, transport,
#        request_id, start, end, error, agent, door, call_id[, read]): a tool call, a worker's or
#        a gateway client's (task_id "gateway:CLIENT" or, a replica's of no task on the
#        worker link, "replica:LABEL"; attempt 0); agent: the calling agent's name, door:
#        the door it came by (tasks/call.py), call_id: its idempotency key (a journaled
#        call's; `call_id_of`); a gateway client's that is no agent's, and a record of an earlier
#        corral, ends at error; read: a skill read's method (decision 1691), its name the
#        skill's SERVER__SKILL
# SPAN: (SPAN, trace_hi, trace_lo, span_id, parent_id, name, key, kind, start, end, error,
#        attributes): a span made whole where it ended (a workflow run's, a step's:
#        daemon/workflows/runtraces.py); `key` the id it is read back by (a task's id,
#        a run's)
# (the trace id in two 64-bit halves: the pipe's msgpack carries no wider integer)
TASK, TOOL, SPAN = 0, 1, 2
Record = tuple[Any, ...]


# characters kept of a span's texts: an error message or a tool's name is a worker's to
# make (a protocol line long), and the store keeps spans by count (keep_spans)
TEXT_MAX = 1024
QUEUE_MIX = 0x5BD1E9955BD1E995  # a queue wait's span id from its attempt's


def queue_span(task_span: int, attempt: int) -> int:
    return ((task_span ^ (attempt * GOLDEN) ^ QUEUE_MIX) & MASK64) or 1


def expand(record: Sequence[Any], short: bool = False) -> list[Span]:
    """The spans of a record as the pipe brings it (msgpack: structs as maps, tuples as
    arrays), each text within TEXT_MAX. `short`: the record's msgpack is TEXT_MAX bytes
    at most, so none of its texts is longer."""
    if short:
        return _spans(record)
    return [_bounded(s) for s in _spans(record)]


def spans_of(record: Sequence[Any]) -> int:
    """How many spans `expand` makes of a record."""
    return 1 if record[0] != TASK else 1 + (2 * len(record[14]) or 1)


def bounded(value: Any) -> Any:
    if isinstance(value, str):
        return _cut(value)
    if isinstance(value, list | tuple):
        return [bounded(v) for v in value]
    if isinstance(value, dict):
        return {k: bounded(v) for k, v in value.items()}
    return value


def _cut(text: Any) -> Any:
    if isinstance(text, str) and len(text) > TEXT_MAX:
        return text[:TEXT_MAX] + "…"
    return text


def _bounded(span: Span) -> Span:
    tid, sid, parent, name, kind, start, end, error, attrs, events, task_id = span
    if len(name) <= TEXT_MAX and (error is None or len(error) <= TEXT_MAX) and not any(
            isinstance(v, str) and len(v) > TEXT_MAX for v in attrs.values()):
        return span
    return (tid, sid, parent, _cut(name), kind, start, end, _cut(error),
            {k: _cut(v) for k, v in attrs.items()}, events, task_id)


def _spans(record: Sequence[Any]) -> list[Span]:
    # the exporter writes a one-attempt task's spans from a template keyed by every field
    # read here but the ids, the times and the task id (daemon/otlprecords.py): a field
    # newly read goes into that key (tests/test_tracing_export.py varies each)
    if record[0] == TOOL:
        return [_tool(record)]
    if record[0] == SPAN:
        (_, hi, lo, own, parent, name, key, kind, start, end, error, given) = record
        return [(hi << 64 | lo, own, parent, name, kind, start, end, error, given, (), key)]
    (_, hi, lo, own, parent, agent, task_id, status, error, priority, tool_calls, created,
     end, usage, attempts, events) = record[:16]
    session = record[16] if len(record) > 16 else None
    if hi is None:  # traced from its id (tracecontext.FromId)
        tid = id_trace(task_id)
        own = id_span(tid)
    else:
        tid = hi << 64 | lo
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent,
        "corral.task.id": task_id, "corral.task.status": status,
        "corral.task.priority": priority, "corral.task.attempts": len(attempts),
        "corral.task.tool_calls": tool_calls}
    if error is not None:
        attrs["error.type"] = status
    if usage is not None:
        attrs["gen_ai.usage.input_tokens"] = usage["input_tokens"]
        attrs["gen_ai.usage.output_tokens"] = usage["output_tokens"]
        attrs["corral.usage.cost_usd"] = usage["cost_usd"]
        models = usage.get("models") or ()
        if len(models) == 1:
            attrs["gen_ai.request.model"] = next(iter(models))
    if session is not None:  # a turn of a conversation (sessions.py)
        attrs["gen_ai.conversation.id"] = session
    events_by: dict[int, list[tuple[float, str, dict[str, Any]]]] = {}
    for t, n, name, why in events or ():
        events_by.setdefault(n, []).append((t, name, {"corral.exit.reason": why}))
    retries = [(a["started"], "corral.task.retried", {"corral.attempt": i + 1})
               for i, a in enumerate(attempts) if i]
    out: list[Span] = [(tid, own, parent, f"invoke_agent {agent}", SERVER, created, end,
                        error, attrs, retries, task_id)]
    waited_from = created
    for i, a in enumerate(attempts):
        n = i + 1
        out.append((tid, queue_span(own, n), own, "corral.queue", INTERNAL, waited_from,
                    a["started"], None, {"gen_ai.agent.name": agent, "corral.attempt": n},
                    (), task_id))
        finished = a.get("finished") or end
        waited_from = finished
        outcome = a.get("outcome")
        a_attrs: dict[str, Any] = {
            "gen_ai.agent.name": agent, "corral.attempt": n,
            "corral.replica": f"{agent}#{a['replica']}", "corral.attempt.outcome": outcome,
            "network.transport": "pipe", "rpc.system": "jsonrpc", "rpc.method": "task/run"}
        if a.get("pid") is not None:
            a_attrs["process.pid"] = a["pid"]
        if isinstance(a.get("node"), str):
            a_attrs["corral.node"] = a["node"]
        a_error = None
        if outcome != "succeeded":
            a_error = a.get("error") or str(outcome)
            a_attrs["error.type"] = str(outcome)
        out.append((tid, ((own ^ (n * GOLDEN)) & MASK64) or 1, own, f"task/run {agent}",
                    CLIENT, a["started"], finished, a_error, a_attrs,
                    events_by.get(n, ()), task_id))
    if not attempts:  # ended while waiting (cancelled, its agent gone)
        out.append((tid, queue_span(own, 0), own, "corral.queue", INTERNAL, created, end,
                    None, {"gen_ai.agent.name": agent}, (), task_id))
    return out


def operation_of(server: str) -> str:
    """A tool call's gen_ai.operation.name: an agent called as a tool is invoked."""
    return "invoke_agent" if server == AGENT_SERVER else "execute_tool"


def call_id_of(record: Sequence[Any]) -> str:
    """A tool call's gen_ai.tool.call.id: its idempotency key where it has one (a task's
    journaled call: the same on each attempt's), else its span's id."""
    key = record[15] if len(record) > 15 else None
    return str(key) if key is not None else f"{record[3]:016x}"


def _tool(record: Sequence[Any]) -> Span:
    (_, hi, lo, span_id, parent, name, task_id, attempt, transport, request_id, start,
     end, error) = record[:13]
    agent, door = record[13:15] if len(record) > 13 else (None, None)
    read = record[16] if len(record) > 16 else None  # a skill read's method
    tid = hi << 64 | lo
    server, _, tool = name.partition("__")
    operation = operation_of(server) if read is None else None
    attrs: dict[str, Any] = {
        "mcp.method.name": "tools/call", "gen_ai.operation.name": operation,
        "gen_ai.tool.name": tool or name, "corral.mcp.server": server,
        "network.transport": transport} if read is None else {
        "mcp.method.name": read, "corral.skill.name": tool, "corral.mcp.server": server,
        "network.transport": transport}
    # the agent: the invoked one of an agent called as a tool, else the calling one
    if operation == "invoke_agent":
        attrs["gen_ai.agent.name"] = tool
    elif agent is not None:
        attrs["gen_ai.agent.name"] = agent
    if door is not None:
        attrs["corral.call.door"] = door
    if task_id.startswith("gateway:"):
        attrs["corral.gateway.client"] = task_id[len("gateway:"):]
    elif task_id.startswith("replica:"):
        attrs["corral.replica"] = task_id[len("replica:"):]
    else:
        attrs["corral.task.id"] = task_id
        attrs["corral.attempt"] = attempt
    if read is None:
        attrs["gen_ai.tool.call.id"] = call_id_of(record)
    if request_id is not None:
        attrs["jsonrpc.request.id"] = str(request_id)
    if error is not None:
        attrs["error.type"] = "tool_error" if error == "tool_error" else "rpc_error"
    return (tid, span_id, parent, f"{read or 'tools/call'} {tool or name}", CLIENT, start,
            end, error, attrs, (), task_id)
