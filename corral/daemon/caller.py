"""Who calls the command layer (`Caller`: as the transport authenticated them, with the
tenant, agents and scopes they are limited to) and what a handler streams back to them
(`Channel`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from fnmatch import fnmatchcase
from typing import Any, Generic, NamedTuple, Protocol, TypeVar, overload

import msgspec

from ..methods import SCOPES
from ..supervisor.config import DEFAULT_TENANT
from ..supervisor.names import RESERVED

SHARED = "*"  # the owner of an MCP server every tenant's callers see (`shared = true`)
# the transport of an A2A caller (a2a/routes.py): one with a token too (else "http", as on
# REST); one that sent none, at an `[a2a] anonymous` agent, is anonymous
A2A_VIA = "a2a"
T = TypeVar("T")


class once(Generic[T]):  # (a decorator, named as `property` is)
    """A Caller's value of its fields, made at its first read and kept in the instance's
    `__dict__`, where later reads find it as an attribute: a call reads who its caller is
    at each link, and a property made it again each time. (Not functools' cached_property,
    which takes a lock at each first read; a frozen Struct's fields never change, and
    `msgspec.structs.replace` makes an instance with an empty `__dict__`.)"""

    def __init__(self, make: Callable[[Any], T]) -> None:
        self.make = make
        self.name = make.__name__

    @overload
    def __get__(self, instance: None, owner: type) -> once[T]: ...

    @overload
    def __get__(self, instance: object, owner: type) -> T: ...

    def __get__(self, instance: object, owner: type) -> T | once[T]:
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.make(instance)
        return value


class Caller(msgspec.Struct, frozen=True, kw_only=True, dict=True):
    """Who asked, as the transport authenticated them, with their tenant and scopes (its
    values of them, `who` and the rest, each made once: `once`)."""

    via: str  # the transport: "socket", "http", ...
    uid: int = -1
    gid: int = -1
    pid: int = -1
    token: str | None = None  # the name of the token it presented
    # when that token was made: with its name, the token's identity (DESIGN 20), which a
    # later token of the name never shares
    since: float | None = None
    # a caller inside the daemon, as the audit log names it ("signal SIGHUP")
    name: str | None = None
    tenant: str | None = None  # None: every tenant (an operator)
    scopes: frozenset[str] = SCOPES
    # a glob: the only agents it may see and touch (a token's `--agents`); None: all
    agents: str | None = None
    # for a limited caller, bound by the Dispatcher: the tenant an agent (kind "agent") or
    # an MCP server ("server") is of, None when there is none
    owner: Callable[[str, str], str | None] | None = None

    @once
    def limited(self) -> bool:
        return self.agents is not None or self.tenant is not None

    @once
    def user(self) -> str:
        """The user behind a call (not the one process: `who`)."""
        return f"token {self.token}" if self.token is not None else f"uid {self.uid}"

    def sees(self, name: str) -> bool:
        """Whether an agent of this name exists for this caller: the daemon's own log
        ("corral") tells of every agent, so a caller limited to some never sees it."""
        # (a name the pattern is, letter for letter, is one it matches: an agent's name
        # holds no glob character, names.NAME_RE; the anonymous caller's every message)
        agents = self.agents
        if agents is not None and (name == RESERVED or (
                name != agents and not fnmatchcase(name, agents))):
            return False
        if self.tenant is None:
            # a glob names the operator's agents alone: an agent's name is its tenant's
            # caller's to choose (a tenant's web-evil is no web*)
            return self.agents is None or (self.owner is not None and self.owner(
                "agent", name) in (None, DEFAULT_TENANT))
        return self.owner is not None and self.owner("agent", name) == self.tenant

    def sees_record(self, agent: str, tenant: str | None) -> bool:
        """Whether a record made for `agent` while it was of `tenant` is this caller's: a
        tenant that takes a freed name never sees what its earlier holder left."""
        if self.agents is not None and (agent == RESERVED
                                        or not fnmatchcase(agent, self.agents)):
            return False
        if self.tenant is None:  # (a glob: the operator's records alone, as `sees`)
            return self.agents is None or tenant in (None, DEFAULT_TENANT)
        return tenant is not None and tenant == self.tenant

    def owns(self, agents: Collection[str], tenant: str | None) -> bool:
        """Whether a record of `tenant` naming `agents` is this limited caller's: every
        agent of it is its to see; one of no agent known is the operator's alone."""
        return bool(agents) and all(self.sees_record(a, tenant) for a in agents)

    def sees_server(self, name: str) -> bool:
        """Whether an MCP server of this name exists for this caller."""
        if self.tenant is None:
            return True
        owner = self.owner("server", name) if self.owner is not None else None
        return owner == self.tenant or owner == SHARED

    @once
    def who(self) -> str:
        if self.name is not None:
            return self.name
        if self.token is not None:
            return f"token {self.token}"
        return f"uid {self.uid} pid {self.pid}"

    @once
    def anonymous(self) -> bool:
        """No one: a caller of an `[a2a] anonymous` agent that sent no token (its links:
        handing.py, deciders.py, records.py)."""
        return self.via == A2A_VIA and self.token is None

    @once
    def peer(self) -> bool:
        """A socket peer: its uid and pid say who it is (an audit row names no one)."""
        return self.token is None and self.name is None

    @once
    def holder(self) -> str:
        """Whose an idempotency key it sends is: who it is, a token by its identity (a
        later token of its name is another holder), a socket peer by its uid (its retry
        is another process)."""
        if self.peer:
            return f"uid {self.uid}"
        return self.who if self.since is None else f"{self.who} of {self.since!r}"

    def may(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


# the daemon's own follower of the bus, filling the HTTP event stream's ring: no subscriber
RING_CALLER = Caller(via="http", token="corral-sse")


class Channel(Protocol):
    """What a handler streams to its caller: notifications, sent only while `writable` is
    set (the caller reads); a stream that must not grow the daemon waits for it."""

    @property
    def writable(self) -> asyncio.Event: ...

    def notify(self, method: str, params: Any) -> None: ...


class GatewayCaller(Protocol):
    """A gateway client as the gateway's parts read it (gatewayaccess.Identity, whose
    module imports theirs)."""

    name: str
    tenant: str | None
    owner: str | None
    allow: list[str] | None
    server: str | None  # the one server it sees as itself
    agents: str | None
    scopes: frozenset[str] | None
    max_concurrent: int
    rate_per_minute: int
    operator: bool
    replica: Any  # an agent replica's token: the replica
    since: float | None  # an API token's: when it was made (Caller.since)


class ClientEnded(NamedTuple):
    """A client's identity ended or changed (a token revoked; a tokens file's client that
    a reload removed, or changed: its secret, its tools, its limits): its sessions end,
    their streams too, for they keep the identity they began with (decision 1831)."""

    name: str
    since: float | None = None


class AlwaysWritable:
    """A Channel that never holds its stream back (what it sends to is bounded)."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()


class Discard(AlwaysWritable):
    """The channel of a caller that takes one answer and no stream."""

    def notify(self, method: str, params: Any) -> None:
        pass
