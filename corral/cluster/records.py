"""A cluster task's record in Redis (a hash, and a list of attempts) read back as what
`corral task ID` and `corral run` answer, and a local attempt written as the record's.

The output, the error and the progress are kept as JSON bytes, as the local journal keeps
them: an output is forwarded to the client as it came from the worker.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from .. import methods as m
from ..supervisor.tasks import ON_WORKER as TASK_ON_WORKER
from ..supervisor.tasks import TERMINAL as TASK_TERMINAL
from ..supervisor.tasks import ModelUsage, Task, TaskFailure, is_task_id
from ..supervisor.tasks.dispatch import why_delayed
from ..taskoptions import NO_OPTIONS, TaskOptions, decoded
from ..taskviews import queue_wait
from ..tracecontext import MAX_TRACESTATE, parse_or_refuse
from ..tracecontext import traceparent as format_traceparent
from .connection import read
from .keys import Keys

# the engine's, as the record's status field holds them
TERMINAL = frozenset(s.encode() for s in TASK_TERMINAL)
ON_WORKER = frozenset(s.encode() for s in TASK_ON_WORKER)  # (an attempt of it runs)


def on_worker(status: str) -> str:
    """Lua: whether a record's status (`status`, an expression) is one of an attempt on a
    worker: running, or waiting for a person (the machine moves both alike)."""
    return "(" + " or ".join(f"{status} == '{s}'" for s in sorted(TASK_ON_WORKER)) + ")"


NOT_STARTED = -1  # an attempt claimed by a node, not yet on one of its replicas

_error = msgspec.json.Decoder(m.TaskFailure)


class ClusterAttempt(msgspec.Struct, omit_defaults=True):
    """An attempt as the record keeps it: the local one, and the node that ran it."""

    replica: int
    pid: int | None
    started: float
    node: str
    finished: float | None = None
    outcome: str = "running"
    error: str | None = None
    replayed: int | UnsetType = UNSET  # its steps answered from the task's (steps.py)
    diverged: int | UnsetType = UNSET
    backoff: float | UnsetType = UNSET  # (Attempt's: it was retried after so long)
    # the task's tool calls when its node wrote this attempt (Task.tool_calls, the count
    # its budget keeps): the count its view says, carried by the write of the attempt's
    # end, never one of its own per call
    tool_calls: int | UnsetType = UNSET
    # what its worker reported it spent (usage/report) while its node held the claim: a
    # claim's task is made from the record, which carries no usage, so each claim's is
    # its own and the view adds them up
    usage: ModelUsage | UnsetType = UNSET


class _AttemptRow(m.Attempt):
    """An attempt as the record keeps it, read once for the view: the attempt it shows,
    and what its write carries for its task's view."""

    tool_calls: int = 0
    usage: ModelUsage | None = None


_encode = msgspec.json.Encoder().encode
_row = msgspec.json.Decoder(_AttemptRow)
_ATTEMPT_FIELDS = len(m.Attempt.__struct_fields__)  # (a subclass's own come after)


def attempts_json(task: Task, node: str) -> list[bytes]:
    """The attempts of the task's claim as the record keeps them, the last with the
    task's count of tool calls and its claim's usage."""
    last = len(task.attempts) - 1
    return [_encode(ClusterAttempt(a.replica, a.pid, a.started, node, a.finished,
                                   a.outcome, a.error, a.replayed, a.diverged, a.backoff,
                                   *_carry(task) if i == last else ()))
            for i, a in enumerate(task.attempts)]


def suspended_attempt(task: Task, node: str, now: float, error: str) -> bytes:
    """The task's last attempt as its suspension ends it."""
    a = task.attempts[-1]
    return _encode(ClusterAttempt(a.replica, a.pid, a.started, node, now, "suspended",
                                  error, a.replayed, a.diverged, UNSET, *_carry(task)))


def _carry(task: Task) -> tuple[int, ModelUsage | UnsetType]:
    return task.tool_calls, UNSET if task.usage is None else task.usage


def claimed_attempt(node: str, now: float) -> bytes:
    """What a claim records before the task reaches a replica here."""
    return _encode(ClusterAttempt(NOT_STARTED, None, now, node))


# what trace_field writes at most: a traceparent (55 characters), a line break and a
# tracestate cut to its bound
MAX_TRACE_FIELD = 55 + 1 + MAX_TRACESTATE


def trace_field(traceparent: str | None, tracestate: str | None) -> str:
    """The caller's trace context as the record keeps it ('' none): the `traceparent`
    written again from its parts, then its `tracestate` after a line break."""
    if not traceparent:
        return ""
    p = parse_or_refuse(traceparent, tracestate)
    return (format_traceparent(p.trace_id, p.span_id, p.sampled)
            + ("\n" + p.tracestate if p.tracestate else ""))


