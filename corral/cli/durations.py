"""Times as people type them: 30s, 5m, 2h, 1d (and, for --since, an ISO time)."""

from __future__ import annotations

import contextlib
import re
import time

import click

UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str | None) -> float | None:
    """The time a duration ago (`duration`'s), or an ISO time."""
    if value is None:
        return None
    with contextlib.suppress(click.BadParameter):
        return time.time() - (duration(value) or 0.0)
    try:
        from datetime import datetime

        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise click.BadParameter("use a duration like 30s, 5m, 2h, 1d or an ISO time",
                                 param_hint="--since") from None


def duration(value: str | None, hint: str = "--since") -> float | None:
    """Seconds from 90, 90s, 15m, 1h or 2d (else a usage error naming the option `hint`)."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", value)
    if match is None:
        raise click.BadParameter(f"not a duration: {value} (examples: 90s, 15m, 1h, 2d)",
                                 param_hint=hint)
    return float(match[1]) * UNITS[match[2]]
