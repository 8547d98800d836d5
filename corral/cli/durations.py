"""Times as people type them: 30s, 5m, 2h, 1d (and, for --since, an ISO time)."""

from __future__ import annotations

import re
import time

import click

SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_since(value: str | None) -> float | None:
    if value is None:
        return None
    mt = SINCE.match(value)
    if mt:
        mult = {"s": 1, "m": 60, "h": 3600, "d": 86400}[mt.group(2)]
        return time.time() - float(mt.group(1)) * mult
    try:
        from datetime import datetime

        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise click.BadParameter("use a duration like 30s, 5m, 2h, 1d or an ISO time",
                                 param_hint="--since") from None


def duration(value: str | None) -> float | None:
    """Seconds from 90, 90s, 15m, 1h or 2d."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", value)
    if match is None:
        raise click.BadParameter(f"not a duration: {value} (examples: 90s, 15m, 1h, 2d)",
                                 param_hint="--since")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
