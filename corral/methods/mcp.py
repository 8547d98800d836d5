# ruff: noqa: F405 - the results are corral.results', named by the methods
"""The MCP servers of the pool: their tools, resources and prompts, start and stop."""

from __future__ import annotations

from typing import Any

from ..results import *  # noqa: F403
from .declaration import Params, method, rest


@method("tools.list", result=ToolList, scope="mcp:call", seen="tools", cli="tools", routes=(
    rest("GET", "/tools", "The MCP servers' tools", query=("agent", "server")),
))
class ToolsList(Params):
    """The tools of the MCP servers, named SERVER__TOOL; with an agent, those its allowlist
    admits. Servers that are not serving are named in `unavailable` with the reason, and
    in `failed` when they are Failed."""

    agent: str | None = None
    server: str | None = None


@method("tools.pins", result=ToolPins, scope="mcp:call", seen="tool_pins", cli="tools pins",
        routes=(rest("GET", "/tools/pins", "The tools' pinned definitions"),))
class ToolsPins(Params):
    """Every tool definition pinned at its first sight (docs/security.md#tool-pins), and
    which drifted since: a drifted tool is not listed and not called until a person
    approves its change (an agent's call of it asks)."""


@method("tools.call", result=McpResult, scope="mcp:call", mutating=True, seen="tool",
        cli="tools call", routes=(
    rest("POST", "/tools/{name}/call", "Call a tool", body=("arguments",)),
))
class ToolsCall(Params):
    """Call one tool (SERVER__TOOL) with arguments, as an operator."""

    name: str
    arguments: dict[str, Any] = {}


@method("mcp.status", result=McpStatusResult, scope="agents:read", seen="mcp_status",
        cli="mcp status", dashboard=True, routes=(
    rest("GET", "/mcp/servers", "The MCP servers' instances"),
))
class McpStatus(Params):
    """The MCP servers: state, protocol version, tools, calls, errors per instance."""


@method("gateway.status", result=GatewayStats, scope="metrics:read", seen="gateway_stats",
        dashboard=True, routes=(
    rest("GET", "/gateway", "The gateway's calls per client and per tool, and the HTTP "
         "gateway's sessions"),
))
class GatewayStatus(Params):
    """Gateway calls per client and per tool: counts, errors, latency percentiles; the
    HTTP gateway's address and sessions."""


class McpSelection(Params):
    """One MCP server by name (all its instances)."""

    name: str


@method("mcp.start", result=McpInstances, scope="agents:write", mutating=True, seen="server",
        cli="mcp start", routes=(
    rest("POST", "/mcp/servers/{name}/start", "Start an MCP server"),
))
class McpStart(McpSelection):
    """Start an MCP server's instances (a Failed server is given a fresh start)."""


@method("mcp.stop", result=McpInstances, scope="agents:write", mutating=True, seen="server",
        cli="mcp stop", routes=(
    rest("POST", "/mcp/servers/{name}/stop", "Stop an MCP server"),
))
class McpStop(McpSelection):
    """Stop an MCP server's instances: stdin closed, SIGTERM after the grace, then SIGKILL
    (the MCP stdio shutdown); calls in flight fail with the reason."""


@method("mcp.restart", result=McpInstances, scope="agents:write", mutating=True, seen="server",
        cli="mcp restart", routes=(
    rest("POST", "/mcp/servers/{name}/restart", "Restart an MCP server"),
))
class McpRestart(McpSelection):
    """Stop then start an MCP server's instances."""


@method("resources.list", result=ResourceList, scope="mcp:call", seen="resources", routes=(
    rest("GET", "/resources", "The MCP servers' resources",
         query=("server", "agent")),
))
class ResourcesList(Params):
    """The resources (and resource templates) of the MCP servers, or of one; with an
    agent, those its allowlist admits (as SERVER__URI)."""

    server: str | None = None
    agent: str | None = None


@method("resources.read", result=McpResult, scope="mcp:call", seen="resource")
class ResourcesRead(Params):
    """Read one resource by its URI, of the server given or else of the one server that
    lists it."""

    uri: str
    server: str | None = None


@method("prompts.list", result=PromptList, scope="mcp:call", seen="prompts", routes=(
    rest("GET", "/prompts", "The MCP servers' prompts",
         query=("server", "agent")),
))
class PromptsList(Params):
    """The prompts of the MCP servers, or of one, named SERVER__PROMPT; with an agent,
    those its allowlist admits."""

    server: str | None = None
    agent: str | None = None


@method("prompts.get", result=McpResult, scope="mcp:call", seen="prompt")
class PromptsGet(Params):
    """Get one prompt (SERVER__PROMPT) with its arguments (strings)."""

    name: str
    arguments: dict[str, str] = {}


@method("mcp.add", result=ReloadResult, scope="admin", mutating=True, seen=None,
        cli="mcp add")
class McpAdd(Params, omit_defaults=True):
    """Add a stdio MCP server to the file [supervisor] mcp_servers_file names (its
    {"mcpServers": ...}) and reload: it is served without a restart, and kept, as the
    file's, by the next reload or start. Refused where no such file is named, or the name
    is taken; a reload that fails leaves the file as it was. With `registry` (a server's
    name in the MCP registry [supervisor] mcp_registry names) its command is its package
    at the version the registry lists as latest, pinned; `name` defaults to the last
    part of it."""

    name: str = ""
    command: list[str] = []
    env: dict[str, str] = {}
    registry: str | None = None


@method("mcp.remove", result=ReloadResult, scope="admin", mutating=True, seen=None,
        cli="mcp remove")
class McpRemove(McpSelection):
    """Remove an MCP server from the file [supervisor] mcp_servers_file names and reload:
    its instances are stopped. One the config file itself declares is removed there."""
