"""`logs` and `tail`: the agents' log lines, followed across restarts of the daemon."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click
import msgspec

from .. import methods as m
from ..methods import LogLine
from ..text import plural
from .app import Ctx, cli, command, fail, json_option, names_arg, pass_ctx
from .client import EXIT_UNREACHABLE, Disconnection
from .durations import parse_since
from .render import dumps


def _log_options(fn: Any) -> Any:
    options: tuple[Callable[[Any], Any], ...] = (
        names_arg,
        click.option("-n", "--lines", default=50, show_default=True,
                     type=click.IntRange(min=0), help="How many past lines to show."),
        click.option("--since", default=None, metavar="WHEN",
                     help="Only lines since WHEN: 30s, 5m, 2h, 1d or an ISO time."),
        click.option("--grep", default=None, metavar="TEXT",
                     help="Only lines holding TEXT (a fixed string, as grep -F)."),
        click.option("--stream", "streams", multiple=True,
                     type=click.Choice(["stdout", "stderr", "event"]),
                     help="Only lines of this stream (repeat for several): an agent's "
                          "stdout or stderr, or corral's events about it."),
        click.option("--reconnect", type=click.FloatRange(min=0), default=60.0,
                     show_default=True, metavar="SECONDS",
                     help="Following: if the daemon goes away (a restart), wait this long "
                          "for it and go on from the last line shown."),
        json_option,
    )
    for option in reversed(options):
        fn = option(fn)
    return fn


@command(m.LogsTail, more=" NAME#N: one replica's. With -f, new lines as they "
             "come, across restarts and rotation; a reader too slow to keep up is told how "
             "many lines it missed.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--rotate", is_flag=True,
              help="Rotate the agents' log files now (every one's, and corral.log, when "
                   "none is named): each to NAME.log.1 (.gz with log_compress), a new one "
                   "begun; a follower reads on.")
@_log_options
def logs(obj: Ctx, names: tuple[str, ...], follow: bool, rotate: bool, lines: int,
         since: str | None, grep: str | None, streams: tuple[str, ...], reconnect: float,
         as_json: bool) -> None:
    if rotate:
        if follow:
            raise click.UsageError("--rotate rotates and returns: not with -f")
        done: m.LogsRotated = obj.call(m.LogsRotate(names=list(names)))
        if as_json:
            click.echo(dumps(msgspec.to_builtins(done)))
        else:
            for path in done.files:
                click.echo(f"rotated {path}")
        return
    _logs(obj, follow, _log_query(names, lines, since, grep, streams), reconnect, as_json)


@cli.command(help="`corral logs -f`: print the last lines, then new ones until Ctrl-C.")
@_log_options
@pass_ctx
def tail(obj: Ctx, names: tuple[str, ...], lines: int, since: str | None, grep: str | None,
         streams: tuple[str, ...], reconnect: float, as_json: bool) -> None:
    _logs(obj, True, _log_query(names, lines, since, grep, streams), reconnect, as_json)


def _log_query(names: tuple[str, ...], lines: int, since: str | None, grep: str | None,
               streams: tuple[str, ...]) -> m.LogsTail:
    try:
        return msgspec.convert({"names": list(names), "lines": lines,
                                "since": parse_since(since), "grep": grep or None,
                                "streams": list(streams)}, m.LogsTail)
    except msgspec.ValidationError as exc:
        raise click.BadParameter(str(exc).replace("$.", ""), param_hint="--grep") from None


# how many of the lines a follow missed while the daemon was away it asks for
LOG_BACKLOG = 100_000


def _logs(obj: Ctx, follow: bool, want: m.LogsTail, reconnect: float, as_json: bool) -> None:
    # the time of the newest line shown, and the texts shown at that time (lines read
    # together share one time); after a reconnect, the backlog's lines shown before the
    # daemon went away are left out
    last: list[Any] = []
    resumed = [False]

    def show(items: list[LogLine]) -> None:
        for line in items:
            if resumed[0] and last and (line.time < last[0] or (
                    line.time == last[0] and line.text in last[1])):
                continue
            if as_json:
                click.echo(dumps(msgspec.to_builtins(msgspec.structs.asdict(line))))
            else:
                click.echo(line.render())
            if last and line.time == last[0]:
                last[1].add(line.text)
            else:
                last[:] = [line.time, {line.text}]
        resumed[0] = False

    if not follow:
        res: m.LogLines = obj.call(want)
        show(res.lines)
        return

    def on_note(method: str, params: Any) -> None:
        if method == "logs.lines":
            show(msgspec.convert(params, m.LogLines).lines)
        elif method == "logs.missed":
            click.echo(f"corral: missed {plural(params['count'], 'line')} (reading too slowly)",
                       err=True)
        sys.stdout.flush()

    params = m.LogsFollow(**msgspec.structs.asdict(want))
    while True:
        try:
            obj.call(params, on_notification=on_note, reachable=False,
                     wait_forever=True)
            return
        except Disconnection:
            pass
        # the daemon went away (a restart, an upgrade): wait for it, then go on from the
        # newest line shown (the new daemon's tail reads it back from the log files), as
        # `corral run` waits again for its task
        click.echo("corral: lost the daemon; reconnecting", err=True)
        deadline = time.monotonic() + reconnect
        while obj.info() is None:
            if time.monotonic() >= deadline:
                fail(f"the daemon did not come back within {reconnect:g} s", EXIT_UNREACHABLE)
            time.sleep(0.2)
        if last:
            params = m.LogsFollow(**{**msgspec.structs.asdict(want), "since": last[0],
                                     "lines": LOG_BACKLOG})
            resumed[0] = True
