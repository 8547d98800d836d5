"""What agents may ask of the tool-server pool besides tools: resources and prompts.

Tools are in tasks.py (a call counts against its task's tool budget); everything here is
checked against the same `tools = [...]` allowlist, a resource as `SERVER__URI`, a prompt
as `SERVER__PROMPT`. Worker protocol (docs/protocol.md):

    resources/list {server?}                 -> {"resources": [...]}  (each with "server")
    resources/templates/list {server?}       -> {"resourceTemplates": [...]}
    resources/read {server, uri}             -> the MCP result ({"contents": [...]})
    resources/subscribe {server, uri}        -> {}; then `resources/updated {server, uri}`
    resources/unsubscribe {server, uri}      -> {}
    prompts/list {server?}                   -> {"prompts": [...]}  (named SERVER__PROMPT)
    prompts/get {name, arguments?}           -> the MCP result ({"messages": [...]})
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..mcp.pool import McpPool
from .process_replica import Exited
from .stream import Stream

if TYPE_CHECKING:
    from .replica import Replica


def _str(params: dict[str, Any], key: str, method: str) -> str:
    value = params.get(key)
    if not isinstance(value, str):
        raise RpcError(jsonrpc.INVALID_PARAMS, f"{method}: {key} must be a string")
    return value


def _optional_str(params: dict[str, Any], key: str, method: str) -> str | None:
    return None if params.get(key) is None else _str(params, key, method)


def _allow(r: Replica) -> list[str]:
    return list(r.spec.tools)


class AgentMcp:
    """Serves the resources/* and prompts/* worker methods (registered in
    `worker_methods`) from the tool-server pool."""

    def __init__(self, pool: McpPool[Any, Any], stream: Stream,
                 worker_methods: dict[str, Callable[[Replica, Any], Any]]) -> None:
        self.pool = pool
        for method, handler in {
            "resources/list": self.list_resources,
            "resources/templates/list": self.list_templates,
            "resources/read": self.read,
            "resources/subscribe": self.subscribe,
            "resources/unsubscribe": self.unsubscribe,
            "prompts/list": self.list_prompts,
            "prompts/get": self.get_prompt,
        }.items():
            worker_methods[method] = handler
        stream.subscribe(self._on_exit, Exited)

    def _on_exit(self, e: Exited) -> None:
        self.pool.drop_subscriber(e.replica.label)

    async def list_resources(self, r: Replica, p: dict[str, Any]) -> Any:
        server = _optional_str(p, "server", "resources/list")
        return {"resources": await self.pool.list_resources(
            owner=r.label, allow=_allow(r), server=server)}

    async def list_templates(self, r: Replica, p: dict[str, Any]) -> Any:
        server = _optional_str(p, "server", "resources/templates/list")
        return {"resourceTemplates": await self.pool.list_resource_templates(
            owner=r.label, allow=_allow(r), server=server)}

    async def read(self, r: Replica, p: dict[str, Any]) -> Any:
        server = _str(p, "server", "resources/read")
        uri = _str(p, "uri", "resources/read")
        return await self.pool.read_resource(server, uri, owner=r.label, allow=_allow(r))

    async def subscribe(self, r: Replica, p: dict[str, Any]) -> Any:
        server = _str(p, "server", "resources/subscribe")
        uri = _str(p, "uri", "resources/subscribe")

        def updated(server: str, uri: str, params: dict[str, Any]) -> None:
            if r.peer is not None:
                r.peer.notify("resources/updated", {"server": server, "uri": uri})

        await self.pool.subscribe(server, uri, r.label, updated, owner=r.label,
                                     allow=_allow(r))
        return {}

    async def unsubscribe(self, r: Replica, p: dict[str, Any]) -> Any:
        server = _str(p, "server", "resources/unsubscribe")
        uri = _str(p, "uri", "resources/unsubscribe")
        await self.pool.unsubscribe(server, uri, r.label, owner=r.label)
        return {}

    async def list_prompts(self, r: Replica, p: dict[str, Any]) -> Any:
        server = _optional_str(p, "server", "prompts/list")
        return {"prompts": await self.pool.list_prompts(
            owner=r.label, allow=_allow(r), server=server)}

    async def get_prompt(self, r: Replica, p: dict[str, Any]) -> Any:
        name = _str(p, "name", "prompts/get")
        arguments = p.get("arguments") or {}
        if not isinstance(arguments, dict) or \
                not all(isinstance(v, str) for v in arguments.values()):
            raise RpcError(jsonrpc.INVALID_PARAMS,
                           "prompts/get: arguments must be an object of strings")
        return await self.pool.get_prompt(name, arguments, owner=r.label, allow=_allow(r))
