"""The terminal is the operator's: what the CLI prints holds text that agents and tenants
wrote, and none of it may act on the terminal (an OSC 52 write to the clipboard, a new
window title, a CR that redraws a line as another agent's). Every text the CLI writes to
stdout and stderr goes through a `Visible` stream, which escapes control characters as
corral's log lines are escaped, terminal or pipe; `--raw` gives the streams back. At the
stream, not at each command, so that a new command cannot forget it."""

from __future__ import annotations

import sys
from typing import TextIO, cast

import click

from ..text import visible

CLEAR_SCREEN = "\x1b[H\x1b[2J"


class Visible:
    """A text stream writing what it is given to `stream` with control characters made
    visible. It has no binary `buffer` on purpose: click writes through one it finds on
    a stream it deems misconfigured, past the escaping; a command whose output is a
    protocol (`mcp serve`) takes the real streams back (`unguarded`)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    @property
    def encoding(self) -> str:
        return self.stream.encoding

    @property
    def errors(self) -> str | None:
        return self.stream.errors

    def write(self, text: str | bytes) -> int:
        # bytes: what click echoes when it finds no binary buffer, as the completion of
        # `corral completion`'s script (agent names from the daemon in it) is: escaped too
        shown = text.decode(self.encoding, "replace") if isinstance(text, bytes) else text
        self.stream.write(visible(shown))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def writable(self) -> bool:
        return True


def guard() -> None:
    """stdout and stderr through `Visible` (the console script does it first)."""
    if not isinstance(sys.stdout, Visible):
        sys.stdout = cast(TextIO, Visible(sys.stdout))
    if not isinstance(sys.stderr, Visible):
        sys.stderr = cast(TextIO, Visible(sys.stderr))


def unguarded() -> None:
    """The real streams back: `--raw`, and a command whose output is a protocol."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, Visible):
            setattr(sys, name, stream.stream)


def clear_screen() -> None:
    """corral's own control sequence (`corral top`'s redraw), written past the guard."""
    out = sys.stdout
    (out.stream if isinstance(out, Visible) else out).write(CLEAR_SCREEN)


def _raw(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        unguarded()


def raw_option() -> click.Option:
    """`--raw`, which every command takes (app.py's command classes add it)."""
    return click.Option(
        ["--raw"], is_flag=True, expose_value=False, is_eager=True, callback=_raw,
        help="Print agents' and tenants' text as it is, control characters and escape "
             "sequences too (by default they are shown escaped: \\x1b).")
