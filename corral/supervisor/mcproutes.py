"""What agents may ask of the tool-server pool besides tools: resources and prompts
(methods in docs/protocol.md; params decoded by workerproto.py). Each is checked against
the same `tools = [...]` allowlist, a resource as `SERVER__URI`, a prompt as
`SERVER__PROMPT`; tools are in tasks.py (a call counts against its task's tool budget).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..mcp.pool import McpPool
from ..workerproto import (
    PromptsGetParams,
    PromptsListParams,
    ResourcesListParams,
    ResourcesReadParams,
    ResourcesSubscribeParams,
    ResourcesUnsubscribeParams,
    ResourceTemplatesListParams,
)
from .process_replica import ReplicaExit
from .stream import Stream
from .workercalls import on_request

if TYPE_CHECKING:
    from .replica import Replica


def _allow(r: Replica) -> list[str]:
    return list(r.spec.tools)


def updates_to(r: Replica) -> Callable[[str, str, dict[str, Any]], None]:
    """The listener of `r`'s resource subscription: each update told to its worker."""
    def updated(server: str, uri: str, params: dict[str, Any]) -> None:
        if r.peer is not None:
            r.peer.notify("resources/updated", {"server": server, "uri": uri})

    return updated


class AgentMcp:
    """Serves the resources/* and prompts/* worker methods (registered in
    `worker_methods`) from the tool-server pool."""

    def __init__(self, pool: McpPool[Any, Any], stream: Stream,
                 worker_methods: dict[str, Callable[[Replica, Any], Any]]) -> None:
        self.pool = pool
        on_request(worker_methods, ResourcesListParams, self.list_resources)
        on_request(worker_methods, ResourceTemplatesListParams, self.list_templates)
        on_request(worker_methods, ResourcesReadParams, self.read)
        on_request(worker_methods, ResourcesSubscribeParams, self.subscribe)
        on_request(worker_methods, ResourcesUnsubscribeParams, self.unsubscribe)
        on_request(worker_methods, PromptsListParams, self.list_prompts)
        on_request(worker_methods, PromptsGetParams, self.get_prompt)
        stream.subscribe(self._on_exit, ReplicaExit)

    def _on_exit(self, e: ReplicaExit) -> None:
        self.pool.drop_subscriber(e.replica.label)

    async def list_resources(self, r: Replica, p: ResourcesListParams) -> Any:
        return {"resources": await self.pool.list_resources(
            owner=r.label, allow=_allow(r), server=p.server)}

    async def list_templates(self, r: Replica, p: ResourceTemplatesListParams) -> Any:
        return {"resourceTemplates": await self.pool.list_resource_templates(
            owner=r.label, allow=_allow(r), server=p.server)}

    async def read(self, r: Replica, p: ResourcesReadParams) -> Any:
        return await self.pool.read_resource(p.server, p.uri, owner=r.label, allow=_allow(r))

    async def subscribe(self, r: Replica, p: ResourcesSubscribeParams) -> Any:
        await self.pool.subscribe(p.server, p.uri, r.label, updates_to(r), owner=r.label,
                                  allow=_allow(r))
        return {}

    async def unsubscribe(self, r: Replica, p: ResourcesUnsubscribeParams) -> Any:
        await self.pool.unsubscribe(p.server, p.uri, r.label, owner=r.label)
        return {}

    async def list_prompts(self, r: Replica, p: PromptsListParams) -> Any:
        return {"prompts": await self.pool.list_prompts(
            owner=r.label, allow=_allow(r), server=p.server)}

    async def get_prompt(self, r: Replica, p: PromptsGetParams) -> Any:
        return await self.pool.get_prompt(p.name, p.arguments or {}, owner=r.label,
                                          allow=_allow(r))
