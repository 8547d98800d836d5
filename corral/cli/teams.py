"""Teams: list them; those added at runtime added, changed, removed and rolled back, with
revisions (docs/teams.md). A team is called as an agent is (`corral run TEAM`)."""

from __future__ import annotations

from .. import methods as m
from .app import Ctx, cli, doc, json_option, pass_ctx
from .render import print_json, table
from .runtimedefs import runtime_commands, whose


@cli.group("teams", help="Teams: those of the config ([teams.NAME]) and those added at "
                         "runtime (with revisions). Call one with `corral run TEAM`.")
def teams() -> None:
    pass


@teams.command("list", help=doc("teams.list"))
@json_option
@pass_ctx
def teams_list(obj: Ctx, as_json: bool) -> None:
    res: m.TeamList = obj.call("teams.list", m.TeamsList())
    if as_json:
        print_json(res)
        return
    table([[t.name, t.mode, ", ".join(t.members),
            "file" if t.revision is None else f"rev {t.revision}", whose(t.tenant),
            t.description]
           for t in res.teams], ["NAME", "MODE", "MEMBERS", "FROM", "TENANT",
                                 "DESCRIPTION"])


runtime_commands(teams, "teams", "team")
