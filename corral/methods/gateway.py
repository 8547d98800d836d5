# ruff: noqa: F405 - the results are corral.results', named by the methods
"""The gateway's figures (its clients reach it at `/mcp`: docs/gateway.md)."""

from __future__ import annotations

from ..results import *  # noqa: F403
from .declaration import Params, method, rest


@method("gateway.status", result=GatewayStats, scope="metrics:read", seen="gateway_stats",
        dashboard=True, routes=(
    rest("GET", "/gateway", "The gateway's calls per client and per tool, and the HTTP "
         "gateway's sessions"),
))
class GatewayStatus(Params):
    """Gateway calls per client and per tool: counts, errors, latency percentiles; the
    HTTP gateway's address and sessions."""
