"""Tasks: run one, list them, show one, cancel one."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, Literal

import click
import msgspec

from .. import methods as m
from ..askviews import what_it_asks
from ..jsonline import one_line
from ..taskoptions import TaskFilters, TaskOptions
from .app import Ctx, command, complete_agents, fail, json_option, said
from .client import EXIT_FAILED, EXIT_UNREACHABLE, CallFailed, Client, Unreachable
from .durations import duration
from .render import dumps, human_time, millis, print_json, stamp, table
from .taskflags import given, with_flags

MAX_INPUT = 16 * 1024 * 1024 - 4096


def _read_input(value: str, hint: str = "--input") -> msgspec.Raw:
    if value == "-":
        data = sys.stdin.buffer.read()
    elif value.startswith("@"):
        from pathlib import Path  # not at the start of every `corral run` (app.COMMANDS)

        try:
            data = Path(value[1:]).read_bytes()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {value[1:]}: {exc.strerror}",
                                     param_hint=hint) from None
    else:
        data = value.encode()
    data = one_line(data)  # (a pretty-printed file's)
    if len(data) > MAX_INPUT:
        fail(f"input too large: {len(data)} bytes is over the {MAX_INPUT}-byte limit")
    try:
        # checked here (a clear usage error), sent on as the bytes it is: no objects built
        raw: msgspec.Raw = msgspec.json.decode(data, type=msgspec.Raw)
    except msgspec.DecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=hint) from None
    return raw


def input_of(ctx: click.Context, param: click.Parameter, value: str) -> msgspec.Raw:
    """`_read_input` as an option's callback (--input, --data)."""
    return _read_input(value, param.opts[0])


reconnect_option = click.option(
    "--reconnect", type=click.FloatRange(min=0), default=60.0, show_default=True,
    metavar="SECONDS",
    help="If the daemon goes away while waiting (a restart), reconnect for this long and "
         "wait again for the same task.")


def _wait_again(obj: Ctx, task_id: str, reconnect: float) -> m.TaskInfo:
    """The daemon went away while we waited: reconnect and wait for the task by its id
    (the journal keeps it across a restart of the daemon)."""
    click.echo(f"corral: lost the daemon while waiting for task {task_id}; reconnecting",
               err=True)
    return _reconnecting(obj, lambda c: c.ask(m.TasksGet(task_id=task_id, wait=True)),
                         reconnect)


def _reconnecting(obj: Ctx, ask: Callable[[Client], m.TaskInfo],
                  reconnect: float) -> m.TaskInfo:
    """`ask` the daemon on a new connection, again while it cannot be reached, for
    `reconnect` seconds from the first time it could not be (a restart); it refusing, or
    staying away that long, ends the command."""
    deadline: float | None = None
    while True:
        try:
            with obj.client(wait_forever=True) as c:
                return ask(c)
        except Unreachable as exc:
            if deadline is None:
                deadline = time.monotonic() + reconnect
            if time.monotonic() >= deadline:
                fail(str(exc), EXIT_UNREACHABLE)
            time.sleep(0.2)
        except CallFailed as exc:
            fail(exc.message)


def task_options(fn: Any) -> Any:
    """What `run` and `submit` both take: the agent, the input, the task's options (read
    off their definition: taskflags.py) and where it runs."""
    fn = click.option("--tracestate", envvar="TRACESTATE", default=None, hidden=True)(fn)
    fn = click.option(
        "--traceparent", envvar="TRACEPARENT", default=None, metavar="W3C",
        help="The caller's W3C trace context (00-TRACE-SPAN-FLAGS; default $TRACEPARENT): "
             "the task's trace is its child (with [tracing]).")(fn)
    fn = click.option("--local", is_flag=True,
                      help="With [cluster]: run it on this node, not on whichever node "
                           "has room.")(fn)
    fn = with_flags(TaskOptions)(fn)
    fn = click.option("--input", "input_", default="null", metavar="JSON|@FILE|-",
                      help="The task's input: JSON, @file with JSON, or - for stdin "
                           "(default: null, for an agent that takes none).")(fn)
    return click.argument("agent", shell_complete=complete_agents)(fn)


