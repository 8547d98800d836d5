"""`corral top`: every replica and tool server, busiest first, refreshed until q."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from .. import methods as m
from ..methods import LogLine
from ..text import plural
from .app import Ctx, cli, pass_ctx
from .render import human_bytes, human_time, table
from .terminal import clear_screen


@cli.command()
@click.option("-d", "--interval", default=1.0, show_default=True,
              type=click.FloatRange(min=0.05), help="Seconds between refreshes.")
@click.option("-n", "--iterations", default=0, type=click.IntRange(min=0),
              help="Stop after this many refreshes (0: until Ctrl-C).")
@click.option("-l", "--log-lines", default=10, show_default=True, type=click.IntRange(min=0),
              help="Recent log lines shown under the table (0: no log pane).")
@pass_ctx
def top(obj: Ctx, interval: float, iterations: int, log_lines: int) -> None:
    """Every replica and tool server, busiest first, and the latest log lines, refreshed
    until q (or Ctrl-C)."""
    with _keys() as pause:
        _top(obj, interval, iterations, log_lines, pause)


@contextlib.contextmanager
def _keys() -> Any:
    """A pause between refreshes that a key press of q ends for good: with the terminal
    read a key at a time (no Enter needed, nothing echoed) and given back as it was,
    however the command ends. Without a terminal on stdin, a plain sleep."""
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    if fd is None:
        def sleep(seconds: float) -> bool:
            time.sleep(seconds)
            return False

        yield sleep
        return
    import select
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)  # Ctrl-C still interrupts (ISIG stays on)

    def pause(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([fd], [], [], left)[0]:
                continue
            keys = os.read(fd, 64)
            if b"q" in keys.lower():
                return True
            if not keys:  # the terminal is gone: no key will come
                time.sleep(max(0.0, deadline - time.monotonic()))
        return False

    try:
        yield pause
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _top(obj: Ctx, interval: float, iterations: int, log_lines: int,
         pause: Callable[[float], bool]) -> None:
    clear = sys.stdout.isatty()
    count = 0
    # Ctrl-C ends it quietly (the group's invoke, app.py)
    while True:
        st: m.AgentsStatusResult = obj.call(m.AgentsStatus())
        rows: list[tuple[str, m.ReplicaStatus | m.McpInstanceStatus]] = sorted(
            [*((f"{a.name}#{a.replica}", a) for a in st.agents),
             *((f"mcp {s.name}#{s.instance}", s) for s in st.mcp_servers)],
            key=lambda kv: (-kv[1].cpu_percent, -kv[1].rss_bytes))
        if clear:
            clear_screen()
        click.echo(time.strftime("corral top - %H:%M:%S") +
                   f"  {plural(len(st.agents), 'replica')}, "
                   f"{plural(len(st.mcp_servers), 'server')}")
        table([[name, a.state, str(a.pid or "-"), f"{a.cpu_percent:.1f}",
                human_bytes(a.rss_bytes) if a.rss_bytes else "-",
                str(a.tasks_running), human_time(a.uptime), str(a.restarts)]
               for name, a in rows],
              ["NAME", "STATE", "PID", "CPU%", "RSS", "ACTIVE", "UPTIME", "RESTARTS"])
        if log_lines:
            recent: list[LogLine] = obj.call(m.LogsTail(lines=log_lines)).lines
            click.echo(f"\n-- last {plural(len(recent), 'log line')} --")
            import shutil

            width = shutil.get_terminal_size().columns
            for line in recent:
                text = line.render()
                click.echo(text[:width] if clear else text)
        sys.stdout.flush()
        count += 1
        if (iterations and count >= iterations) or pause(interval):
            return
