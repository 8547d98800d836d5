"""The end of a log file an earlier daemon wrote, read back as the batches it was written
from: `corral logs` after a restart of the daemon shows what came before it. Only files
written as corral renders lines; a raw file has no times to order by."""

from __future__ import annotations

import itertools
import re
from datetime import datetime
from pathlib import Path

from ..jsonrpc import LineBlock

# LogLine.render: `2026-11-23T17:50:22.610Z hello#0[4242] event: text`
_LINE = re.compile(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) ([^\s\[#]+)(?:#(\d+))?"
                   rb"\[(-?\d+)\] ([a-z_]+): (.*)")

# (time, replica, pid, stream, lines): lines that were written together
Written = tuple[float, int, int, str, LineBlock]


def read_back(path: Path, end: int, budget: int) -> list[Written]:
    """The whole lines of `path` before byte `end` (none of this daemon's own), at most
    `budget` bytes of them, grouped as they were written."""
    try:
        with path.open("rb") as f:
            start = max(0, end - budget)
            f.seek(start)
            data = f.read(end - start)
    except OSError:
        return []
    if start > 0:  # the first line is cut: it begins before the budget
        data = data.partition(b"\n")[2]
    lines = (m.groups() for raw in data.split(b"\n") if (m := _LINE.fullmatch(raw)))
    out: list[Written] = []
    for (stamp, replica, pid, stream), run in itertools.groupby(lines, key=_tag):
        when = datetime.fromisoformat(stamp.decode()).timestamp()
        out.append((when, replica, pid, stream, LineBlock.of([text for *_, text in run])))
    return out


def _tag(groups: tuple[bytes, ...]) -> tuple[bytes, int, int, str]:
    """A line's time, replica, pid and stream: lines in a row sharing them were one write."""
    stamp, _, replica, pid, stream, _ = groups
    return stamp, int(replica or 0), int(pid), stream.decode()
