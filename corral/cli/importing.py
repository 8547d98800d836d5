"""`corral import`: another supervisor's files as corral's config."""

from __future__ import annotations

import os

import click

from ..othernames import listing
from ..text import plural
from .app import cli, fail

# the mapping, under the help's text (`corral help import`, `corral import --help`)
_MAPPING = ("\b\ncorral's key       the other tools' names for it (what has no equivalent, "
            "and why: docs/migrating.md)\n" + "\n".join(listing()))


@cli.command("import", epilog=_MAPPING)
@click.argument("files", nargs=-1, metavar="FILE...")
@click.option("--from", "kind", default=None,
              type=click.Choice(["supervisord", "pm2", "procfile", "systemd", "mcp"]),
              help="The tool the files are for (default: from each file's name and text).")
@click.option("--output", "-o", metavar="PATH", default=None,
              help="Write the config here instead of printing it.")
@click.option("--force", is_flag=True,
              help="With -o, replace a file that exists (its diff is printed first).")
@click.option("--env", "profile", metavar="NAME", default=None,
              help="PM2: the profile of `pm2 start --env NAME`: each app's env_NAME set "
                   "over its env.")
@click.option("--instance", metavar="NAME", default=None,
              help="systemd: a template unit's (UNIT@.service) instance, as `systemctl "
                   "enable UNIT@NAME` gives it: %i in the unit is NAME.")
@click.option("--keys", is_flag=True,
              help="Print corral's agent keys beside the other tools' names for them.")
def import_(files: tuple[str, ...], kind: str | None, output: str | None,
            force: bool, profile: str | None, instance: str | None, keys: bool) -> None:
    """Turn supervisord .conf files, PM2 ecosystem files (.json; .js/.cjs run by node in
    a sandbox), Procfiles, systemd .service units and MCP clients' server files
    (mcpServers: Claude Desktop, Cursor; VS Code's servers) into corral's config (TOML,
    printed, or written with -o). Each setting that could not be carried over is named
    on stderr with the reason; the exit status is 0 when every file was read
    (docs/migrating.md). `--keys` lists the other tools' names for corral's keys."""
    # imported here, as the others: `corral --help` imports this module for its help
    import difflib
    from pathlib import Path

    from ..importer.formats import read_all
    from ..importer.model import How
    from ..importer.toml import render
    from ..statefiles import replace_file
    from ..supervisor.config import ConfigError

    if keys:
        click.echo("\n".join(listing()))
        return
    if not files:
        raise click.UsageError("give the files to import (or --keys)")

    try:
        imports = read_all([Path(f) for f in files], How(dict(os.environ), profile, instance),
                             kind)
    except ConfigError as exc:
        fail(str(exc))
    for imp in imports:
        for line in imp.notes:
            click.echo(f"corral import: {line}", err=True)
    if profile is not None and all(imp.kind != "pm2" for imp in imports):
        click.echo(f"corral import: --env {profile}: not read: a PM2 profile, and no file "
                   "here is a PM2 ecosystem file", err=True)
    text = render(imports)
    if output is None:
        click.echo(text, nl=False)
        return
    target = Path(output)
    refusal = _refusal(target, force)
    if refusal is not None:
        fail(f"{target}: {refusal}")
    if target.exists() and not target.is_symlink():
        from ..importer.model import text_of

        try:
            old = text_of(target)
        except OSError:  # a file it cannot read is refused above; too large: no diff
            old = ""
        diff = "".join(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                            str(target), f"{target} (imported)"))
        click.echo(diff, err=True, nl=False)
        if not force:
            fail(f"{target} exists: not replaced (--force replaces it; the difference is above)")
    try:
        replace_file(target, text.encode())
    except OSError as exc:
        fail(f"{target}: cannot write: {exc.strerror}")
    n = sum(len(imp.agents) for imp in imports)
    m = sum(len(imp.servers) for imp in imports)
    written = ([plural(n, "agent")] if n or not m else []) + ([plural(m, "MCP server")]
                                                               if m else [])
    click.echo(f"{target}: {' and '.join(written)} written", err=True)


def _refusal(target: os.PathLike[str], force: bool) -> str | None:
    """Why -o may not write `target`: a link is never written through (a dangling one
    would have the file made wherever it points, as root often), nor is what is not a
    regular file; a link is replaced by the file only with --force."""
    import stat

    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot write: {exc.strerror}"
    if stat.S_ISLNK(mode):
        return None if force else ("a link: not written through (--force replaces the "
                                   "link itself with the file)")
    if not stat.S_ISREG(mode):
        return "not a regular file: not written"
    return None


