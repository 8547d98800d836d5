"""The engine's tool servers: the MCP pool (corral/mcp/pool.py) with what the engine adds
to it: a server's spec checked before it is added, a change of roots or log level made
without a restart, each agent's allowlist narrowed to the servers its tenant sees, and
every list change on the stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..mcp.pins import Pins
from ..mcp.pool import McpPool
from ..timeouts import kept
from .config import ConfigError, McpServerSpec
from .errors import SupervisorError
from .lifecycle import SERVING, State
from .mcpserver import McpHost, McpServerReplica
from .names import name_problem, shown
from .quotas import visible_allow
from .remote import RemoteMcpServer
from .stream import ListChanged, Stream
from .waits import Waits

# agents' allowlists kept (a fleet's agents each one; past it, all made again)
KEPT_ALLOWS = 1024


class Tools(McpPool[McpServerSpec, McpServerReplica]):
    def __init__(self, host: McpHost, waits: Waits, stream: Stream,
                 pins: Pins | None = None) -> None:
        super().__init__(self._new_instance, self._wait_serving, pins)
        self.host = host  # what each instance runs under (core.Supervisor)
        self.waits = waits
        self.stream = stream
        self.on_change = self._list_changed
        self._leaving: set[asyncio.Task[None]] = set()  # removed agents' instances, stopping
        # the servers' generation: one more as a server comes, goes or changes its spec
        self._generation = 0
        # an agent's name -> the spec, the generation and the allowlist made of them
        self._allows: dict[str, tuple[Any, int, list[str]]] = {}

    async def remove(self, name: str) -> None:
        """The server and its instances gone, and what the daemon held for their egress
        with them (their namespaces, listeners and trips: egressdoors.py)."""
        entry = self.servers.get(name)
        gone = list(entry.all()) if entry is not None else []
        await super().remove(name)
        for inst in gone:
            self.host.egress_doors.forget(inst.door_key)

    def forget(self, owned: Callable[[str], bool], why: str) -> None:
        """The per-agent instances of the owners `owned` names stopped and forgotten: a
        removed agent's replicas' (owned by their labels, AGENT#N: an agent made later
        under its name, another tenant's too, is given instances of its own, not what the
        first left in them, DESIGN 20, decision 1809), a revoked token's (decision 1831);
        none is kept for the server's life."""
        for entry in self.servers.values():
            for owner in [o for o in entry.per_agent if owned(o)]:
                kept(self._leaving, asyncio.ensure_future(self._stopped(
                    entry.per_agent.pop(owner), why)))

    def forget_agent(self, agent: str) -> None:
        """A removed agent's kept allowlist let go, and its spec with it: agents made per
        job under new names each left theirs until the cap cleared them all."""
        self._allows.pop(agent, None)

    async def _stopped(self, inst: McpServerReplica, why: str) -> None:
        await inst.stop(why)
        self.host.egress_doors.forget(inst.door_key)

    async def close(self) -> None:
        await asyncio.gather(*self._leaving)
        await super().close()

    def add_server(self, spec: McpServerSpec) -> None:
        problem = name_problem(spec.name, server=True)
        if problem:
            raise SupervisorError(jsonrpc.INVALID_PARAMS,
                                  f"MCP server {shown(spec.name)}: {problem}")
        try:
            spec.check()
        except ConfigError as exc:
            raise SupervisorError(jsonrpc.INVALID_PARAMS,
                                  f"MCP server {spec.name}: {exc}") from None
        self.add(spec)

    def timeout_of(self, tool: str) -> float | None:
        """The call timeout of the server a SERVER__TOOL name is of; None: no such server."""
        entry = self.servers.get(tool.partition("__")[0])
        return entry.spec.timeout if entry is not None else None

    def retune(self, spec: McpServerSpec) -> bool:
        """Apply a changed spec without a restart where only roots or the log level
        differ (the server is told); False when it needs a restart."""
        entry = self.server(spec.name)
        old = msgspec.structs.replace(entry.spec, roots=spec.roots, log_level=spec.log_level)
        if old != spec:
            return False
        entry.spec = spec
        self._generation += 1
        for inst in entry.all():
            inst.retune(spec)
        return True

    def instances(self) -> Iterable[McpServerReplica]:
        for entry in list(self.servers.values()):
            yield from entry.all()

    def allowlist(self, spec: Any) -> list[str]:
        """The agent's (`spec`'s) tools allowlist as its tenant narrows it, kept for its
        next call while the spec is the same object and no server came, went or changed:
        what it is made of is its key (each call's view asks for it, at every door, and
        it was made again each time). Read, never changed, by those it is given to."""
        held = self._allows.get(spec.name)
        if held is not None and held[0] is spec and held[1] == self._generation:
            return held[2]
        allow = visible_allow(list(getattr(spec, "tools", [])), spec.tenant,
                              {n: e.spec for n, e in self.servers.items()})
        if len(self._allows) >= KEPT_ALLOWS:
            self._allows.clear()
        self._allows[spec.name] = (spec, self._generation, allow)
        return allow

    def spec_of(self, name: str) -> McpServerSpec | None:
        e = self.servers.get(name)
        return e.spec if e is not None else None

    def tenant_of(self, name: str) -> str | None:
        spec = self.spec_of(name)
        return spec.tenant if spec is not None else None

    def used_by(self, tenant: str) -> bool:
        return any(e.spec.tenant == tenant for e in self.servers.values())

    def _new_instance(self, spec: McpServerSpec, name: str, index: int,
                      owner: str | None) -> McpServerReplica:
        if spec.remote:  # a connection, not a process: supervised the same way
            return RemoteMcpServer(self.host, spec, name, index, owner)
        return McpServerReplica(self.host, spec, name, index, owner)

    async def _wait_serving(self, inst: McpServerReplica, timeout: float
                            ) -> McpServerReplica:
        with contextlib.suppress(TimeoutError):
            await self.waits.wait_replica(inst, {*SERVING, State.TERMINATED}, timeout)
        if not inst.machine.takes_work:
            raise RpcError(jsonrpc.REFUSED, f"MCP server {inst.label} is not serving: "
                                            f"{inst.reason}")
        return inst

    def _came_or_went(self, server: str) -> None:
        self._generation += 1  # (after the change: a list made before it is made again)
        super()._came_or_went(server)

    def _list_changed(self, server: str, kind: str) -> None:
        self.stream.emit(ListChanged(server, kind))