@command(m.TasksSubmit)
@task_options
@json_option
def submit_task(obj: Ctx, /, agent: str, input_: str, local: bool, traceparent: str | None,
                tracestate: str | None, as_json: bool, **flags: Any) -> None:
    got: m.TaskAccepted = obj.call(m.TasksSubmit(
        agent=agent, input=_read_input(input_), local=local, traceparent=traceparent,
        tracestate=tracestate, **given(TaskOptions, flags)))
    click.echo(dumps(msgspec.to_builtins(got)) if as_json else got.task_id)


def _streamed(obj: Ctx, task_id: str, reconnect: float, as_json: bool) -> m.TaskResult:
    """Follow the task's live output (tasks.stream), each chunk printed as it comes (as
    JSON lines with --json); a daemon gone meanwhile is reconnected to and the stream
    resumed after the last chunk printed. The task's outcome once it has ended."""
    last: list[str] = []

    def on_chunk(method: str, params: Any) -> None:
        if method != "tasks.output":
            return
        last[:] = [params["id"]]
        if as_json:
            click.echo(dumps(params))
        elif params.get("truncated"):
            click.echo(f"\ncorral: {params['data']}", err=True)
        else:
            sys.stdout.write(params["data"])
            sys.stdout.flush()

    def ask(c: Client) -> m.TaskInfo:  # resumed after the last chunk printed
        got: m.TaskInfo = c.ask(m.TasksStream(
            task_id=task_id, last_event_id=last[0] if last else None),
            on_notification=on_chunk)
        return got

    info = _reconnecting(obj, ask, reconnect)
    if last and not as_json:
        click.echo()  # the output's last line ended, before the result
    return info.outcome()


@command(m.TasksRun, more="\n\nExits 0 only when the task succeeded.")
@task_options
@click.option("--detach", is_flag=True, help="Print the task id and return at once "
                                             "(as `corral submit`).")
@click.option("--stream", "stream", is_flag=True,
              help="Print the task's live output as it comes (what its agent sends with "
                   "ctx.emit), then its result.")
@reconnect_option
@json_option
def run_task(obj: Ctx, /, agent: str, input_: str, local: bool, traceparent: str | None,
             tracestate: str | None, detach: bool, stream: bool, reconnect: float,
             as_json: bool, **flags: Any) -> None:
    accepted: list[str] = []
    asked: dict[str, Any] = {"agent": agent, "input": _read_input(input_), "local": local,
                             "traceparent": traceparent, "tracestate": tracestate,
                             **given(TaskOptions, flags)}

    def on_note(method: str, params: Any) -> None:
        if method == "task.accepted":
            accepted.append(params["task_id"])
        elif method == "task.progress" and not as_json:
            total = f"/{params['total']:g}" if params.get("total") is not None else ""
            msg = f" {params['message']}" if params.get("message") else ""
            click.echo(f"progress: {params.get('progress', 0):g}{total}{msg}", err=True)

    if detach:  # answered at once, with the id of the task that runs on
        got: m.TaskAccepted = obj.call(m.TasksSubmit(**asked))
        click.echo(dumps(msgspec.to_builtins(got)) if as_json else got.task_id)
        return
    if stream:  # its output is read back by position: from its first chunk on
        task_id = obj.call(m.TasksSubmit(**asked)).task_id
        _finish(_streamed(obj, task_id, reconnect, as_json),
                "json-lines" if as_json else "text")
        return
    try:
        # the outcome comes when the task ends, however long it waits in the queue (a
        # sleeping agent, a budget, an unready replica): no client timeout
        res: m.TaskResult = obj.call(m.TasksRun(**asked), on_notification=on_note,
                                     reachable=False, wait_forever=True)
    except Unreachable as exc:
        if not accepted:  # never acknowledged: it may not exist
            fail(str(exc), EXIT_UNREACHABLE)
        res = _wait_again(obj, accepted[0], reconnect).outcome()
    _finish(res, "json" if as_json else "text")


