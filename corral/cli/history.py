"""What changed and who changed it: an agent's revisions, rolling back to one, and
the audit log."""

from __future__ import annotations

import click

from .. import methods as m
from .app import Ctx, command, complete_agents, shows
from .render import dumps, stamp, table


@shows(m.AgentsHistory)
@click.argument("name", shell_complete=complete_agents)
@click.option("-n", "--limit", default=100, show_default=True, type=click.IntRange(min=0))
def print_history(res: m.HistoryResult) -> None:
    rows = [[("* " if r.revision == res.current else "  ") + str(r.revision),
             stamp(r.time), r.who, r.change] for r in res.revisions]
    headers = ["  REV", "TIME", "WHO", "CHANGE"]
    if any(r.release for r in res.revisions):  # an agent package: which release, version
        rows = [[*row[:2], r.release or "-", r.version or "-", *row[2:]]
                for row, r in zip(rows, res.revisions, strict=True)]
        headers = [*headers[:2], "RELEASE", "VERSION", *headers[2:]]
    table(rows, headers)
    if res.scaling:  # the autoscaler's changes: not revisions, the spec is unchanged
        click.echo()
        table([[stamp(s.time), s.direction, f"{s.previous} -> {s.replicas}", s.reason]
               for s in res.scaling], ["TIME", "AUTOSCALE", "REPLICAS", "REASON"])


@command(m.AgentsRollback, more="\n\nREV: a revision's number (`corral history "
             "NAME`), or a package's release as `corral releases NAME` prints it (the newest "
             "revision that ran it).")
@click.argument("name", shell_complete=complete_agents)
@click.argument("rev", required=False)
def rollback(obj: Ctx, name: str, rev: str | None) -> None:
    revision = release = None
    if rev is not None and rev.isdigit():
        revision = int(rev)
        if revision < 1:
            raise click.BadParameter("a revision is 1 or more", param_hint="REV")
    else:
        release = rev
    res: m.RollbackResult = obj.call(m.AgentsRollback(
        name=name, revision=revision, release=release))
    click.echo(f"{name}: rolled back to revision {res.restored} (now revision "
               f"{res.revision})" + (f": {res.change}" if res.change else ""))


@shows(m.AuditList)
@click.option("-n", "--limit", default=50, show_default=True, type=click.IntRange(min=0))
def audit(res: m.AuditResult) -> None:
    # who acted as revisions name it: a token by its name, a socket peer by uid and pid
    rows = [[stamp(e.time), e.who or f"uid {e.uid} pid {e.pid}", e.tenant or "-", e.method,
             e.outcome, dumps(e.params)[:60]] for e in res.entries]
    table(rows, ["TIME", "WHO", "TENANT", "METHOD", "OUTCOME", "PARAMS"])
