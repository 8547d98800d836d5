# ruff: noqa: F405 - the results are corral.results', named by the methods
"""The event bus: publish, follow."""

from __future__ import annotations

from typing import Any

from ..results import *  # noqa: F403
from .declaration import Params, method, rest


@method("events.publish", result=PublishResult, scope="events", mutating=True, seen="own_tenant",
        cli="events publish", routes=(
    rest("POST", "/events", "Publish an event",
         body=("topic", "data", "tenant")),
))
class EventsPublish(Params):
    """Publish an event to the workers (and followers) subscribed to its topic."""

    topic: str
    data: Any = None
    # the tenant whose workers and followers it reaches (a tenant's caller: its own,
    # named or not); an operator's without one reaches every tenant's
    tenant: str | None = None


@method("events.follow", result=None, scope="events", endless=True, seen="event_stream",
        cli="events tail", dashboard=True, routes=(
    rest("GET", "/events/stream", "Events matching a pattern (SSE)",
         query=("pattern", "tenant"), stream="events.event"),
))
class EventsFollow(Params):
    """Every event whose topic matches the pattern, as `events.event` notifications."""

    pattern: str = "*"
    # only the events of this tenant (and those of every tenant); a tenant's caller
    # follows its own tenant's, named or not
    tenant: str | None = None
