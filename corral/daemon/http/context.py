"""What every part of the HTTP server is given: the services, the one Dispatcher, the
[http] settings, and how a request is authenticated."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ...supervisor.config import A2aSettings, HttpSettings
from ..api import Dispatcher
from ..caller import Caller
from ..services import Services

# a request's Caller if this way of signing in recognises it, else None (or RpcError):
# asked in order until one does, a chain, not a notification
Authenticator = Callable[[web.Request], Caller | None]


@dataclass(kw_only=True)
class HttpContext:
    services: Services
    dispatcher: Dispatcher[Any]
    settings: HttpSettings
    a2a: A2aSettings = field(default_factory=A2aSettings)  # /a2a (daemon/a2a)
    # bearer tokens (rest.py), and the dashboard's session cookie (ui.py) where one is set up
    authenticators: list[Authenticator] = field(default_factory=list)
    url: str = ""  # where the server listens, once it does
    # requests answered, by route pattern and status (corral_http_requests_total); those
    # aiohttp refused before any route saw them are route "refused" (server.Refusals)
    requests: dict[tuple[str, str], int] = field(default_factory=dict)
