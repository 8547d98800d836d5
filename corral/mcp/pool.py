"""The tool-server pool: MCP servers by name, their instances, and tool routing
(`SERVER__TOOL`). A call goes to the instance with the fewest requests in flight
(`scope = "shared"`) or to the calling replica's own (`"per-agent"`). The instances are
known only by the Protocols below: this module depends on the wire layer and the MCP
client alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Generic, Literal, Protocol, TypeVar
from urllib.parse import unquote

import msgspec

from .. import jsonrpc, text
from ..jsonrpc import Peer, RpcError
from .client import Asker, McpClient
from .logrelay import LogRelay
from .pins import Pins, ToolDrifted
from .relay import InputRelay

SEP = "__"
_WILD = re.compile(r"[*?[]").search  # what makes a pattern fnmatch's, not a name
# where a server that reads a URI as a path may begin a segment of it
_SEGMENTS = re.compile(r"[/\\?#;]").split

# what a replica's status says that an MCP server instance's does not
AGENT_ONLY = ("ready", "health", "status_text", "done", "stopped_by", "stopped_at",
              "draining", "boundary")


class ServerSpec(Protocol):
    """What the pool reads of a server's configuration."""
    name: str
    instances: int
    scope: Literal["shared", "per-agent"]
    start: Literal["lazy", "eager"]
    timeout: float
    start_timeout: float


class Lifecycle(Protocol):
    """What the pool asks of a server process's lifecycle machine (the supervisor's
    lifecycle.Machine): it decides nothing from a state itself."""

    @property
    def takes_work(self) -> bool: ...
    @property
    def startable(self) -> bool: ...
    @property
    def failed(self) -> bool: ...
    @property
    def never_started(self) -> bool: ...


class ServerInstance(Protocol):
    """What the pool uses of one supervised server process."""
    owner: str | None
    client: McpClient

    @property
    def machine(self) -> Lifecycle: ...
    @property
    def reason(self) -> str: ...
    @property
    def peer(self) -> Peer | None: ...
    def start(self, *, by_hand: bool = ...) -> None: ...
    async def stop(self, reason: str) -> None: ...
    def status(self) -> msgspec.Struct: ...


Spec = TypeVar("Spec", bound=ServerSpec)
Inst = TypeVar("Inst", bound=ServerInstance)
Progress = Callable[[dict[str, Any]], None]
# (server, uri, the notification's params)
ResourceListener = Callable[[str, str, dict[str, Any]], None]
# what each list's result calls its items, and the item's field an allowlist reads
LISTED = {"resources": ("resources", "uri"),
          "resources/templates": ("resourceTemplates", "uriTemplate"),
          "prompts": ("prompts", "name")}


def no_server(qualified: str, server: str, what: str = "tool") -> RpcError:
    """A tool (or skill) of no MCP server there is, or none its caller's tenant sees: the
    one answer for both (a server of another tenant's is not told from one that is not
    there: decision 1694), the names a caller chose cut (2 MB of one were 4 MB of this)."""
    return RpcError(jsonrpc.NOT_FOUND, f"no such {what}: {text.clip(qualified, 200)} "
                                       f"(no MCP server {text.clip(server, 200)})")


def split(qualified: str, what: str = "tool") -> tuple[str, str]:
    server, sep, name = qualified.partition(SEP)
    if not sep or not server or not name:
        raise RpcError(jsonrpc.NOT_FOUND, f"no such {what}: {qualified} ({what}s are named "
                                          f"SERVER__{what.upper()})")
    return server, name


def allowed(qualified: str, patterns: list[str]) -> bool:
    # ("*", anonymous_tools' and many a token's, admits every name: no match made a call;
    # a pattern with no wildcard is compared, not compiled: fnmatch's cache keeps tens of
    # thousands of the patterns it compiles, and the `spawns` lists of a fleet's agents
    # made per job name names never used again. A name that spells a wildcard is only
    # matched: the pattern whose text it is may not match it, `a[b]` admitting `ab` alone;
    # map and filter, not a generator: the view link asks at every call, and the
    # generator's frame cost as much as the match)
    return "*" in patterns or (qualified in patterns and not _WILD(qualified)) or any(
        map(partial(fnmatch.fnmatchcase, qualified), filter(_WILD, patterns)))


