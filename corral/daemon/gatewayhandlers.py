"""The gateway methods' handlers (corral.methods.gateway): an operator's view of the MCP
gateway and a CLI client's way through it, each call identified as the gateway's own
clients are."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import msgspec

from .. import methods as m
from ..mcp.logrelay import LogRelay, valid_level
from .api import Commands, by_name
from .caller import Caller, Channel
from .gatewayaccess import GatewayService
from .services import Services

if TYPE_CHECKING:
    from .gatewayaccess import GatewayChanged


class GatewayServices(msgspec.Struct, frozen=True):
    gateway: GatewayService  # the gateway's clients, allowlists and calls
    gateway_status: Callable[[], dict[str, Any]]  # its figures, the HTTP gateway's too


COMMANDS: Commands[Services, GatewayServices] = Commands(by_name(GatewayServices))
implements = COMMANDS.implements


@implements(m.GatewayList)
async def gateway_list(d: GatewayServices, p: m.GatewayList, caller: Caller, c: Channel
                       ) -> m.GatewayItems:
    ident = d.gateway.identify(agent=p.agent, token=p.token)
    return m.GatewayItems(items=await d.gateway.list_items(ident, p.kind),
                          features=sorted(d.gateway.features()))


@implements(m.GatewayCall)
async def gateway_call(d: GatewayServices, p: m.GatewayCall, caller: Caller, c: Channel) -> Any:
    ident = d.gateway.identify(agent=p.agent, token=p.token)

    def progress(data: dict[str, Any]) -> None:
        # a client that does not read loses progress, never grows our buffer
        if p.progress_id is not None and c.writable.is_set():
            c.notify("gateway.progress", {**data, "progress_id": p.progress_id})

    def logged(params: dict[str, Any]) -> None:
        if c.writable.is_set():
            c.notify("gateway.log", {**params, "progress_id": p.progress_id})

    level = valid_level(p.log_level)
    return await d.gateway.forward(
        ident, p.method, p.params, progress, who=(caller.uid, caller.pid),
        on_log=None if level is None or p.progress_id is None else LogRelay(level, logged))


@implements(m.GatewayWatch)
async def gateway_watch(d: GatewayServices, p: m.GatewayWatch, caller: Caller, c: Channel) -> None:
    """Streams until the client goes away; changes coalesce while it does not read."""
    pending: set[str] = set()
    wake = asyncio.Event()

    def tell(e: GatewayChanged) -> None:
        pending.update(e.kinds)
        wake.set()

    watching = d.gateway.watch(tell)
    try:
        kinds: list[str] = []
        while True:
            c.notify("gateway.changed", {"kinds": kinds,
                                         "features": sorted(d.gateway.features())})
            await wake.wait()
            await c.writable.wait()
            wake.clear()
            kinds = sorted(pending)
            pending.clear()
    finally:
        d.gateway.unwatch(watching)


@implements(m.GatewayStatus)
async def gateway_status(d: GatewayServices, p: m.GatewayStatus, caller: Caller, c: Channel
                         ) -> m.GatewayStats:
    # the engine's answer is its wire twin's dict: it encodes alike
    return cast(m.GatewayStats, d.gateway_status())
