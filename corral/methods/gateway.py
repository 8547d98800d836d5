# ruff: noqa: F405 - the results are corral.results', named by the methods
"""The gateway (`corral mcp serve` is a client of these)."""

from __future__ import annotations

from typing import Any

from ..results import *  # noqa: F403
from .declaration import Params, method, rest


class GatewayClient(Params):
    """Whose view: an agent's allowlist, a gateway token's, or (neither) everything."""

    agent: str | None = None
    token: str | None = None


@method("gateway.list", result=GatewayItems, scope="mcp:call", seen="gateway_client")
class GatewayList(GatewayClient):
    """The tools, resources, resource templates or prompts a gateway client may see,
    named SERVER__NAME."""

    kind: str = "tools"


@method("gateway.call", result=McpResult, scope="mcp:call", streaming=True, seen="gateway_client")
class GatewayCall(GatewayClient):
    """One MCP request for an upstream server (tools/call, resources/read, prompts/get,
    completion/complete) on behalf of a gateway client: allowlist, limits, accounting and
    audit apply; progress arrives as `gateway.progress` notifications tagged with
    `progress_id`, and with a `log_level` the server's log messages of a tools/call at
    that level or above as `gateway.log` ones; `request.cancel {id}` cancels it
    upstream."""

    method: str = "tools/call"
    params: dict[str, Any] = {}
    progress_id: int | None = None
    log_level: str | None = None


@method("gateway.watch", result=None, scope="mcp:call", endless=True, seen="unnamed")
class GatewayWatch(Params):
    """`gateway.changed {kinds}` notifications whenever what the pool offers changes
    (servers start, stop, are reloaded, or change their lists), until disconnect."""


@method("gateway.status", result=GatewayStats, scope="metrics:read", seen="gateway_stats",
        dashboard=True, routes=(
    rest("GET", "/gateway", "The gateway's calls per client and per tool, and the HTTP "
         "gateway's sessions"),
))
class GatewayStatus(Params):
    """Gateway calls per client and per tool: counts, errors, latency percentiles; the
    HTTP gateway's address and sessions."""
