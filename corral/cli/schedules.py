"""`corral schedules`: the schedules with their clocks, last and next fires; pause and
resume one (docs/workflows.md#schedules)."""

from __future__ import annotations

import click

from .. import methods as m
from .app import Ctx, cli, doc, json_option, pass_ctx
from .render import print_json, stamp, table


@cli.group(invoke_without_command=True, help=doc("schedules.list"))
@json_option
@pass_ctx
@click.pass_context
def schedules(ctx: click.Context, obj: Ctx, as_json: bool) -> None:
    if ctx.invoked_subcommand is not None:
        return
    res: m.ScheduleList = obj.call("schedules.list", m.SchedulesList())
    if as_json:
        print_json(res)
        return
    table([[s.name, f"agent {s.agent}" if s.agent else f"workflow {s.workflow}",
            f"every {s.every}" if s.every else f"cron {s.cron}", s.missed,
            "paused" if s.paused else "running", str(s.fires),
            stamp(s.last_fire), stamp(s.next_fire) if s.next_fire is not None else "-",
            s.last_started or "-"] for s in res.schedules],
          ["NAME", "STARTS", "WHEN", "MISSED", "STATE", "FIRES", "LAST", "NEXT",
           "LAST STARTED"])


def _show(s: m.ScheduleEntry, as_json: bool) -> None:
    if as_json:
        print_json(s)
        return
    state = "paused" if s.paused else f"running; next fire {stamp(s.next_fire)}" if \
        s.next_fire is not None else "running"
    click.echo(f"schedule {s.name}: {state}")


@schedules.command("pause", help=doc("schedules.pause"))
@click.argument("name")
@json_option
@pass_ctx
def schedules_pause(obj: Ctx, name: str, as_json: bool) -> None:
    _show(obj.call("schedules.pause", m.SchedulesPause(name=name)), as_json)


@schedules.command("resume", help=doc("schedules.resume"))
@click.argument("name")
@json_option
@pass_ctx
def schedules_resume(obj: Ctx, name: str, as_json: bool) -> None:
    _show(obj.call("schedules.resume", m.SchedulesResume(name=name)), as_json)
