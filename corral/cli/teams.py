"""Teams: list them; those added at runtime added, changed, removed and rolled back, with
revisions; call one and list its calls (docs/teams.md). A team is also called as an
agent is (`corral run TEAM`), its calls shown as its tasks (`corral task ID`)."""

from __future__ import annotations

import time

import click
import msgspec

from .. import methods as m
from .app import cli, shows
from .render import dumps, table
from .runtimedefs import runtime_commands
from .tasks import input_of


@cli.group("teams", help="Teams: those of the config ([teams.NAME]) and those added at "
                         "runtime (with revisions). Call one with `corral teams call "
                         "TEAM` (or `corral run TEAM`).")
def teams() -> None:
    pass


@shows(m.TeamsList)
def teams_list(res: m.TeamList) -> None:
    table([[t.name, t.mode, ", ".join(t.members),
            "file" if t.revision is None else f"rev {t.revision}", t.tenant or "-",
            t.description]
           for t in res.teams], ["NAME", "MODE", "MEMBERS", "FROM", "TENANT", "DESCRIPTION"])


runtime_commands("teams", "team", (m.TeamsAdd, m.TeamsUpdate, m.TeamsRemove, m.TeamsDescribe,
                                   m.TeamsHistory, m.TeamsRollback))


@shows(m.TeamsCall)
@click.argument("name")
@click.option("--input", "input", default="null", metavar="JSON|@FILE|-", callback=input_of,
              help="The call's input: JSON, @file with JSON, or - for stdin (default null).")
@click.option("--wait", type=click.FloatRange(0, m.MAX_WAIT), default=None, metavar="S",
              help="Hold the answer up to S seconds for the call's outcome.")
def teams_call(res: m.TaskAccepted) -> None:
    click.echo(f"{res.task_id} {res.status}")
    if res.output is not msgspec.UNSET and res.output is not None:
        click.echo(dumps(res.output))
    if isinstance(res.error, m.TaskFailure):
        click.echo(f"error: {res.error.message}", err=True)


@shows(m.CallsList)
@click.argument("name")
@click.option("--status", default=None, help="Only the calls of this status.")
@click.option("-n", "--limit", default=100, show_default=True, type=click.IntRange(min=0))
@click.option("--before", default=None, metavar="ID",
              help="Only the calls made before this one (the page's cursor).")
def teams_calls(res: m.TaskList) -> None:
    table([[t.task_id, t.status, time.strftime("%Y-%m-%d %H:%M:%S",
                                               time.localtime(t.created))]
           for t in res.tasks], ["CALL", "STATUS", "CREATED"])
    if res.next is not msgspec.UNSET:
        click.echo(f"older calls: --before {res.next}", err=True)
