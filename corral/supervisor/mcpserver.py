"""An MCP tool server as a supervised process: a Replica that speaks MCP instead of the
corral worker protocol (same caps, lifecycle, restart policy, logs)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..jsonrpc import Peer, RpcError
from ..mcp.client import McpClient
from .config import McpServerSpec
from .process import ChildProcess
from .replica import Replica

if TYPE_CHECKING:
    from .core import Supervisor


class McpServerReplica(Replica):
    kind = "mcp"
    title_prefix = "corral: mcp"
    name_variable = "CORRAL_MCP_SERVER"
    handshake = "the MCP handshake"
    handshake_failed = "MCP handshake failed"

    def __init__(self, sup: Supervisor, spec: McpServerSpec, name: str, index: int,
                 owner: str | None = None) -> None:
        super().__init__(sup, spec, name, index)
        self.mcp_spec = spec
        self.owner = owner  # "agent#replica" for scope = "per-agent"
        self.client = McpClient(f"{name}#{index}")
        self._refresh: asyncio.Task[Any] | None = None

    def _make_peer(self, proc: ChildProcess) -> Peer:
        self.client = McpClient(self.label)
        self.client.on_log = self.note
        self.client.on_tools_changed = self._tools_changed
        return self.client.make_peer(proc.write, on_garbage=self._on_garbage)

    def exit_message(self, reason: str) -> str:
        return f"MCP server {self.label} exited: {reason}"

    @property
    def pings(self) -> bool:
        return not self.client.stateless

    async def _handshake(self) -> str:
        version = await self.client.connect(self.spec.start_timeout)
        await self.client.list_tools(self.mcp_spec.timeout)
        return f"initialized (MCP {version}, {len(self.client.tools)} tools)"

    def _tools_changed(self) -> None:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._refetch())

    async def _refetch(self) -> None:
        try:
            await self.client.list_tools(self.mcp_spec.timeout)
        except RpcError as exc:
            self.note(f"tools/list after list_changed failed: {exc.message}")
