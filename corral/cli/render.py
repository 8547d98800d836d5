"""How results are shown: JSON for scripts, tables, and times, bytes and latencies as
people read them; and the JSON a command line gives."""

from __future__ import annotations

from typing import Any

import click
import msgspec

from ..text import iso_time


def print_json(obj: Any, *, one_line: bool = False) -> None:
    """A result (a Struct: its fields in their order, absent ones left out) or plain
    values, as `--json` prints them; `one_line` after a stream's JSON lines, so that a
    reader line by line decodes each line, the result's too."""
    # imported here: a command's start imports what every run of it needs (app.COMMANDS)
    import json

    click.echo(json.dumps(msgspec.to_builtins(obj), indent=None if one_line else 2,
                          sort_keys=False))


def json_value(text: str, hint: str) -> Any:
    """The JSON an argument or option (`hint`) gives; else a usage error naming it, and
    the likeliest slip, a bare word for a string."""
    try:
        return msgspec.json.decode(text.encode())
    except msgspec.DecodeError as exc:
        bare = (f" (a string is quoted JSON: {hint} '\"{text}\"')"
                if text and not text.lstrip().startswith(('"', "{", "[")) else "")
        raise click.BadParameter(f"not JSON: {exc}{bare}", param_hint=hint) from None


def dumps(value: Any, **kw: Any) -> str:
    """json.dumps: json is imported when a command prints JSON, not at its start (~1.5 ms
    of `corral submit`'s or `corral logs`')."""
    import json

    return json.dumps(value, **kw)


def table(rows: list[list[str]], headers: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    click.echo(fmt.format(*headers).rstrip())
    for r in rows:
        click.echo(fmt.format(*r).rstrip())


def human_bytes(n: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def millis(v: float) -> str:
    """A latency in ms, as people read them: 0.42, 12.3, 5764."""
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def human_time(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


stamp = iso_time  # a time in a table: ISO 8601, UTC, as in the logs