# how a run's outcome is printed: JSON on one line after a stream's JSON lines
Shown = Literal["text", "json", "json-lines"]


def _finish(res: m.TaskResult, shown: Shown) -> None:
    """Print a run's outcome; exit 1 unless it succeeded."""
    if shown != "text":
        print_json(res, one_line=shown == "json-lines")
    elif res.status == "succeeded":
        click.echo(dumps(res.output, indent=2))
    else:
        why = res.error.message if res.error is not None else ""
        # after retries: how many attempts it had, so that a policy at work is seen
        tries = f" after {len(res.attempts)} attempts" if len(res.attempts) > 1 else ""
        click.echo(f"corral: task {res.task_id} {res.status}{tries}: {why}", err=True)
    if res.status != "succeeded":
        sys.exit(EXIT_FAILED)


@command(m.TasksList)
@click.option("--agent", default=None, shell_complete=complete_agents)
@click.option("-n", "--limit", default=50, show_default=True, type=click.IntRange(min=0))
@click.option("--since", default=None, metavar="DURATION",
              help="Only tasks created within this long ago: 90s, 15m, 1h, 2d.")
@click.option("--status", default=None,
              type=click.Choice(["queued", "running", "waiting", "suspended", "succeeded",
                                 "failed", "timed_out", "cancelled", "lost"]),
              help="Only tasks with this status.")
@click.option("--before", default=None, metavar="TASK_ID",
              help="Only tasks accepted before this one: the next page (older tasks).")
@click.option("--local", is_flag=True,
              help="With [cluster]: this node's own tasks (run with --local), not the "
                   "cluster's.")
@with_flags(TaskFilters)
@json_option
def tasks_list(obj: Ctx, /, agent: str | None, limit: int, since: str | None,
               status: str | None, before: str | None, local: bool, as_json: bool,
               **flags: Any) -> None:
    res: m.TaskList = obj.call_json(m.TasksList(
        agent=agent, limit=limit, status=status, since=duration(since), before=before,
        local=local, **given(TaskFilters, flags)), as_json)
    now = time.time()
    rows = [[t.task_id, t.agent, t.status, str(t.priority), str(t.attempts),
             human_time(now - t.created) + " ago"] for t in res.tasks]
    head = ["TASK", "AGENT", "STATUS", "PRIORITY", "ATTEMPTS", "CREATED"]
    if any(isinstance(t.node, str) for t in res.tasks):  # a cluster's tasks
        for row, t in zip(rows, res.tasks, strict=True):
            row.insert(3, t.node if isinstance(t.node, str) else "-")
        head.insert(3, "NODE")
    if any(t.options.tags for t in res.tasks):
        for row, t in zip(rows, res.tasks, strict=True):
            row.append(",".join(t.options.tags) or "-")
        head.append("TAGS")
    table(rows, head)
    if isinstance(res.next, str):
        click.echo(f"older tasks: the same with --before {res.next}", err=True)


@command(m.TasksGet)
@click.argument("task_id")
@click.option("--wait", is_flag=True, help="Wait until the task has finished.")
@click.option("--input", "with_input", is_flag=True,
              help="Show the input it was sent too (kept with its record; tasks:read).")
@click.option("--stream", "stream", is_flag=True,
              help="Print the task's live output from its first chunk as it comes, until "
                   "it has ended (as `corral run --stream`); then show it.")
