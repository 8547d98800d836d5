"""The gateway method's handler (corral.methods.gateway): an operator's view of the MCP
gateway (its clients reach it at `/mcp`, `corral mcp serve` through the local socket)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import msgspec

from .. import methods as m
from .api import Commands, by_name
from .caller import Caller, Channel
from .services import Services


class GatewayServices(msgspec.Struct, frozen=True):
    gateway_status: Callable[[], dict[str, Any]]  # its figures, the HTTP gateway's too


COMMANDS: Commands[Services, GatewayServices] = Commands(by_name(GatewayServices))
implements = COMMANDS.implements


@implements(m.GatewayStatus)
async def gateway_status(d: GatewayServices, p: m.GatewayStatus, caller: Caller, c: Channel
                         ) -> m.GatewayStats:
    # the engine's answer is its wire twin's dict: it encodes alike
    return cast(m.GatewayStats, d.gateway_status())
