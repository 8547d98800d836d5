"""The commands every kind of definition changeable at runtime has (workflows, teams:
daemon/defcatalog.py): `add FILE`, `update NAME --set`, `remove NAME...`, `describe`,
`history`, `rollback NAME [REVISION]`, put on the kind's group by `runtime_commands` as
the kind's methods' declarations name them."""

from __future__ import annotations

import click
import msgspec

from .. import methods as m
from .app import Ctx, command, read_tables, said, shows
from .render import dumps, stamp, table
from .tasks import _read_input

VERBS = ("add", "update", "remove", "describe", "history", "rollback")


def runtime_commands(section: str, noun: str, methods: tuple[type[m.Params], ...]) -> None:
    """The kind's runtime commands (`corral workflows add`...), each the front of the
    kind's method of its verb, `methods` in VERBS' order (their params' fields are the
    same for every kind but add's, named as the kind's section)."""
    verb = dict(zip(VERBS, methods, strict=True))

    @command(verb["add"], more=f"\n\nFILE holds [{section}.NAME] tables (TOML, as the config "
             "file writes them; or JSON, with .json).")
    @click.argument("file", type=click.Path(dir_okay=False))
    def add(obj: Ctx, file: str) -> None:
        res: m.AddResult = obj.call(verb["add"](**{section: read_tables(file, section)}))
        click.echo(f"added: {', '.join(res.added)}")

    @command(verb["update"])
    @click.argument("name")
    @click.option("--set", "changes", required=True, metavar="JSON",
                  help="A JSON merge patch of its table: JSON, @FILE, or - for stdin.")
    def update(obj: Ctx, name: str, changes: str) -> None:
        patch = msgspec.json.decode(_read_input(changes))
        if not isinstance(patch, dict):
            raise click.BadParameter("a JSON object", param_hint="--set")
        res: m.UpdateResult = obj.call(verb["update"](name=name, set=patch))
        click.echo(f"{name}: " + (f"revision {res.revision}: {res.change}"
                                  if res.revision is not None else "no change"))

    said(verb["remove"], "names", lambda res: f"removed: {', '.join(res.removed)}", nargs=-1,
         required=True)

    @shows(verb["describe"])
    @click.argument("name")
    def describe(res: m.DefinitionDescription) -> None:
        where = ("the config file" if res.source == "config"
                 else f"added at runtime, revision {res.revision}"
                 + (f", tenant {res.tenant}" if res.tenant else ""))
        click.echo(f"{noun} {res.name} ({where})\nagents: {', '.join(res.agents)}")
        click.echo(dumps(res.definition, indent=2))

    @shows(verb["history"])
    @click.argument("name")
    @click.option("-n", "--limit", default=100, show_default=True, type=click.IntRange(min=0))
    def history(res: m.DefinitionRevisions) -> None:
        table([[("* " if r.revision == res.current else "  ") + str(r.revision),
                stamp(r.time), r.who, r.tenant or "-", r.change] for r in res.revisions],
              ["  REV", "TIME", "WHO", "TENANT", "CHANGE"])

    @command(verb["rollback"])
    @click.argument("name")
    @click.argument("revision", required=False, type=click.IntRange(min=1))
    def rollback(obj: Ctx, name: str, revision: int | None) -> None:
        res: m.RollbackResult = obj.call(verb["rollback"](name=name, revision=revision))
        click.echo(f"{name}: rolled back to revision {res.restored}"
                   + (f" (now revision {res.revision}): {res.change}"
                      if res.revision is not None else ": no change"))
