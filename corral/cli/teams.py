"""Teams: list them; those added at runtime added, changed, removed and rolled back, with
revisions; call one and list its calls (docs/teams.md). A team is also called as an
agent is (`corral run TEAM`), its calls shown as its tasks (`corral task ID`)."""

from __future__ import annotations

import time

import click
import msgspec

from .. import methods as m
from .app import Ctx, cli, command, json_option
from .render import dumps, table
from .runtimedefs import runtime_commands, whose
from .tasks import _read_input


@cli.group("teams", help="Teams: those of the config ([teams.NAME]) and those added at "
                         "runtime (with revisions). Call one with `corral teams call "
                         "TEAM` (or `corral run TEAM`).")
def teams() -> None:
    pass


@command(m.TeamsList)
@json_option
def teams_list(obj: Ctx, as_json: bool) -> None:
    res: m.TeamList = obj.call_json(m.TeamsList(), as_json)
    table([[t.name, t.mode, ", ".join(t.members),
            "file" if t.revision is None else f"rev {t.revision}", whose(t.tenant),
            t.description]
           for t in res.teams], ["NAME", "MODE", "MEMBERS", "FROM", "TENANT", "DESCRIPTION"])


runtime_commands("teams", "team", (m.TeamsAdd, m.TeamsUpdate, m.TeamsRemove, m.TeamsDescribe,
                                   m.TeamsHistory, m.TeamsRollback))


@command(m.TeamsCall)
@click.argument("name")
@click.option("--input", "input_", default="null", metavar="JSON|@FILE|-",
              help="The call's input: JSON, @file with JSON, or - for stdin (default null).")
@click.option("--wait", type=click.FloatRange(0, m.MAX_WAIT), default=None, metavar="S",
              help="Hold the answer up to S seconds for the call's outcome.")
@json_option
def teams_call(obj: Ctx, name: str, input_: str, wait: float | None, as_json: bool) -> None:
    res: m.TaskAccepted = obj.call_json(
        m.TeamsCall(name=name, input=_read_input(input_), wait=wait), as_json)
    click.echo(f"{res.task_id} {res.status}")
    if res.output is not msgspec.UNSET and res.output is not None:
        click.echo(dumps(res.output))
    if isinstance(res.error, m.TaskFailure):
        click.echo(f"error: {res.error.message}", err=True)


@command(m.CallsList)
@click.argument("name")
@click.option("--status", default=None, help="Only the calls of this status.")
@click.option("-n", "--limit", default=100, show_default=True, type=click.IntRange(min=0))
@click.option("--before", default=None, metavar="ID",
              help="Only the calls made before this one (the page's cursor).")
@json_option
def teams_calls(obj: Ctx, name: str, status: str | None, limit: int, before: str | None,
                as_json: bool) -> None:
    res: m.TaskList = obj.call_json(
        m.CallsList(name=name, status=status, limit=limit, before=before), as_json)
    table([[t.task_id, t.status, time.strftime("%Y-%m-%d %H:%M:%S",
                                               time.localtime(t.created))]
           for t in res.tasks], ["CALL", "STATUS", "CREATED"])
    if res.next is not msgspec.UNSET:
        click.echo(f"older calls: --before {res.next}", err=True)