@reconnect_option
@json_option
def task_get(obj: Ctx, task_id: str, wait: bool, with_input: bool, stream: bool,
             reconnect: float, as_json: bool) -> None:
    if stream:
        _streamed(obj, task_id, reconnect, as_json)
    try:
        res: m.TaskInfo = obj.call(m.TasksGet(task_id=task_id, wait=wait, input=with_input),
                                   reachable=not wait, wait_forever=wait)
    except Unreachable:
        res = _wait_again(obj, task_id, reconnect)
    if as_json:
        print_json(res, one_line=stream)
        return
    if with_input:
        click.echo("input: " + (dumps(res.input) if res.input is not msgspec.UNSET
                                else "(not kept: a cluster task, or a daemon without a "
                                     "journal)"))
    for key in ("task_id", "agent", "status", "priority", "created", "started", "finished",
                "queue_wait", "ran", "tool_calls", "progress", "output", "error"):
        val = _shown(res, key)
        if val is not None:
            click.echo(f"{key}: {dumps(val) if isinstance(val, dict | list) else val}")
    if res.waiting is not None:
        click.echo(f"waiting: {res.waiting}")
    for ask in res.asks if isinstance(res.asks, list) else ():
        click.echo(f"waiting for: {what_it_asks(ask)} (ask {ask.id})")
    for key, val in msgspec.to_builtins(res.options).items():  # as its submitter asked
        if key in m.TaskInfo.__struct_fields__:
            continue  # (shown above, as the task has it)
        click.echo(f"{key}: {dumps(val) if isinstance(val, dict | list | tuple) else val}")
    if res.usage is not None:
        u = res.usage
        click.echo(f"usage: {u.input_tokens + u.output_tokens:,} tokens ({u.input_tokens:,} "
                   f"in, {u.output_tokens:,} out), ${u.cost_usd:.4f}, models "
                   + ", ".join(sorted(u.models)))
    for i, a in enumerate(res.attempts, 1):
        retried = (f", retried after {a.backoff:g} s" if isinstance(a.backoff, float)
                   else "")
        click.echo(f"attempt {i}: {where(a)}{a.outcome}" + (f" ({a.error})" if a.error
                                                            else "") + retried
                   + steps_of(a))


def _shown(res: m.TaskInfo, key: str) -> Any:
    """A field of `corral task ID` as a person reads it: times as in the logs, waits and
    run times with their unit."""
    if key in ("created", "started", "finished"):
        at = getattr(res, key)
        return None if at is None else stamp(at)
    if key == "queue_wait":
        return None if res.queue_wait is None else seconds(res.queue_wait)
    if key == "ran":
        return (None if res.started is None or res.finished is None
                else seconds(res.finished - res.started))
    if key == "output" and res.output_dropped:
        return "(dropped from memory: the daemon keeps keep_tasks_mb of outputs)"
    return msgspec.to_builtins(getattr(res, key))


def seconds(s: float) -> str:
    """A short span as people read it: 0.05 ms, 7.51 ms, 1.2 s, 5 s."""
    return f"{millis(s * 1000)} ms" if s < 1 else f"{s:.3g} s" if s < 100 else f"{s:.0f} s"


def steps_of(a: m.Attempt) -> str:
    """What an attempt's steps journal answered (docs/durable.md)."""
    said = []
    if isinstance(a.replayed, int):
        said.append(f"{a.replayed} steps replayed")
    if isinstance(a.diverged, int):
        said.append(f"diverged at tool call {a.diverged}, live from there")
    if isinstance(a.made_again, list):
        said += [f"{m.tool} made again under key {m.key} ({m.why})" for m in a.made_again]
    return f"; {', '.join(said)}" if said else ""


def where(a: m.Attempt) -> str:
    """Where an attempt ran, as far as it is known: a cluster attempt a node claimed but
    had not yet given to a replica (cluster.records.NOT_STARTED) names none, nor a pid."""
    node = f"node {a.node} " if isinstance(a.node, str) else ""
    if a.replica < 0:
        return f"{node}(claimed, {'waiting for' if a.outcome == 'running' else 'never on'} " \
               "a replica) "
    return f"{node}replica {a.replica} " + (f"pid {a.pid} " if a.pid is not None else "")


said(m.TasksCancel, "task_id", lambda res: f"{res.task_id}: {res.status}")
