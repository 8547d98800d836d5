"""Bearer tokens of the HTTP API: create, list, revoke."""

from __future__ import annotations

import click

from .. import methods as m
from .app import cli, said, shows
from .durations import duration
from .render import stamp, table


@cli.group()
def token() -> None:
    """Bearer tokens of the HTTP API: create (shown once), list, revoke."""


def _lifetime(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    seconds = duration(value, "--expires")
    if seconds is not None and seconds <= 0:
        raise click.BadParameter("a token's lifetime must be positive", param_hint="--expires")
    return seconds


def _when(t: float | None) -> str:
    return "never" if t is None else stamp(t)


@shows(m.TokensCreate)
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True, metavar="SCOPE",
              type=click.Choice(sorted(m.SCOPES)), help="A scope it holds (repeat).")
@click.option("--agents", default=None, metavar="GLOB",
              help="Only agents whose names match GLOB (e.g. 'web-*').")
@click.option("--expires", "expires_in", default=None, metavar="DURATION", callback=_lifetime,
              help="Lifetime, e.g. 30d or 12h (default: never expires).")
@click.option("--tenant", default=None, metavar="TENANT",
              help="A tenant's token: it sees and acts on that tenant's objects only.")
def token_create(res: m.TokenCreated) -> None:
    click.echo(res.token)
    click.echo(f"corral: token {res.name} ({', '.join(res.scopes)}"
               f"{f'; agents {res.agents}' if res.agents else ''}"
               f"{f'; tenant {res.tenant}' if res.tenant else ''}; expires "
               f"{_when(res.expires)}): it is shown this once", err=True)


@shows(m.TokensList)
def token_list(res: m.TokenList) -> None:
    table([[t.name, ",".join(t.scopes), t.agents or "*", t.tenant or "*",
            stamp(t.created), _when(t.expires)] for t in res.tokens],
          ["NAME", "SCOPES", "AGENTS", "TENANT", "CREATED", "EXPIRES"])


said(m.TokensRevoke, "name", lambda res: f"revoked token {res.name}")
