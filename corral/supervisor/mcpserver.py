"""An MCP tool server as a supervised process: a Replica that speaks MCP instead of the
corral worker protocol (same caps, lifecycle, restart policy, logs)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from .. import jsonrpc
from ..jsonrpc import Peer, RpcError
from ..mcp.client import McpClient
from .config import McpServerSpec
from .lifecycle import State
from .process import ChildProcess
from .replica import Replica

if TYPE_CHECKING:
    from .core import Supervisor


class McpServerReplica(Replica):
    kind = "mcp"
    title_prefix = "corral: mcp"

    def __init__(self, sup: Supervisor, spec: McpServerSpec, name: str, index: int,
                 owner: str | None = None) -> None:
        super().__init__(sup, spec, name, index)
        self.mcp_spec = spec
        self.owner = owner  # "agent#replica" for scope = "per-agent"
        self.client = McpClient(f"{name}#{index}")
        self._refresh: asyncio.Task[Any] | None = None

    def _make_peer(self, proc: ChildProcess) -> Peer:
        self.client = McpClient(self.label)
        self.client.on_log = lambda text: self.sup._on_log(self, "corral", [text.encode()])
        self.client.on_tools_changed = self._tools_changed
        return self.client.make_peer(proc.write, on_garbage=self._on_garbage)

    def exit_message(self, reason: str) -> str:
        return f"MCP server {self.label} exited: {reason}"

    @property
    def pings(self) -> bool:
        return not self.client.stateless

    async def _initialize(self) -> None:
        timeout = self.spec.start_timeout
        try:
            version = await self.client.connect(timeout)
            await self.client.list_tools(self.mcp_spec.timeout)
        except RpcError as exc:
            if exc.code == jsonrpc.REQUEST_TIMEOUT:
                self.take_down(f"start timeout: no answer to the MCP handshake within "
                               f"{timeout:g} s", graceful=False)
            elif exc.code != jsonrpc.PEER_CLOSED:
                self.take_down(f"MCP handshake failed: {exc.message}", graceful=False)
            return
        if self.state != State.STARTING:
            return
        self.capabilities = {"protocol_version": version, "tools": len(self.client.tools)}
        self.ready_at = time.monotonic()
        self._last_pong = self.ready_at
        self._set(State.READY, f"initialized (MCP {version}, {len(self.client.tools)} tools)")
        self.sup._on_ready(self)

    def _tools_changed(self) -> None:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._refetch())

    async def _refetch(self) -> None:
        try:
            await self.client.list_tools(self.mcp_spec.timeout)
        except RpcError as exc:
            self.sup._on_log(self, "corral", [f"tools/list after list_changed failed: "
                                              f"{exc.message}".encode()])
