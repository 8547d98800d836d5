"""The MCP pool's methods' handlers: the servers' tools, resources and prompts listed and
read as an operator (or as an agent's allowlist sees them), a tool called through the
gateway's chain as its caller is there, the servers started and stopped, and the
gateway's figures (its clients reach it at `/mcp`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import msgspec

from .. import jsonrpc
from .. import methods as m
from ..jsonrpc import RpcError
from ..mcp.pins import Pins
from ..supervisor.agents import Agents
from ..supervisor.lifecycle import RESTARTED
from ..supervisor.tools import Tools
from . import mcpfile
from .api import Commands, by_name, wire
from .caller import Caller, Channel
from .gatewayaccess import GatewayService
from .services import Services


class McpServices(msgspec.Struct, frozen=True):
    tools: Tools  # the MCP tool-server pool
    pins: Pins  # its tools' pinned definitions
    agents: Agents  # whose allowlist a listing takes
    gateway_status: Callable[[], dict[str, Any]]  # the gateway's figures, beside the pool's
    config_path: Path  # whose mcp_servers_file `mcp add` and `mcp remove` write
    reload: Callable[[str], Awaitable[m.ReloadResult]]  # who asked -> what changed
    gateway: GatewayService  # whose chain a tool call enters by (tools.call)


COMMANDS: Commands[Services, McpServices] = Commands(by_name(McpServices))
implements = COMMANDS.implements

CLI_OWNER = "corral-cli"  # whose instance a per-agent server uses for operators' calls


def _lister(d: McpServices, agent: str | None, caller: Caller) -> dict[str, Any]:
    """Whose view a listing takes: an agent's (its allowlist), an API token's as /mcp
    lists for it (its glob's agents' allowlists: decision 2053), or the operator's (all)."""
    if agent is None:
        if caller.token is None:
            return {"owner": CLI_OWNER}
        ident = d.gateway.identity_of(caller)
        return {"owner": ident.owner, **({} if ident.allow is None else {"allow": ident.allow})}
    a = d.agents.agent(agent)
    return {"owner": f"{a.name}#0", "allow": list(a.spec.tools)}


Listing = Callable[..., Awaitable[list[dict[str, Any]]]]


async def _listing(d: McpServices, who: dict[str, Any], server: str | None,
                   *lists: Listing) -> tuple[list[list[dict[str, Any]]], dict[str, str],
                                             list[str]]:
    """The pool's listings, and what every listing method answers besides them: the
    servers that could not answer (`unavailable`: name -> why) and, of those, the ones
    whose every instance has failed (`failed`: the CLI exits 1 for them)."""
    unavailable: dict[str, str] = {}
    found = await asyncio.gather(*(list_them(server=server, unavailable=unavailable, **who)
                                   for list_them in lists))
    failed = [n for n in unavailable if (insts := d.tools.servers[n].all())
              and all(i.machine.failed for i in insts)]
    return list(found), unavailable, failed


@implements(m.ToolsList)
async def tools_list(d: McpServices, p: m.ToolsList, caller: Caller, c: Channel) -> m.ToolList:
    who = _lister(d, p.agent, caller)
    (tools,), unavailable, failed = await _listing(d, who, p.server, d.tools.list_tools)
    # with an agent, its allowlist, so an empty listing can say why
    return m.ToolList(tools=tools, unavailable=unavailable, failed=failed,
                      allow=who.get("allow", msgspec.UNSET))


@implements(m.ToolsPins)
async def tools_pins(d: McpServices, p: m.ToolsPins, caller: Caller, c: Channel
                     ) -> m.ToolPins:
    return m.ToolPins(pins=d.pins.listing())


@implements(m.ToolsCall)
async def tools_call(d: McpServices, p: m.ToolsCall, caller: Caller, c: Channel) -> Any:
    # a door of the one chain, as /mcp is for the same caller (decision 2052: it called
    # the pool itself, past every link: an API token's glob, its tenant's rules, policy)
    return await d.gateway.call(d.gateway.identity_of(caller), p.name, p.arguments,
                                lambda note: c.notify("tools.progress", note))


@implements(m.McpStatus)
async def mcp_status(d: McpServices, p: m.McpStatus, caller: Caller, c: Channel
                     ) -> m.McpStatusResult:
    return m.McpStatusResult(mcp_servers=wire(d.tools.status()),
                             gateway=wire(d.gateway_status()))


@implements(m.GatewayStatus)
async def gateway_status(d: McpServices, p: m.GatewayStatus, caller: Caller, c: Channel
                         ) -> m.GatewayStats:
    # the engine's answer is its wire twin's dict: it encodes alike
    return cast(m.GatewayStats, d.gateway_status())


@implements(m.McpStart)
@implements(m.McpStop)
@implements(m.McpRestart)
async def mcp_instances(d: McpServices, p: m.McpSelection, caller: Caller, c: Channel
                        ) -> m.McpInstances:
    insts = d.tools.server(p.name).all()
    if not isinstance(p, m.McpStart):
        await asyncio.gather(*(i.stop("stopped" if isinstance(p, m.McpStop) else RESTARTED)
                               for i in insts))
    if not isinstance(p, m.McpStop):
        for i in insts:
            i.start(by_hand=True)
    return m.McpInstances(name=p.name, instances=len(insts))


@implements(m.McpAdd)
@implements(m.McpRemove)
async def mcp_file(d: McpServices, p: m.McpAdd | m.McpRemove, caller: Caller, c: Channel
                   ) -> m.ReloadResult:
    if isinstance(p, m.McpAdd):
        return await mcpfile.add(d.config_path, p, lambda: d.reload(caller.who))
    return await mcpfile.remove(d.config_path, p, lambda: d.reload(caller.who))


@implements(m.ResourcesList)
async def resources_list(d: McpServices, p: m.ResourcesList, caller: Caller, c: Channel
                         ) -> m.ResourceList:
    (resources, templates), unavailable, failed = await _listing(
        d, _lister(d, p.agent, caller), p.server, d.tools.list_resources,
        d.tools.list_resource_templates)
    return m.ResourceList(resources=resources, resource_templates=templates,
                          unavailable=unavailable, failed=failed)


@implements(m.ResourcesRead)
async def resources_read(d: McpServices, p: m.ResourcesRead, caller: Caller, c: Channel) -> Any:
    server = p.server
    if server is None:
        listed = await d.tools.list_resources(owner=CLI_OWNER)
        having = sorted({r["server"] for r in listed if r.get("uri") == p.uri})
        if len(having) != 1:
            raise RpcError(jsonrpc.NOT_FOUND if not having else jsonrpc.INVALID_PARAMS,
                           f"resource {p.uri}: " + (f"listed by {', '.join(having)}; name "
                           "the server" if having else "no server lists it; name the server"))
        server = having[0]
    return await d.tools.read_resource(server, p.uri, owner=CLI_OWNER)


@implements(m.PromptsList)
async def prompts_list(d: McpServices, p: m.PromptsList, caller: Caller, c: Channel
                       ) -> m.PromptList:
    (prompts,), unavailable, failed = await _listing(d, _lister(d, p.agent, caller), p.server,
                                                     d.tools.list_prompts)
    return m.PromptList(prompts=prompts, unavailable=unavailable, failed=failed)


@implements(m.PromptsGet)
async def prompts_get(d: McpServices, p: m.PromptsGet, caller: Caller, c: Channel) -> Any:
    return await d.tools.get_prompt(p.name, p.arguments, owner=CLI_OWNER)
