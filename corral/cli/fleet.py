"""Acting on running agents: start, stop, restart, signal, pause, resume, scale,
remove, and the pids of their replicas."""

from __future__ import annotations

from typing import Any

import click

from .. import methods as m
from ..text import plural
from .app import Ctx, cli, command, complete_agents, fail, json_option, names_arg, pass_ctx, said


def _selection_command(declared: type[m.Selection], done: str) -> None:
    """`corral start|stop|restart NAME…|--all`: one shape, three control methods."""

    def run(obj: Ctx, names: tuple[str, ...], all_: bool, **extra: Any) -> None:
        all_, targets = _selection(names, all_)
        res = obj.call(declared(names=targets, all=all_, **extra))
        asleep = getattr(res, "asleep", [])
        running = getattr(res, "running", [])
        if getattr(res, done) or not (asleep or running):
            click.echo(f"{done}: {', '.join(getattr(res, done)) or 'nothing'}")
        if running:
            click.echo(f"already running, not started again: {', '.join(running)}")
        if asleep:
            click.echo(f"asleep, not started (scaled to zero: a task wakes it): "
                       f"{', '.join(asleep)}")

    fn: Any = run
    if declared is m.AgentsRestart:
        fn = click.option(
            "--rolling", is_flag=True,
            help="Replace replicas one at a time, each new one ready before the old one "
                 "stops (no downtime, no task dropped).")(fn)
    fn = click.option("--all", "all_", is_flag=True, help="Every agent (also: `all`).")(fn)
    fn = names_arg(fn)
    command(declared, more="\n\nNAME#N: one replica; `all` (or --all): every agent.")(fn)


def _selection(names: tuple[str, ...], all_: bool) -> tuple[bool, list[str]]:
    """`all` as a name means --all (the supervisorctl habit), unless an agent is named so
    (it cannot be: `all` is taken as the alias, so names stay unambiguous)."""
    if "all" in names:
        if len(names) > 1:
            raise click.UsageError("`all` means every agent: name no others with it")
        return True, []
    if not names and not all_:
        raise click.UsageError("name at least one agent (NAME or NAME#N), or all")
    return all_, list(names)


for _declared, _done in ((m.AgentsStart, "started"), (m.AgentsStop, "stopped"),
                         (m.AgentsRestart, "restarted")):
    _selection_command(_declared, _done)


@command(m.AgentsSignal)
@click.argument("sig", metavar="SIGNAL")
@click.argument("names", nargs=-1, required=True, shell_complete=complete_agents)
def signal(obj: Ctx, sig: str, names: tuple[str, ...]) -> None:
    all_, targets = _selection(names, False)
    res: m.SignalResult = obj.call(m.AgentsSignal(names=targets, all=all_, signal=sig))
    for s in res.signalled:
        click.echo(f"{res.signal} sent to {s.replica} (pid {s.pid})")


def _target(target: str) -> tuple[str, int | None]:
    try:
        return m.parse_target(target)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME[#N]") from None


def _pause_command(declared: type[m.AgentsPause | m.AgentsResume]) -> None:
    """`corral pause|resume NAME[#N]`: one shape, two control methods."""

    def run(obj: Ctx, target: str, as_json: bool) -> None:
        name, index = _target(target)
        res: m.PauseResult = obj.call_json(declared(name=name, replica=index), as_json)
        for r in res.replicas:
            click.echo(f"{res.agent}#{r.replica}: {r.state}"
                       + (f" (pid {r.pid})" if r.pid else ""))

    fn: Any = json_option(run)
    fn = click.argument("target", metavar="NAME[#N]", shell_complete=complete_agents)(fn)
    command(declared, more="\n\nNAME: every replica; NAME#N: one.")(fn)


for _paused in (m.AgentsPause, m.AgentsResume):
    _pause_command(_paused)


@cli.command(help="Print the pid of each running replica of NAME (or of NAME#N), one a line; "
                  "exits 1 when none is running.")
@click.argument("target", shell_complete=complete_agents)
@pass_ctx
def pid(obj: Ctx, target: str) -> None:
    _target(target)  # (a malformed one: a usage error)
    st: m.AgentsStatusResult = obj.call(m.AgentsStatus(names=[target]))  # (NAME#N: its one)
    pids = [a.pid for a in st.agents if a.pid]
    for p in pids:
        click.echo(p)
    if not pids:
        fail(f"{target} has no running process")


said(m.AgentsRemove, "names", lambda res: f"removed: {', '.join(res.removed)}", nargs=-1,
     required=True, shell_complete=complete_agents)


@command(m.AgentsScale, context_settings={"ignore_unknown_options": True})
@click.argument("name", shell_complete=complete_agents)
# a plain argument, checked here: as an IntRange, "four" read "'four' is not a valid
# integer range" and "-1" was taken for an option ("No such option '-1'")
@click.argument("replicas", metavar="N")
def scale(obj: Ctx, name: str, replicas: str) -> None:
    if not (replicas.isascii() and replicas.isdigit()):
        raise click.UsageError(f"replicas must be a whole number ≥ 0, not {replicas!r}")
    res: m.ScaleResult = obj.call(m.AgentsScale(name=name, replicas=int(replicas)))
    click.echo(f"{res.name}: {plural(res.replicas, 'replica')}")
