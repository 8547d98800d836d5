"""An MCP tool server as a supervised process: a Replica that speaks MCP instead of the
corral worker protocol (same caps, lifecycle, restart policy, logs). A server in a call is
not hung for missing pings while the call is within its timeout (a FastMCP 1.x server
answers no ping while a sync tool runs); a stop is the MCP stdio shutdown (no `shutdown`
request)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Protocol

from ..jsonrpc import Peer, RpcError
from ..mcp.client import McpClient, ServerNews
from ..mcp.pool import McpPool
from ..text import plural
from .config import MIB, McpServerSpec
from .egressallow import allowed
from .egressdoors import Doors, no_task
from .egresstrip import SERVER_KEY
from .mcpegress import server_sandboxed
from .process import ChildProcess
from .process_replica import ProcessReplica, ReplicaHost
from .tuning import Tuning


class McpHost(ReplicaHost, Protocol):
    """What a tool server's replica needs of the supervisor besides a process replica's."""

    @property
    def mcp(self) -> McpPool[Any, Any]: ...  # told of list changes and resource updates
    @property
    def state_dir(self) -> Path | None: ...  # where remote servers' OAuth tokens are kept
    @property
    def tuning(self) -> Tuning: ...  # the sandbox program, corral's files (egress = "none")
    @property
    def egress_doors(self) -> Doors: ...  # the namespaces the daemon holds


class McpServerReplica(ProcessReplica):
    kind = "mcp"
    title_prefix = "corral: mcp"
    name_variable = "CORRAL_MCP_SERVER"
    handshake = "the MCP handshake"
    handshake_failed = "MCP handshake failed"
    host: McpHost
    spec: McpServerSpec

    def __init__(self, host: McpHost, spec: McpServerSpec, name: str, index: int,
                 owner: str | None = None) -> None:
        super().__init__(host, spec, name, index)
        self.owner = owner  # "agent#replica" for scope = "per-agent"
        self.client = self._new_client()
        self._refresh: asyncio.Task[Any] | None = None
        self._retune: asyncio.Future[Any] | None = None
        self._held = False  # its process in a namespace the daemon holds (mcpegress.py)
        self._trips: dict[str, str] = {}  # its trips' binds (egresstrip.py)

    async def _prestart(self, env: dict[str, str], uid: int | None, gid: int | None,
                        spawning: dict[str, Any]) -> ChildProcess | None:
        """egress = "none": the namespace the daemon holds for it, its listeners at
        egress_allow's addresses (none at all without them)."""
        self._held = False
        if self.spec.egress != "none":
            return None
        doors = self.host.egress_doors
        # its trips (egresstrip.py): of no task
        self._trips = await doors.trips.open(self.door_key, self.host.tuning.control_socket,
                                            uid, gid, no_task)
        ns = await doors.open_allowed(self.door_key, allowed(self.spec.egress_allow))
        if ns is None and self.spec.egress_allow:
            raise OSError(f"egress_allow: the daemon cannot hold a network namespace for "
                          f"it here ({doors.refused}): it needs the daemon as root")
        if ns is not None:
            spawning["netns"] = ns
            self._held = True
        return None

    @property
    def door_key(self) -> str:
        """Its key in the egress doors and trips: apart from an agent's of its name."""
        return SERVER_KEY + self.label

    def _wrap(self, argv: list[str], env: dict[str, str], uid: int | None, *,
              beside: bool = False) -> list[str]:
        if self.spec.egress != "none":
            return argv
        return server_sandboxed(argv, env, uid, self.spec, self.host.tuning, self._held,
                                None if beside else self._trips)

    def _new_client(self) -> McpClient:
        return McpClient(self.label, roots=self.spec.roots,
                         log_level=self.spec.log_level,
                         news=ServerNews(self.note, self._tools_changed, self._list_changed,
                                         self._resource_updated))

    def _make_peer(self, proc: ChildProcess) -> Peer:
        self.client = self._new_client()
        return self.client.make_peer(proc.write, on_garbage=self._on_garbage)

    @property
    def max_line(self) -> int:
        return self.spec.max_message_mb * MIB

    @property
    def silence_excused(self) -> bool:
        # each call has its own timeout (`timeout`), after which it fails by itself
        return self.client.calls_in_flight > 0

    def _list_changed(self, method: str) -> None:
        # notifications/resources/list_changed -> "resources"
        self.host.mcp.list_changed(self.name, method.split("/")[1])

    def _resource_updated(self, uri: str, params: dict[str, Any]) -> None:
        self.host.mcp.resource_updated(self.name, uri, params)

    def retune(self, spec: McpServerSpec) -> None:
        """Take a spec that differs only in what a running server can be told (roots,
        log level): roots/list_changed and logging/setLevel instead of a restart."""
        self.spec = spec
        self.client.set_roots(spec.roots)
        if spec.log_level and spec.log_level != self.client.log_level \
                and self.client.version is not None and "logging" in self.client.capabilities:
            self._retune = asyncio.ensure_future(self._set_level(spec.log_level))

    async def _set_level(self, level: str) -> None:
        try:
            await self.client.set_log_level(level, self.spec.timeout)
        except RpcError as exc:
            self.note(f"logging/setLevel {level} failed: {exc.message}")

    def exit_message(self, reason: str) -> str:
        return f"MCP server {self.label} exited: {reason}"

    @property
    def pings(self) -> bool:
        return not self.client.stateless

    def liveness_request(self) -> tuple[str, dict[str, Any]]:
        return self.client.liveness_request()

    async def _handshake(self) -> str:
        version = await self.client.connect(self.spec.start_timeout)
        await self.client.list_tools(self.spec.timeout)
        return f"initialized (MCP {version}, {plural(len(self.client.tools), 'tool')})"

    def _tools_changed(self) -> None:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._refetch())

    async def _refetch(self) -> None:
        try:
            await self.client.list_tools(self.spec.timeout)
        except RpcError as exc:
            self.note(f"tools/list after list_changed failed: {exc.message}")
            return
        self.host.mcp.list_changed(self.name, "tools")
