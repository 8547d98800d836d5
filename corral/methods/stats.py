# ruff: noqa: F405 - the results are corral.results', named by the methods
"""The runtime statistics: now, as they come, and their history."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from ..results import *  # noqa: F403
from .declaration import Params, method, rest


@method("stats.get", result=StatsResult, scope="metrics:read", seen="stats", cli="stats",
        dashboard=True, routes=(
    rest("GET", "/stats", "Runtime statistics"),
))
class StatsGet(Params):
    """Runtime statistics of the supervisor and per agent."""


@method("stats.history", result=MetricsHistoryResult, scope="metrics:read", seen="agent_metrics",
        dashboard=True, routes=(
    rest("GET", "/metrics/history", "The metrics history of the fleet or "
         "of one agent: a sample every history_interval, or per minute or hour",
         query=("since", "agent", "resolution")),
))
class StatsHistory(Params):
    """The metrics history of the last `since` seconds, of the fleet or of one agent: at
    the raw resolution (a sample every [http] history_interval seconds), per minute or
    per hour (default: the finest whose retention covers `since`)."""

    since: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    agent: str | None = None
    resolution: Literal["raw", "minute", "hour"] | None = None


class StatsSample(StatsResult, kw_only=True):
    """`stats.sample`: stats.get's answer and when it was taken."""

    time: float


@method("stats.watch", result=None, scope="metrics:read", endless=True, seen="stats_stream",
        dashboard=True, routes=(
    rest("GET", "/stats/stream", "Runtime statistics every interval (SSE)",
         query=("interval",), stream="stats.sample"),
))
class StatsWatch(Params):
    """stats.get's answer as `stats.sample` notifications, one each interval, until the
    client disconnects; a client that does not read is sent the newest when it reads
    again, and none of those it missed."""

    interval: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 1.0
