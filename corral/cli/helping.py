"""`corral help [COMMAND...]`: a command's help, as `corral COMMAND --help` prints it
(`corral help import` lists the other tools' names for corral's keys)."""

from __future__ import annotations

import click

from .app import cli


@cli.command("help")
@click.argument("command", nargs=-1, metavar="[COMMAND]...")
@click.pass_context
def help_(ctx: click.Context, command: tuple[str, ...]) -> None:
    """Show a command's help (`corral help logs`, `corral help tasks list`), or corral's."""
    parent = ctx.find_root()
    group: click.Command = parent.command
    sub = parent
    for word in command:
        if not isinstance(group, click.Group):
            raise click.UsageError(f"{sub.command_path} has no subcommands")
        found = group.get_command(sub, word)
        if found is None:
            raise click.UsageError(f"no such command: {sub.command_path} {word} "
                                   "(`corral --help` lists them)")
        sub = click.Context(found, info_name=word, parent=sub)
        group = found
    click.echo(group.get_help(sub))
