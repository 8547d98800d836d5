"""Workflows: list them, print one's plan, run one; a run's tree of steps, runs listed,
a run cancelled; workflows added, changed, removed and rolled back at runtime
(docs/workflows.md)."""

from __future__ import annotations

import time
from typing import Any

import click
import msgspec

from .. import methods as m
from .app import Ctx, cli, command, fail, json_option, said, shows
from .client import EXIT_FAILED
from .durations import duration
from .render import dumps, print_json, table
from .runtimedefs import runtime_commands
from .tasks import _read_input, input_of


@cli.group("workflows", help="Workflows: those of the config ([workflows.NAME]) and those "
                             "added at runtime (with revisions), and their runs.")
def workflows() -> None:
    pass


@shows(m.WorkflowsList)
def workflows_list(res: m.WorkflowList) -> None:
    table([[w.name, " -> ".join(w.steps), ", ".join(w.agents),
            "file" if w.revision is None else f"rev {w.revision}", w.tenant or "-",
            w.description]
           for w in res.workflows], ["NAME", "STEPS", "AGENTS", "FROM", "TENANT", "DESCRIPTION"])


@command(m.WorkflowsPlan, more="\n\nWith --file, the plan of a "
                   "config file's workflow, checked against that file's agents, without "
                   "a daemon.")
@click.argument("name")
@click.option("--file", "path", type=click.Path(dir_okay=False), default=None,
              help="Read the workflow from this config file instead of the daemon.")
@json_option
def workflows_plan(obj: Ctx, name: str, path: str | None, as_json: bool) -> None:
    if path is not None:
        click.echo(_plan_of_file(path, name))
        return
    click.echo(obj.call_json(m.WorkflowsPlan(name=name), as_json).plan)


def _plan_of_file(path: str, name: str) -> str:
    from ..supervisor.config import ConfigError
    from ..supervisor.configload import load_config
    from ..supervisor.workflows import compile_workflow, plan_text

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        fail(f"invalid config: {exc}")
    spec = cfg.workflows.get(name)
    if spec is None:
        fail(f"no such workflow: {name} in {path} (workflows: "
             f"{', '.join(sorted(cfg.workflows)) or 'none'})")
    return plan_text(compile_workflow(name, spec, None, cfg.workflows))


_WAITED = ("\n\nWith --wait (and no --json): exits 1 when the run ended other than "
           "succeeded, 0 when it succeeded or still runs as the wait ends.")


@command(m.WorkflowsRun, more=_WAITED)
@click.argument("name")
@click.option("--input", "input_", default="null", metavar="JSON",
              help="The run's input: JSON, @FILE, or - for stdin.")
@click.option("--wait", type=click.FloatRange(min=0, max=m.MAX_WAIT), default=None,
              metavar="SECONDS", help="Wait this long for the run to end.")
@click.option("--dry-run", is_flag=True, help="Print the plan; run nothing.")
@click.option("--traceparent", envvar="TRACEPARENT", default=None, metavar="W3C",
              help="The caller's trace context: the run's trace is a child of it.")
@click.option("--tracestate", envvar="TRACESTATE", default=None, hidden=True)
@json_option
def workflows_run(obj: Ctx, name: str, input_: str, wait: float | None, dry_run: bool,
                  traceparent: str | None, tracestate: str | None, as_json: bool) -> None:
    if dry_run:
        plan: m.WorkflowPlan = obj.call(m.WorkflowsPlan(name=name))
        click.echo(plan.plan)
        return
    res: m.RunView = obj.call(m.WorkflowsRun(
        name=name, input=_read_input(input_), wait=wait, traceparent=traceparent,
        tracestate=tracestate), wait_forever=wait is not None)
    if wait is None and not as_json:
        click.echo(res.run_id)
        return
    _shown_run(res, obj, as_json, wait)


def _shown_run(run: m.RunView, obj: Ctx, as_json: bool, wait: float | None) -> None:
    """The run as JSON (its status in it: exit 0), or as its tree; waited for, the tree's
    command exits 1 unless the run succeeded (or still runs: the wait ran out)."""
    if as_json:
        print_json(run)
        return
    _tree(run, obj)
    if wait is not None and run.status not in ("succeeded", "running"):
        raise SystemExit(EXIT_FAILED)


def _took(start: float | None, end: float | None) -> str:
    if start is None:
        return ""
    return f"{(end if end is not None else time.time()) - start:.2f}s"


def _shown(value: Any, width: int = 60) -> str:
    text = dumps(msgspec.to_builtins(value))
    return text if len(text) <= width else text[:width - 3] + "..."


NESTED_SHOWN = 4  # levels of nested runs drawn under their steps


def _tree(run: m.RunView, obj: Ctx) -> None:
    """The run, then each step of it (those not started yet `pending`), a nested step's
    run's steps under it."""
    click.echo(f"run {run.run_id}  workflow {run.workflow}  {run.status}  "
               f"{_took(run.created, run.ended)}"
               + (f"  revision {run.revision}" if run.revision is not None else "")
               + (f"  ({run.error})" if run.error else ""))
    _steps(run, "", obj, 0)
    if run.status == "succeeded":
        shown = (_shown(run.output, 200) if run.output is not None or not run.output_bytes
                 or run.output_bytes <= 4 else
                 f"{run.output_bytes} bytes: `corral run-status {run.run_id} --json "
                 f"--step {run.graph[-1].step}` pages it" if run.graph else "")
        click.echo(f"output: {shown}")


