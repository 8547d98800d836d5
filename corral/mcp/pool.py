"""The tool-server pool: MCP servers by name, their instances, and tool routing.

Agents see tools as `SERVER__TOOL`. A call is checked against the agent's allowlist
(fnmatch patterns), then sent to the instance of the server with the fewest requests in
flight (`scope = "shared"`), or to the calling replica's own instance
(`scope = "per-agent"`). Servers start with the daemon (`start = "eager"`) or on first use
(`"lazy"`). The instances themselves are supervised processes made by `factory` (the
supervisor's McpServerReplica); this module knows them only by the Protocols below, so it
depends on the wire layer and the MCP client alone.
"""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Literal, Protocol, TypeVar

import msgspec

from .. import jsonrpc
from ..jsonrpc import Peer, RpcError
from .client import McpClient

SEP = "__"
SERVING = ("ready", "busy", "idle")
DOWN = ("failed", "terminated", "initial")



class ServerSpec(Protocol):
    """What the pool reads of a server's configuration."""
    name: str
    instances: int
    scope: Literal["shared", "per-agent"]
    start: Literal["lazy", "eager"]
    timeout: float
    start_timeout: float


class _State(Protocol):
    @property
    def value(self) -> str: ...


class ServerInstance(Protocol):
    """What the pool uses of one supervised server process."""
    owner: str | None
    client: McpClient
    reason: str

    @property
    def state(self) -> _State: ...
    @property
    def peer(self) -> Peer | None: ...
    def start(self, *, by_hand: bool = ...) -> None: ...
    async def stop(self, reason: str) -> None: ...
    def status(self) -> msgspec.Struct: ...


Spec = TypeVar("Spec", bound=ServerSpec)
Inst = TypeVar("Inst", bound=ServerInstance)
Progress = Callable[[dict[str, Any]], None]


def split(qualified: str) -> tuple[str, str]:
    server, sep, tool = qualified.partition(SEP)
    if not sep or not server or not tool:
        raise RpcError(jsonrpc.NOT_FOUND, f"no such tool: {qualified} (tools are named "
                                          "SERVER__TOOL)")
    return server, tool


def allowed(qualified: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(qualified, p) for p in patterns)


def could_match(server: str, pattern: str) -> bool:
    """Whether some tool of `server` could match `pattern`."""
    if SEP in pattern:
        return fnmatch.fnmatchcase(server, pattern.split(SEP, 1)[0])
    return fnmatch.fnmatchcase(f"{server}{SEP}x", pattern) or pattern.endswith("*")


class ServerEntry(Generic[Spec, Inst]):
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.name = spec.name
        self.instances: list[Inst] = []  # shared
        self.per_agent: dict[str, Inst] = {}
        self.next_index = 0

    def all(self) -> list[Inst]:
        return [*self.instances, *self.per_agent.values()]


class McpPool(Generic[Spec, Inst]):
    def __init__(self, factory: Callable[[Spec, str, int, str | None], Inst],
                 wait_serving: Callable[[Inst, float], Awaitable[Inst]]) -> None:
        self.factory = factory
        self.wait_serving = wait_serving
        self.servers: dict[str, ServerEntry[Spec, Inst]] = {}

    # -- servers --------------------------------------------------------------------------
    def add(self, spec: Spec) -> ServerEntry[Spec, Inst]:
        if spec.name in self.servers:
            raise RpcError(jsonrpc.CONFLICT, f"MCP server {spec.name} already exists")
        entry = ServerEntry[Spec, Inst](spec)
        self.servers[spec.name] = entry
        if spec.scope == "shared":
            entry.instances = [self._new(entry, None) for _ in range(spec.instances)]
            if spec.start == "eager":
                for inst in entry.instances:
                    inst.start(by_hand=True)
        return entry

    def _new(self, entry: ServerEntry[Spec, Inst], owner: str | None) -> Inst:
        inst = self.factory(entry.spec, entry.name, entry.next_index, owner)
        entry.next_index += 1
        return inst

    async def remove(self, name: str) -> None:
        entry = self.servers.pop(name, None)
        if entry is not None:
            await asyncio.gather(*(i.stop("removed") for i in entry.all()))

    async def close(self) -> None:
        await asyncio.gather(*(i.stop("supervisor shutting down")
                               for e in self.servers.values() for i in e.all()))

    def server(self, name: str) -> ServerEntry[Spec, Inst]:
        try:
            return self.servers[name]
        except KeyError:
            raise RpcError(jsonrpc.NOT_FOUND, f"no such MCP server: {name}") from None

    async def instance(self, entry: ServerEntry[Spec, Inst], owner: str | None) -> Inst:
        """A serving instance for this caller, starting one if the server is lazy."""
        if entry.spec.scope == "per-agent":
            owner = owner or "corral"
            inst = entry.per_agent.get(owner)
            if inst is None:
                inst = entry.per_agent[owner] = self._new(entry, owner)
            candidates = [inst]
        else:
            candidates = entry.instances
        serving = [i for i in candidates if i.state.value in SERVING and i.peer is not None]
        if serving:
            return min(serving, key=lambda i: i.peer.in_flight if i.peer else 0)
        for i in candidates:
            if i.state.value in ("initial", "terminated"):
                i.start(by_hand=True)
        if all(i.state.value == "failed" for i in candidates):
            raise RpcError(jsonrpc.REFUSED, f"MCP server {entry.name} is failed: "
                                            f"{candidates[0].reason}")
        ready: Inst = await self.wait_serving(candidates[0],
                                                           entry.spec.start_timeout)
        return ready

    # -- tools ----------------------------------------------------------------------------
    async def list_tools(self, *, owner: str | None = None,
                         allow: list[str] | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for entry in self.servers.values():
            if allow is not None and not any(could_match(entry.name, p) for p in allow):
                continue  # no pattern can match this server's tools: do not start it
            try:
                inst = await self.instance(entry, owner)
            except RpcError:
                continue
            for tool in inst.client.tools:
                qualified = f"{entry.name}{SEP}{tool['name']}"
                if allow is None or allowed(qualified, allow):
                    out.append({**tool, "name": qualified, "server": entry.name})
        return out

    async def call(self, qualified: str, arguments: dict[str, Any], *,
                   owner: str | None = None, on_progress: Progress | None = None) -> Any:
        """Call a tool; the caller has checked its allowlist (tasks.py, for agents)."""
        server, tool = split(qualified)
        entry = self.servers.get(server)
        if entry is None:
            raise RpcError(jsonrpc.NOT_FOUND, f"no such tool: {qualified} (no MCP server "
                                              f"{server})")
        inst = await self.instance(entry, owner)
        if not any(t.get("name") == tool for t in inst.client.tools):
            raise RpcError(jsonrpc.NOT_FOUND, f"no such tool: {qualified} (MCP server {server} "
                                              f"has no tool {tool})")
        return await inst.client.call_tool(tool, arguments, timeout=entry.spec.timeout,
                                           on_progress=on_progress)

    def status(self) -> list[dict[str, Any]]:
        """Each instance's replica status, plus what is particular to an MCP server."""
        out = []
        for entry in self.servers.values():
            for i in entry.all():
                row = msgspec.structs.asdict(i.status())
                row["instance"] = row.pop("replica")
                row.update({
                    "owner": i.owner, "scope": entry.spec.scope,
                    "protocol_version": i.client.version, "tools": len(i.client.tools),
                    "rejected_tools": i.client.rejected_tools, "calls": i.client.calls,
                    "errors": i.client.errors,
                    "in_flight": i.peer.in_flight if i.peer is not None else 0,
                })
                out.append(row)
        return out
