"""The event bus's methods' handlers (corral.methods.events): an event published to the
workers and followers subscribed to its topic, and the events followed."""

from __future__ import annotations

import msgspec

from .. import jsonrpc
from .. import methods as m
from ..supervisor.events import Audience, EventBus
from ..supervisor.quotas import Tenancy
from .api import Commands, by_name
from .caller import Caller, Channel
from .flowcontrol import FOLLOW_BATCH, drain
from .services import Services


class EventServices(msgspec.Struct, frozen=True):
    bus: EventBus
    quotas: Tenancy  # the tenants there are: an event names one


COMMANDS: Commands[Services, EventServices] = Commands(by_name(EventServices))
implements = COMMANDS.implements


@implements(m.EventsPublish)
async def events_publish(d: EventServices, p: m.EventsPublish, caller: Caller, c: Channel
                         ) -> m.PublishResult:
    return m.PublishResult(delivered=d.bus.publish(
        p.topic, p.data, caller.user, event_tenant(d.quotas, p.tenant, caller),
        caller.agents))


def event_tenant(quotas: Tenancy, named: str | None, caller: Caller) -> str | None:
    """The tenant of the bus a call publishes in or follows: a tenant caller's own (the
    command layer refused another's), else the one named, which must exist."""
    if caller.tenant is not None:
        return caller.tenant
    if named is not None and not quotas.known(named):
        raise jsonrpc.not_found("tenant", named)
    return named


@implements(m.EventsFollow)
async def events_follow(d: EventServices, p: m.EventsFollow, caller: Caller, c: Channel
                        ) -> None:
    bus = d.bus
    follower = bus.follow(p.pattern, event_tenant(d.quotas, p.tenant, caller),
                          caller if caller.agents is not None else None,
                          c if isinstance(c, Audience) else None)

    def send_some() -> None:
        for _ in range(min(FOLLOW_BATCH, len(follower.queue))):
            c.notify("events.event", follower.pop())  # encoded once by the bus

    try:
        await drain(c, follower, "events.missed", send_some)
    finally:
        bus.unfollow(follower)