def trace_of(field: Any) -> tuple[str | None, str | None]:
    """(traceparent, tracestate) of a record's trace field (bytes, or false: none). One
    longer than trace_field writes is no node's (a Redis writer's 100 KB): none, the task
    traced from its id, never decoded nor carried on."""
    if not isinstance(field, bytes) or not field or len(field) > MAX_TRACE_FIELD:
        return None, None
    text = field.decode(errors="replace")
    traceparent, _, tracestate = text.partition("\n")
    return traceparent, tracestate or None


def error_json(error: TaskFailure) -> bytes:
    return _encode(error)


def when(v: bytes | None) -> float | None:
    """A record's time field (None: unset)."""
    return float(v) if v else None


def carried(attempts: list[_AttemptRow]) -> tuple[int, ModelUsage | None]:
    """The task's tool calls and usage as its record says them: the most any of its
    attempts' writes counted (each counts its task's calls, those of attempts before it
    too), and the sum of its claims' usage. An attempt taken over from a dead node says
    neither."""
    calls, usage = 0, None
    for kept in attempts:
        calls = max(calls, kept.tool_calls)
        if kept.usage is not None:
            usage = usage or ModelUsage()
            for model, u in kept.usage.models.items():
                usage.add_model(model, u.input_tokens, u.output_tokens, u.cost_usd,
                                u.reports)
    return calls, usage


def info(task_id: str, rec: dict[bytes, bytes], attempts: list[bytes]) -> m.TaskInfo:
    # a node writes the output and the error only with the task's end, signed with it
    # (its MAC checked before this is read): one of a task not ended is no node's
    ended = rec.get(b"status") in TERMINAL
    err = rec.get(b"error") if ended else None
    # held out of its stream until then (due.py), as a local delayed task waits
    not_before = when(rec.get(b"not_before")) if rec.get(b"status") == b"queued" else None
    rows = [_row.decode(a) for a in attempts]
    # (the view's attempts are the local ones: what each write carried is the task's)
    tried = [m.Attempt(*msgspec.structs.astuple(a)[:_ATTEMPT_FIELDS]) for a in rows]
    calls, usage = carried(rows)
    return m.TaskInfo(
        task_id=task_id, agent=rec[b"agent"].decode(), status=rec[b"status"].decode(),
        priority=int(rec[b"priority"]), created=float(rec[b"created"]),
        started=when(rec.get(b"started")), finished=when(rec.get(b"finished")),
        tool_calls=calls,
        # (its output is signed with its outcome, its progress not: checked before shown)
        progress=one_json_line(rec.get(b"progress")),
        output=msgspec.Raw(rec[b"output"]) if ended and rec.get(b"output") else None,
        error=_error.decode(err) if err else None,
        attempts=tried, usage=usage, options=options_in(rec.get(b"options")),
        # (its first claim's time: as a node's journal reads it, from its acceptance)
        queue_wait=queue_wait(float(rec[b"created"]), when(rec.get(b"started"))),
        not_before=not_before, waiting=None if not_before is None
        else why_delayed(not_before, tried, True))


def options_in(field: bytes | None) -> TaskOptions:
    """A record's options field: none also for ones that do not decode (a Redis
    writer's: never a failure of the read)."""
    try:
        return decoded(field or None)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return NO_OPTIONS


_attempts = msgspec.json.Decoder(list[m.Attempt])


def inline_result(task_id: str, fields: dict[bytes, bytes]) -> m.TaskResult | None:
    """The outcome as an outcomes stream entry carries it, when it does (FINISH)."""
    status = fields.get(b"status")
    if status is None:
        return None
    out, err = fields.get(b"output"), fields.get(b"error")
    return m.TaskResult(task_id, status.decode(), msgspec.Raw(out) if out else None,
                        _error.decode(err) if err else None,
                        _attempts.decode(fields[b"attempts"]))


async def input_of(redis: Any, keys: Keys, task_id: str) -> msgspec.Raw | None:
    """The task's input as its record keeps it, the bytes every claim of it gives its
    worker (None: no record, or no input a view may show): a cluster task's home is its
    record, as a node's task's is its journal (decision 2045)."""
    if not is_task_id(task_id):
        return None
    kept = await read(lambda: redis.hget(keys.task(task_id), "input"))
    return one_json_line(kept)


def one_json_line(field: bytes | None) -> msgspec.Raw | None:
    """An unsigned field shown as the JSON it is, when it is one JSON value on one line:
    forwarded as it is kept, a Redis writer's bytes that are not would break the answer
    that carries them (a line of the wire, jsonrpc.py), so they are none."""
    if not field or b"\n" in field:
        return None
    try:
        msgspec.json.decode(field)
    except msgspec.DecodeError:
        return None
    return msgspec.Raw(field)
