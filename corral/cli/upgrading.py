"""`corral upgrade`: the daemon re-executes itself from the installed corral, keeping its
agents (docs/operations.md, "Upgrades"); this waits until the new image serves (or the
old one has taken its state back) and says which."""

from __future__ import annotations

import sys
import time

import click

from .. import methods as m
from ..text import plural
from .app import Ctx, command, fail, json_option
from .client import EXIT_FAILED, CallFailed, Unreachable
from .render import print_json

# the longest wait for the new image to say how it went (its set-up adopts every agent)
WAIT = 120.0
POLL = 0.1


@command(m.DaemonUpgrade)
@click.option("--python", metavar="PATH", default=None,
              help="The interpreter of the new install (default: the daemon's own, as "
                   "`pip install --upgrade` left it).")
@click.option("--pythonpath", metavar="DIRS", default=None,
              help="The new image's PYTHONPATH (default: the daemon's).")
@click.option("--no-wait", is_flag=True, help="Return once the hand-over has begun.")
@click.option("--report", is_flag=True, help="Upgrade nothing: how the last one went.")
@json_option
def upgrade(obj: Ctx, python: str | None, pythonpath: str | None, no_wait: bool,
            report: bool, as_json: bool) -> None:
    began: m.UpgradeReport = obj.call(m.DaemonUpgrade(
        python=python, pythonpath=pythonpath, report=report), wait_forever=True)
    if not (report or no_wait):
        began = wait_for(obj, began)
    if as_json:
        print_json(began)
    else:
        click.echo(said(began))
    if not report and began.state not in ("done", "handing_over"):
        sys.exit(EXIT_FAILED)


def wait_for(obj: Ctx, began: m.UpgradeReport) -> m.UpgradeReport:
    """The report of upgrade `began` once it is over. The daemon is away for the exec:
    a connection is refused by no one (the socket stays open), but the call waits in
    the backlog or is cut when the old image goes; it is asked again."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            with obj.client() as c:
                now: m.UpgradeReport = c.ask(m.DaemonUpgrade(report=True))
        except (Unreachable, TimeoutError, CallFailed):
            time.sleep(POLL)
            continue
        if now.attempt == began.attempt and now.state != "handing_over":
            return now
        time.sleep(POLL)
    fail(f"the daemon did not say how upgrade #{began.attempt} went within "
         f"{WAIT:g} s: look at its log")


def said(r: m.UpgradeReport) -> str:
    if r.state == "none":
        return "corral daemon has not been upgraded since it started"
    if r.state == "handing_over":
        return (f"corral daemon (pid {r.pid}) is upgrading from {r.from_version} to "
                f"{r.to_version}")
    if r.state == "refused":
        return f"corral: upgrade refused, nothing changed: {r.error}"
    servers = f", {plural(r.servers, 'MCP server')}" if r.servers else ""
    kept = (f"{plural(r.kept, 'agent process', 'agent processes')}{servers} and "
            f"{plural(r.tasks, 'running task')} kept")
    again = f"; started again: {', '.join(r.restarted)}" if r.restarted else ""
    if r.state == "fell_back":
        return (f"corral: the upgrade failed and the daemon (pid {r.pid}) fell back to "
                f"corral {r.to_version}: {r.error}; {kept}{again}")
    return (f"corral daemon upgraded from {r.from_version} to {r.to_version} (pid "
            f"{r.pid}) in {r.seconds or 0:.2f} s: {kept}{again}")