def dot_segment(uri: str) -> str | None:
    """The dot segment (`.`, `..`) a resource's URI has as a server may read it, its
    escapes decoded (an escape of an escape too), or None. An allowlist's pattern is
    matched on the URI as written, and fnmatch's `*` takes `/` and `..`: a URI that
    climbs out of the directory a pattern names would be admitted by it."""
    for _ in range(3):
        decoded = unquote(uri)
        if decoded == uri:
            break
        uri = decoded
    return next((s for s in _SEGMENTS(uri) if s in (".", "..")), None)


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
                 wait_serving: Callable[[Inst, float], Awaitable[Inst]],
                 pins: Pins | None = None) -> None:
        self.factory = factory
        self.wait_serving = wait_serving
        # a drifted tool is not listed and not called until a person approves it
        self.pins = pins if pins is not None else Pins()
        self.servers: dict[str, ServerEntry[Spec, Inst]] = {}
        # (server, uri) -> subscriber -> listener
        self.subscriptions: dict[tuple[str, str], dict[str, ResourceListener]] = {}
        # told (server, "tools" | "resources" | "prompts") when a server's list changed
        # (for tools, once corral has the new list)
        self.on_change: Callable[[str, str], None] | None = None

    # -- servers --------------------------------------------------------------------------
    def add(self, spec: Spec) -> ServerEntry[Spec, Inst]:
        if spec.name in self.servers:
            raise RpcError(jsonrpc.CONFLICT, f"MCP server {spec.name} already exists")
        entry = self.servers[spec.name] = ServerEntry[Spec, Inst](spec)
        if spec.scope == "shared":
            entry.instances = [self._new(entry, None) for _ in range(spec.instances)]
            if spec.start == "eager":
                for inst in entry.instances:
                    inst.start(by_hand=True)
        self._came_or_went(spec.name)
        return entry

    def _new(self, entry: ServerEntry[Spec, Inst], owner: str | None) -> Inst:
        inst = self.factory(entry.spec, entry.name, entry.next_index, owner)
        entry.next_index += 1
        return inst

    def instance_of(self, name: str, index: int, owner: str | None) -> Inst | None:
        """Instance `index` of server `name` (a per-agent one made again for `owner`, as it
        was before an upgrade), or None if the config has no such instance now."""
        entry = self.servers.get(name)
        if entry is None:
            return None
        if owner is None:
            return next((i for n, i in enumerate(entry.instances) if n == index), None)
        if entry.spec.scope != "per-agent" or owner in entry.per_agent:
            return None
        inst = entry.per_agent[owner] = self.factory(entry.spec, name, index, owner)
        entry.next_index = max(entry.next_index, index + 1)
        return inst

    async def remove(self, name: str) -> None:
        entry = self.servers.pop(name, None)
        if entry is not None:
            self._came_or_went(name)
            await asyncio.gather(*(i.stop("removed") for i in entry.all()))

    async def close(self) -> None:
        await asyncio.gather(*(i.stop("supervisor shutting down")
                               for e in self.servers.values() for i in e.all()))

    def server(self, name: str) -> ServerEntry[Spec, Inst]:
        try:
            return self.servers[name]
        except KeyError:
            raise jsonrpc.not_found("MCP server", name) from None

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
        serving = [i for i in candidates if i.machine.takes_work and i.peer is not None]
        if len(serving) == 1:
            return serving[0]
        if serving:
            return min(serving, key=lambda i: i.peer.in_flight if i.peer else 0)
        for i in candidates:
            if i.machine.startable:
                i.start(by_hand=True)
        if all(i.machine.failed for i in candidates):
            raise RpcError(jsonrpc.REFUSED, f"MCP server {entry.name} is failed: "
                                            f"{candidates[0].reason}")
        if all(i.machine.never_started for i in candidates):  # cannot start
            raise RpcError(jsonrpc.REFUSED, f"MCP server {entry.name} is not serving: "
                                            f"{candidates[0].reason}")
        return await self.wait_serving(candidates[0], entry.spec.start_timeout)

    # -- listing across servers -----------------------------------------------------------
    async def _serving(self, owner: str | None, allow: list[str] | None, server: str | None,
                       unavailable: dict[str, str] | None) -> list[tuple[str, Inst]]:
        """(name, instance) of every server some pattern could admit, started where lazy;
        servers that cannot serve are told in `unavailable` with the reason."""
        entries = [self.server(server)] if server is not None else list(self.servers.values())
        entries = [e for e in entries
                   if allow is None or any(could_match(e.name, p) for p in allow)]

        async def one(entry: ServerEntry[Spec, Inst]) -> tuple[str, Inst | None]:
            try:
                return entry.name, await self.instance(entry, owner)
            except RpcError as exc:
                if unavailable is not None:
                    unavailable[entry.name] = exc.message
                return entry.name, None

        found = await asyncio.gather(*(one(e) for e in entries))
        return [(name, inst) for name, inst in found if inst is not None]

    async def extended(self, extension: str, owner: str | None, allow: list[str] | None,
                       server: str | None = None) -> list[tuple[str, Inst]]:
        """`_serving`'s servers whose capabilities declare `extension` (SEP-2640)."""
        return [(n, i) for n, i in await self._serving(owner, allow, server, None)
                if extension in (i.client.capabilities.get("extensions") or {})]

    async def _list_each(self, kind: str, owner: str | None, allow: list[str] | None,
                         server: str | None, unavailable: dict[str, str] | None
                         ) -> list[dict[str, Any]]:
        """Each item of `kind` of every server, with its `server`, admitted by `allow`
        as SERVER__FIELD (LISTED)."""
        capability = kind.split("/")[0]
        items_key, field = LISTED[kind]
        serving = [(n, i) for n, i in await self._serving(owner, allow, server, unavailable)
                   if capability in i.client.capabilities]

        async def one(name: str, inst: Inst) -> list[dict[str, Any]]:
            try:
                items = await inst.client.list_all(f"{kind}/list", items_key,
                                                   self.servers[name].spec.timeout)
            except RpcError as exc:
                if unavailable is not None:
                    unavailable[name] = f"{kind.replace('/', ' ')}: {exc.message}"
                return []
            return [{**item, "server": name} for item in items
                    if allow is None or allowed(f"{name}{SEP}{item.get(field)}", allow)]

        lists = await asyncio.gather(*(one(n, i) for n, i in serving))
        return [item for items in lists for item in items]

    async def _admitted(self, server: str, what: str, qualified: str, owner: str | None,
                        allow: list[str] | None, sees: Callable[[str], bool] | None = None
                        ) -> tuple[ServerEntry[Spec, Inst], Inst]:
        """`sees`: whether the caller's tenant sees a server (one it does not is none
        there is, in the same words: decision 1694)."""
        if allow is not None and not allowed(qualified, allow):
            raise RpcError(jsonrpc.TOOL_NOT_ALLOWED,
                           f"{what} {qualified} is not allowed (allowlist: {allow})")
        if sees is not None and not sees(server):
            raise jsonrpc.not_found("MCP server", server)
        entry = self.server(server)
        return entry, await self.instance(entry, owner)

    # -- tools ----------------------------------------------------------------------------
    async def list_tools(self, *, owner: str | None = None, allow: list[str] | None = None,
                         server: str | None = None,
                         unavailable: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """The tools as SERVER__TOOL (with `server`)."""
        out: list[dict[str, Any]] = []
        for name, inst in await self._serving(owner, allow, server, unavailable):
            for tool in inst.client.tools:
                qualified = f"{name}{SEP}{tool['name']}"
                if allow is not None and not allowed(qualified, allow):
                    continue
                # a drifted tool is not shown: its new description may be the attack
                if await self.pins.seen(name, tool) is None:
                    out.append({**tool, "name": qualified, "server": name})
        return out

    async def call(self, qualified: str, arguments: dict[str, Any], *,
                   owner: str | None = None, on_progress: Progress | None = None,
                   relay: InputRelay | None = None, on_log: LogRelay | None = None,
                   asker: Asker | None = None, caller: str | None = None,
                   key: str | None = None) -> Any:
        """Call a tool; its caller's allowlist is the call chain's first link's to check
        (supervisor/tasks/chain.py), a drifted definition ToolDrifted for its pins link
        (McpClient.call_tool says the rest)."""
        server, tool = split(qualified)
        entry = self.servers.get(server)
        if entry is None:
            raise no_server(qualified, server)
        inst = await self.instance(entry, owner)
        definition = inst.client.tool(tool)
        if definition is None:
            raise RpcError(jsonrpc.NOT_FOUND, f"no such tool: {text.clip(qualified, 200)} "
                                              f"(MCP server {server} has no tool "
                                              f"{text.clip(tool, 200)})")
        drift = await self.pins.seen(server, definition)
        if drift is not None:
            raise ToolDrifted(qualified, drift, self.pins)
        return await inst.client.call_tool(tool, arguments, timeout=entry.spec.timeout,
                                           on_progress=on_progress, relay=relay,
                                           on_log=on_log, asker=asker, caller=caller,
                                           key=key)

    # -- resources ------------------------------------------------------------------------
    # An allowlist admits a resource as SERVER__URI (`notes__*` admits every resource of
    # notes, `fs__file:///srv/*` those under /srv), a prompt as SERVER__PROMPT.
    async def list_resources(self, *, owner: str | None = None,
                             allow: list[str] | None = None, server: str | None = None,
                             unavailable: dict[str, str] | None = None
                             ) -> list[dict[str, Any]]:
        return await self._list_each("resources", owner, allow, server, unavailable)

    async def list_resource_templates(self, *, owner: str | None = None,
                                      allow: list[str] | None = None,
                                      server: str | None = None,
                                      unavailable: dict[str, str] | None = None
                                      ) -> list[dict[str, Any]]:
        return await self._list_each("resources/templates", owner, allow, server,
                                     unavailable)

    async def read_resource(self, server: str, uri: str, *, owner: str | None = None,
                            allow: list[str] | None = None,
                            relay: InputRelay | None = None) -> Any:
        entry, inst = await self._resource(server, uri, owner, allow)
        return await inst.client.read_resource(uri, entry.spec.timeout, relay)

    async def _resource(self, server: str, uri: str, owner: str | None,
                        allow: list[str] | None) -> tuple[ServerEntry[Spec, Inst], Inst]:
        """A resource its caller's allowlist admits by a URI that climbs nowhere (none
        of a caller no allowlist judges is refused for its path: all is its to read)."""
        qualified = f"{server}{SEP}{uri}"
        climb = None if allow is None or "*" in allow else dot_segment(uri)
        if climb is not None:
            raise RpcError(jsonrpc.TOOL_NOT_ALLOWED,
                           f"resource {text.clip(qualified, 200)} is not allowed: its URI "
                           f"has the dot segment {climb!r}, which no allowlist admits")
        return await self._admitted(server, "resource", qualified, owner, allow)

    async def subscribe(self, server: str, uri: str, subscriber: str,
                        on_update: ResourceListener, *, owner: str | None = None,
                        allow: list[str] | None = None) -> None:
        """`on_update` hears each update of `uri` until `unsubscribe` by the same `subscriber`."""
        entry, inst = await self._resource(server, uri, owner, allow)
        if not (inst.client.capabilities.get("resources") or {}).get("subscribe"):
            raise RpcError(jsonrpc.REFUSED, f"MCP server {server} does not offer resource "
                                            "subscriptions")
        listeners = self.subscriptions.setdefault((server, uri), {})
        if not listeners:
            await inst.client.subscribe(uri, entry.spec.timeout)
        listeners[subscriber] = on_update

    async def unsubscribe(self, server: str, uri: str, subscriber: str, *,
                          owner: str | None = None) -> None:
        listeners = self.subscriptions.get((server, uri))
        if listeners is None or listeners.pop(subscriber, None) is None or listeners:
            return
        del self.subscriptions[(server, uri)]
        entry = self.servers.get(server)
        if entry is not None:
            for inst in entry.all():
                if inst.machine.takes_work and inst.peer is not None:
                    with contextlib.suppress(RpcError):
                        await inst.client.unsubscribe(uri, entry.spec.timeout)

    def subscribed(self) -> list[tuple[str, str, str]]:
        """(server, uri, subscriber) of every subscription (`corral upgrade` hands them)."""
        return [(server, uri, who) for (server, uri), ls in self.subscriptions.items()
                for who in ls]

    def resubscribe(self, server: str, uri: str, subscriber: str,
                    on_update: ResourceListener) -> None:
        """A subscription the server holds already (across an upgrade): listened to
        again, not asked for again."""
        self.subscriptions.setdefault((server, uri), {})[subscriber] = on_update

    def drop_subscriber(self, subscriber: str) -> None:
        for key in [k for k, ls in self.subscriptions.items() if subscriber in ls]:
            self.subscriptions[key].pop(subscriber, None)

    def resource_updated(self, server: str, uri: str, params: dict[str, Any]) -> None:
        for listener in list(self.subscriptions.get((server, uri), {}).values()):
            listener(server, uri, params)

    def _came_or_went(self, server: str) -> None:
        for kind in ("tools", "resources", "prompts"):
            self.list_changed(server, kind)

    def list_changed(self, server: str, kind: str) -> None:
        """An instance of `server` said its `kind` list changed, or the server came or went."""
        if self.on_change is not None:
            self.on_change(server, kind)

    # -- prompts and completion -----------------------------------------------------------
    async def list_prompts(self, *, owner: str | None = None, allow: list[str] | None = None,
                           server: str | None = None,
                           unavailable: dict[str, str] | None = None) -> list[dict[str, Any]]:
        prompts = await self._list_each("prompts", owner, allow, server, unavailable)
        return [{**p, "name": f"{p['server']}{SEP}{p.get('name')}"} for p in prompts]

    async def get_prompt(self, qualified: str, arguments: dict[str, str], *,
                         owner: str | None = None, allow: list[str] | None = None,
                         relay: InputRelay | None = None,
                         sees: Callable[[str], bool] | None = None) -> Any:
        server, name = split(qualified, "prompt")
        entry, inst = await self._admitted(server, "prompt", qualified, owner, allow, sees)
        return await inst.client.get_prompt(name, arguments, entry.spec.timeout, relay)

    async def complete(self, server: str, ref: dict[str, Any], argument: dict[str, Any],
                       context: dict[str, Any] | None = None, *, owner: str | None = None,
                       allow: list[str] | None = None,
                       sees: Callable[[str], bool] | None = None) -> Any:
        """completion/complete of a prompt's (name unqualified) or resource template's argument."""
        subject = ref.get("name") if ref.get("type") == "ref/prompt" else ref.get("uri")
        entry, inst = await self._admitted(server, "completion for",
                                           f"{server}{SEP}{subject}", owner, allow, sees)
        return await inst.client.complete(ref, argument, context, entry.spec.timeout)

    def status(self) -> list[dict[str, Any]]:
        """Each instance's replica status, plus what is particular to an MCP server."""
        out = []
        for entry in self.servers.values():
            for i in entry.all():
                row = msgspec.structs.asdict(i.status())
                row["instance"] = row.pop("replica")
                # (a key left in would be a field McpInstanceStatus does not declare)
                for key in AGENT_ONLY:
                    row.pop(key, None)
                row.update({
                    "owner": i.owner, "scope": entry.spec.scope,
                    "protocol_version": i.client.version, "tools": len(i.client.tools),
                    "rejected_tools": i.client.rejected_tools, "calls": i.client.calls,
                    "errors": i.client.errors,
                    "in_flight": i.peer.in_flight if i.peer is not None else 0,
                })
                out.append(row)
        return out
