# ruff: noqa: F405 - the results are corral.results', named by the methods
"""The logs: the last lines, a follow, a rotation."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from ..results import *  # noqa: F403
from .declaration import ONE, Params, method, rest


@method("logs.tail", result=LogLines, scope="logs:read", seen="log_lines", cli="logs",
        dashboard=True, routes=(
    rest("GET", "/agents/{name}/logs", "An agent's last log lines",
         path_params=ONE, query=("lines", "since")),
    rest("GET", "/logs", "The last log lines of agents (and the daemon)",
         query=("names", "lines", "since")),
))
class LogsTail(Params):
    """The last lines of agents' logs (all agents and the daemon when no name is given)."""

    names: list[str] = []
    lines: int = 50
    since: float | None = None  # unix time
    # only lines holding this text (a fixed string, as `grep -F`: no pattern a caller
    # could make the daemon backtrack on)
    grep: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)] | None = None
    streams: list[Literal["stdout", "stderr", "event"]] = []  # only these (none: all)


@method("logs.follow", result=None, scope="logs:read", endless=True, seen="log_stream",
        dashboard=True, routes=(
    rest("GET", "/agents/{name}/logs/stream",
         "An agent's log lines as they come (SSE)", path_params=ONE,
         query=("lines", "since"), stream="logs.lines"),
    rest("GET", "/logs/stream", "Log lines as they come (SSE)",
         query=("names", "lines", "since"), stream="logs.lines"),
))
class LogsFollow(LogsTail):
    """Like logs.tail, then new lines as `logs.lines` notifications until the client
    disconnects; a follower too slow to keep up is sent `logs.missed` with a count."""


@method("logs.rotate", result=LogsRotated, scope="agents:write", mutating=True, seen=None)
class LogsRotate(Params):
    """Rotate agents' log files now (every agent's and the daemon's when no name is
    given): each moved to NAME.log.1 (gzipped when log_compress is set), the older
    copies up one, and a new file begun (logrotate's postrotate, without a signal)."""

    names: list[str] = []