ITEMS_SHOWN = 10  # a map's items that did not succeed, listed under it


def _steps(run: m.RunView, prefix: str, obj: Ctx, depth: int) -> None:
    """Each step of the run's graph, where it is (a map's items counted), and a map's
    items that did not succeed (from its page of rows)."""
    for i, g in enumerate(run.graph):
        last = i == len(run.graph) - 1
        bar = prefix + ("   " if last else "│  ")
        if g.status == "pending":
            click.echo(f"{prefix}{'└─' if last else '├─'} {g.step}  pending")
            continue
        extra = ("  [" + ", ".join(f"{n} {k}" for k, n in sorted(g.items.items())) + "]"
                 if g.items else "")
        task = (f"  task {g.task_id}" if g.task_id else
                f"  run {g.run_id}" if g.run_id else "")
        click.echo(f"{prefix}{'└─' if last else '├─'} {g.step}  {g.status}  "
                   f"{_took(g.started, g.ended)}{task}{extra}"
                   + (f"  ({g.error})" if g.error else ""))
        if g.run_id is not None and depth < NESTED_SHOWN:
            child: m.RunView = obj.call(m.RunsGet(run_id=g.run_id, limit=0, outputs=False))
            _steps(child, bar, obj, depth + 1)
        if not any(k != "succeeded" for k in g.items):
            continue
        rows: m.RunView = obj.call(m.RunsGet(
            run_id=run.run_id, step=g.step, limit=m.MAX_RUN_ROWS, outputs=False))
        for x in [x for x in rows.steps if x.item is not None
                  and x.status != "succeeded"][:ITEMS_SHOWN]:
            click.echo(f"{bar}  [{x.item}] {x.status}  {_took(x.started, x.ended)}  "
                       + (f"task {x.task_id}" if x.task_id else f"run {x.run_id}")
                       + (f"  ({x.error})" if x.error else ""))


@command(m.RunsGet, more=_WAITED)
@click.argument("run_id")
@click.option("--wait", type=click.FloatRange(min=0, max=m.MAX_WAIT), default=None,
              metavar="SECONDS", help="Wait this long for the run to end.")
@click.option("--step", default=None, metavar="STEP",
              help="With --json: the rows of this step alone (a map's items).")
@click.option("--outputs/--no-outputs", default=True,
              help="With --json: each row with its output (a page ends past 4 MiB).")
@click.option("--offset", type=click.IntRange(min=0), default=0, metavar="N",
              help="With --json: the page of rows from this one (`steps_next`).")
@json_option
def run_status(obj: Ctx, run_id: str, wait: float | None, step: str | None,
               outputs: bool, offset: int, as_json: bool) -> None:
    # the tree is drawn from the graph: no rows are read for it
    page = (m.RunsGet(run_id=run_id, wait=wait, step=step, outputs=outputs, offset=offset)
            if as_json else m.RunsGet(run_id=run_id, wait=wait, limit=0, outputs=False))
    _shown_run(obj.call(page, wait_forever=wait is not None), obj, as_json, wait)


@shows(m.RunsList, group=True)
@click.option("--workflow", default=None, help="Only this workflow's runs.")
@click.option("--status", default=None,
              type=click.Choice(["running", "succeeded", "failed", "cancelled",
                                 "timed_out"]),
              help="Only runs in this status.")
@click.option("--since", default=None, metavar="DURATION",
              callback=lambda ctx, param, value: duration(value),
              help="Only runs started within this long ago: 90s, 15m, 1h, 2d.")
@click.option("--before", default=None, metavar="RUN_ID",
              help="Only runs started before this one: the next page (older runs).")
@click.option("-n", "--limit", type=click.IntRange(min=0), default=100, show_default=True)
def runs_list(res: m.RunList) -> None:
    table([[r.run_id, r.workflow, r.status, _took(r.created, r.ended), r.tenant or "-",
            r.error or ""]
           for r in res.runs], ["RUN", "WORKFLOW", "STATUS", "TOOK", "TENANT", "ERROR"])
    if isinstance(res.next, str):
        click.echo(f"older runs: the same with --before {res.next}", err=True)


@shows(m.RunsSignal)
@click.argument("run_id")
@click.argument("name")
@click.option("--data", "data", default="null", metavar="JSON", callback=input_of,
              help="The signal's data (the step's output): JSON, @FILE, or - for stdin.")
@click.option("--key", default=None,
              help="Names this signal: sent again with it, it is answered as the first.")
def runs_signal(res: m.SignalSent) -> None:
    click.echo(f"{res.run_id}: signal {res.name} kept (#{res.seq})"
               + (", sent before under this key" if res.duplicate else ""))


said(m.RunsCancel, "run_id", lambda res: f"{res.run_id}: {res.status}")


# -- runtime workflows, with revisions (daemon/workflows/catalog.py) ------------------------
runtime_commands("workflows", "workflow", (
    m.WorkflowsAdd, m.WorkflowsUpdate, m.WorkflowsRemove, m.WorkflowsDescribe,
    m.WorkflowsHistory, m.WorkflowsRollback))
