"""The command layer: who calls (`Caller`), what a handler may stream back (`Channel`),
the handler registry, and the one `Dispatcher` every front end calls.

A transport (the control socket, the HTTP API, a cluster peer) turns what arrived into a
`Caller` and a method call on the Dispatcher, and nothing else: decoding the typed params,
the caller's scope, running the handler, the audit row of a mutating call and the mapping
of errors all happen here, once, so that a rule that holds for one front end holds for
all of them. Handlers never see a transport: they get the services, their typed params,
the Caller and a Channel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..methods import REGISTRY, SCOPES, Method, parse_target
from ..supervisor.core import NoSuchAgent
from ..supervisor.events import agent_of
from ..supervisor.names import RESERVED
from ..supervisor.tasks.counters import totals
from ..text import clip, one_line

Ctx = TypeVar("Ctx")
SHARED = "*"  # the owner of an MCP server every tenant's callers see (`shared = true`)


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    """Who asked, as the transport authenticated them: a socket peer's credentials
    (SO_PEERCRED) or a token's name; the tenant whose objects they see, and the scopes
    they hold."""

    via: str  # the transport: "socket", "http", ...
    uid: int = -1
    gid: int = -1
    pid: int = -1
    token: str | None = None  # the name of the token it presented
    tenant: str | None = None  # None: every tenant (an operator)
    scopes: frozenset[str] = SCOPES
    # a glob: the only agents it may see and touch (a token's `--agents`); None: all
    agents: str | None = None
    # for a tenant's caller, bound by the Dispatcher: the tenant an agent (kind "agent")
    # or an MCP server ("server") is of, None when there is none; SHARED for a server
    # every tenant may use
    owner: Callable[[str, str], str | None] | None = None

    @property
    def limited(self) -> bool:
        """Whether the caller sees only some agents (a glob, a tenant)."""
        return self.agents is not None or self.tenant is not None

    def sees(self, name: str) -> bool:
        """Whether an agent of this name exists for this caller: the daemon's own log
        ("corral") tells of every agent, so a caller limited to some never sees it."""
        if self.agents is not None and (name == RESERVED
                                        or not fnmatchcase(name, self.agents)):
            return False
        if self.tenant is None:
            return True
        return self.owner is not None and self.owner("agent", name) == self.tenant

    def sees_server(self, name: str) -> bool:
        """Whether an MCP server of this name exists for this caller: its tenant's, or
        one shared on purpose."""
        if self.tenant is None:
            return True
        owner = self.owner("server", name) if self.owner is not None else None
        return owner == self.tenant or owner == SHARED

    @property
    def who(self) -> str:
        """As revisions and the audit log name the caller."""
        if self.token is not None:
            return f"token {self.token}"
        return f"uid {self.uid} pid {self.pid}"

    def may(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


class Channel(Protocol):
    """What a handler streams to its caller: notifications, sent only while `writable` is
    set (the caller reads); a stream that must not grow the daemon waits for it."""

    @property
    def writable(self) -> asyncio.Event: ...

    def notify(self, method: str, params: Any) -> None: ...


class Discard:
    """The channel of a caller that takes one answer and no stream (a plain HTTP
    request): notifications go nowhere, and it is always writable."""

    def __init__(self) -> None:
        self._writable = asyncio.Event()
        self._writable.set()

    @property
    def writable(self) -> asyncio.Event:
        return self._writable

    def notify(self, method: str, params: Any) -> None:
        pass


Handler = Callable[[Ctx, Any, Caller, Channel], Awaitable[Any]]


class Handlers(Generic[Ctx]):
    """The implementation of each method in corral.methods.REGISTRY."""

    def __init__(self) -> None:
        self.table: dict[str, Handler[Ctx]] = {}

    def implements(self, name: str) -> Callable[[Handler[Ctx]], Handler[Ctx]]:
        if name not in REGISTRY:  # pragma: no cover - a programming error
            raise RuntimeError(f"{name} is not in corral.methods.REGISTRY")

        def register(fn: Handler[Ctx]) -> Handler[Ctx]:
            if name in self.table:  # pragma: no cover - a programming error
                raise RuntimeError(f"{name} implemented twice")
            self.table[name] = fn
            return fn

        return register

    def missing(self) -> list[str]:
        return sorted(set(REGISTRY) - set(self.table))


Audit = Callable[[Caller, str, Any, str], None]


class Dispatcher(Generic[Ctx]):
    """Every front end's one way in: `dispatch(caller, method, params, channel)`.

    A transport may take calls before the services exist (the control socket answers
    while the state database opens): they wait until `serve(context)` is called."""

    def __init__(self, handlers: Handlers[Ctx], audit: Audit,
                 agents: Callable[[Ctx], Iterable[str]] | None = None,
                 owner: Callable[[Ctx, str, str], str | None] | None = None) -> None:
        missing = handlers.missing()
        if missing:  # pragma: no cover - a programming error, caught by the test suite
            raise RuntimeError(f"control methods without implementation: {missing}")
        self.handlers = handlers.table
        self.audit = audit
        self.agents = agents  # the names of the agents there are, for a refusal to name
        # whose an agent or a server is (Caller.owner), for the callers of a tenant
        self.owner = owner
        self._context: asyncio.Future[Ctx] | None = None

    def bind(self, caller: Caller) -> Caller:
        """A tenant's caller, given the way to tell whose each object is (before the
        services exist: nothing is anyone's, so nothing is seen)."""
        if caller.tenant is None or caller.owner is not None:
            return caller
        ready, owner = self._context, self.owner

        def owner_of(kind: str, name: str) -> str | None:
            if owner is None or ready is None or not ready.done():
                return None
            return owner(ready.result(), kind, name)

        return msgspec.structs.replace(caller, owner=owner_of)

    def serve(self, context: Ctx) -> None:
        """From now on, handlers run with `context` (the services)."""
        self._ready().set_result(context)

    def _ready(self) -> asyncio.Future[Ctx]:
        if self._context is None:
            self._context = asyncio.get_running_loop().create_future()
        return self._context

    @staticmethod
    def method(name: str) -> Method:
        spec = REGISTRY.get(name)
        if spec is None:
            raise jsonrpc.method_not_found(name)
        return spec

    def dispatch(self, caller: Caller, name: str, params: Any, channel: Channel
                 ) -> Awaitable[Any]:
        """Check and decode a call at once (an unknown method, params of the wrong shape
        or a caller without the scope raise RpcError before anything runs), then return
        the handler's run to await. `params`: JSON bytes, a msgspec.Raw, a dict, or None."""
        caller = self.bind(caller)
        try:
            spec, typed, rule = self._check(caller, name, params)
        except RpcError as exc:
            if caller.tenant is not None and name in REGISTRY:
                # a tenant's refused calls are audited, reads too: trying another
                # tenant's objects is what isolation is there to record
                self.audit(caller, name, params if isinstance(params, Mapping) else None,
                           f"error: {exc.message}")
            raise
        if rule is not None and rule.channel is not None:
            channel = rule.channel(channel, caller)
        return self._run(spec, typed, caller, channel, rule)

    def check(self, caller: Caller, name: str, params: Any
              ) -> tuple[Method, Any, AgentRule | None]:
        """What `dispatch` checks before anything runs, for a transport that serves a
        call from what it already has (a stream's shared ring): raises RpcError."""
        return self._check(self.bind(caller), name, params)

    def admit(self, caller: Caller, name: str, given: Collection[str] = ()) -> None:
        """What `dispatch` refuses without the params, for a transport that has not read
        them yet (an HTTP body): an unknown method, a caller without the scope (and
        without what the params `given` so far need), a method closed to a limited
        caller. Raises RpcError, audited as `dispatch`'s refusals."""
        caller = self.bind(caller)
        try:
            spec = self.method(name)
            _scope_held(caller, spec)
            for param, other in spec.needs:
                if param in given:
                    _scope_held(caller, REGISTRY[other])
            if caller.limited:
                agent_rule(name, caller)
        except RpcError as exc:
            if caller.tenant is not None and name in REGISTRY:
                self.audit(caller, name, None, f"error: {exc.message}")
            raise

    def _check(self, caller: Caller, name: str, params: Any
               ) -> tuple[Method, Any, AgentRule | None]:
        """`check` of a caller already bound."""
        spec = self.method(name)
        _scope_held(caller, spec)
        typed = decode(params, spec.params)
        for param, other in spec.needs:
            if getattr(typed, param) is not None:
                _scope_held(caller, REGISTRY[other])
        rule: AgentRule | None = None
        if caller.limited:
            rule = agent_rule(spec.name, caller)
            try:
                rule.check(typed, caller)
            except NoSuchAgent as exc:
                raise self._as_seen(exc, caller) from None
        return spec, typed, rule

    def _as_seen(self, exc: NoSuchAgent, caller: Caller) -> NoSuchAgent:
        """A refusal of an unknown agent, for a caller limited to some: the agents it
        names are the caller's own, so that one it may not see is as absent as one that
        does not exist."""
        ready = self._context
        known = (self.agents(ready.result()) if self.agents is not None and ready is not None
                 and ready.done() else None)
        return NoSuchAgent(exc.name, None if known is None else
                           [n for n in known if caller.sees(n)], exc.note)

    async def call(self, caller: Caller, name: str, params: Any = None,
                   channel: Channel | None = None) -> Any:
        return await self.dispatch(caller, name, params, channel or Discard())

    async def _run(self, spec: Method, params: Any, caller: Caller, channel: Channel,
                   rule: AgentRule | None = None) -> Any:
        ready = self._ready()
        context = ready.result() if ready.done() else await asyncio.shield(ready)
        try:
            if rule is not None and rule.owner is not None:
                # the object named (a task) must be of an agent the caller sees, and is
                # looked up before the call acts on it
                look, what, key = rule.owner
                found = await self.handlers[look](context, decode(
                    {key: getattr(params, key)}, REGISTRY[look].params), caller, Discard())
                if not caller.sees(found.agent):
                    raise jsonrpc.not_found(what, getattr(params, key))
            result = await self.handlers[spec.name](context, params, caller, channel)
            if rule is not None and rule.filter is not None:
                result = rule.filter(result, caller)
        except RpcError as exc:
            told = (self._as_seen(exc, caller)
                    if isinstance(exc, NoSuchAgent) and caller.limited else exc)
            if spec.mutating or caller.tenant is not None:
                self.audit(caller, spec.name, params, f"error: {told.message}")
            if told is exc:
                raise
            raise told from None
        if spec.mutating:
            self.audit(caller, spec.name, params, outcome(result))
        return result


def _scope_held(caller: Caller, spec: Method) -> None:
    if not caller.may(spec.scope):
        raise RpcError(jsonrpc.FORBIDDEN, f"forbidden: {spec.name} needs the {spec.scope} "
                                          f"scope, which {caller.who} does not hold")


def decode(params: Any, into: type[msgspec.Struct]) -> Any:
    """Params as any transport has them, decoded into the method's Struct (a transport
    that built the Struct itself, from a query string, passes it as it is)."""
    if type(params) is into:
        return params
    if isinstance(params, Mapping):
        try:
            return msgspec.convert(params, into)
        except msgspec.ValidationError as exc:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"invalid params: {exc}") from None
    if isinstance(params, bytes | bytearray | memoryview):
        params = msgspec.Raw(bytes(params))
    return jsonrpc.decode_params(params, into)


OUTCOME_TEXT = 500  # characters of an isError result's text kept in its audit row


def outcome(result: Any) -> str:
    """How the audit log records a result: an MCP tool result with isError is an error."""
    if isinstance(result, dict) and result.get("isError") is True:
        content = result.get("content")
        first = content[0] if isinstance(content, list) and content else None
        text = first.get("text") if isinstance(first, dict) else None
        # one line, bounded, cut between words: a server's message is often several
        # lines ending in a URL (pydantic's "For further information visit https://…")
        said = f": {clip(one_line(text), OUTCOME_TEXT)}" if isinstance(text, str) else ""
        return f"error: isError result{said}"
    return "ok"


# how an RpcError reads as an HTTP status, for transports that speak HTTP
_HTTP_STATUS = {
    jsonrpc.PARSE_ERROR: 400,
    jsonrpc.INVALID_REQUEST: 400,
    jsonrpc.INVALID_PARAMS: 400,
    jsonrpc.METHOD_NOT_FOUND: 404,
    jsonrpc.UNAUTHORIZED: 401,
    jsonrpc.FORBIDDEN: 403,
    jsonrpc.NOT_FOUND: 404,
    jsonrpc.CONFLICT: 409,
    jsonrpc.REFUSED: 429,
    # a fixed quota is no rate: 403 as Kubernetes' ResourceQuota answers, never a 429
    # whose Retry-After a client would honour for ever (decision 147)
    jsonrpc.QUOTA_EXCEEDED: 403,
    jsonrpc.UNAVAILABLE: 503,
    jsonrpc.TOOL_NOT_ALLOWED: 403,
    jsonrpc.REQUEST_TIMEOUT: 504,
    jsonrpc.MESSAGE_TOO_LARGE: 413,
}


def http_status(code: int) -> int:
    return _HTTP_STATUS.get(code, 500)


def scopes_of(names: Iterable[str]) -> frozenset[str]:
    """Scope names checked against the known ones; raises ValueError naming the unknown."""
    wanted = frozenset(names)
    unknown = sorted(wanted - SCOPES)
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]} (known: {', '.join(sorted(SCOPES))})")
    return wanted


# -- callers limited to some agents ----------------------------------------------------------
# A token may be limited to agents whose names match a glob (Caller.agents). It cannot see
# or touch the others: a call naming one answers as if the agent did not exist, listings
# leave them out. How each method names agents is said once, here, for every transport; a
# method not in the table is refused to such a caller, so a new method stays closed to it
# until someone says how it names agents.


def _glob_refusal(caller: Caller, what: str) -> RpcError:
    if caller.agents is None:
        return RpcError(jsonrpc.FORBIDDEN, f"forbidden: {caller.who} is a caller of tenant "
                                           f"{caller.tenant}: {what}")
    return RpcError(jsonrpc.FORBIDDEN, f"forbidden: {caller.who} is limited to agents "
                                       f"matching {caller.agents}: {what}")


@dataclass(frozen=True)
class AgentRule:
    check: Callable[[Any, Caller], None]
    # what the answer holds of agents the caller does not see, taken out
    filter: Callable[[Any, Caller], Any] | None = None
    # a stream's notifications, filtered the same way
    channel: Callable[[Channel, Caller], Channel] | None = None
    # (method to look the object up, what it is called, the param naming it): the object
    # must belong to an agent the caller sees
    owner: tuple[str, str, str] | None = None
    # what the answer tells of a tenant sums every agent of it (a tenant's use): closed
    # to a caller limited to an agent glob, which sees some of them only (decision 143)
    whole_tenants: bool = False


def _nothing(params: Any, caller: Caller) -> None:
    pass


def _one(field: str) -> Callable[[Any, Caller], None]:
    def check(params: Any, caller: Caller) -> None:
        name = getattr(params, field)
        if name is not None and not caller.sees(name):
            raise NoSuchAgent(name, None)  # worded for the caller: Dispatcher._as_seen

    return check


def _targets(field: str, *, all_field: bool = False) -> Callable[[Any, Caller], None]:
    def check(params: Any, caller: Caller) -> None:
        if all_field and params.all:
            raise _glob_refusal(caller, "name the agents rather than all")
        for target in getattr(params, field):
            try:
                name, _ = parse_target(target)
            except ValueError:
                continue  # the handler says what is wrong with it
            if not caller.sees(name):
                raise NoSuchAgent(name, None)

    return check


def _adding(params: Any, caller: Caller) -> None:
    if params.for_cluster:  # (a rule is asked of limited callers only)
        # the cluster's agents run on every node, past any one node's tenant quotas
        named = [n for n, t in params.agents.items()
                 if isinstance(t, dict) and t.get("placement") == "cluster"]
        raise _glob_refusal(caller, "may not add cluster agents" + (
            f' (agents.{named[0]}.placement: "cluster")' if named and not params.cluster
            else ""))
    for name, table in params.agents.items():
        if caller.agents is not None and (name == RESERVED
                                          or not fnmatchcase(name, caller.agents)):
            raise _glob_refusal(caller, f"may not add {name}")
        if caller.tenant is not None:
            # a tenant's caller adds agents of its tenant: the table says so, or is made to
            wanted = table.get("tenant", caller.tenant) if isinstance(table, dict) else None
            if wanted != caller.tenant:
                raise _glob_refusal(caller, f"may not add {name} to tenant {wanted}")
            if isinstance(table, dict):
                table["tenant"] = caller.tenant


def _server(field: str) -> Callable[[Any, Caller], None]:
    """An MCP server named by a param: one the caller does not see is as absent as one
    that does not exist (the pool's own words)."""
    def check(params: Any, caller: Caller) -> None:
        name = getattr(params, field)
        if name is not None and not caller.sees_server(name):
            raise jsonrpc.not_found("MCP server", name)

    return check


def _tool(what: str) -> Callable[[Any, Caller], None]:
    """A SERVER__NAME param: the pool's words for a server there is not."""
    def check(params: Any, caller: Caller) -> None:
        server, sep, _ = params.name.partition("__")
        if sep and not caller.sees_server(server):
            raise RpcError(jsonrpc.NOT_FOUND, f"no such {what}: {params.name} (no MCP server "
                                              f"{server})")

    return check


def _reading(params: Any, caller: Caller) -> None:
    if params.server is None and caller.tenant is not None:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"resource {params.uri}: name the server")
    _server("server")(params, caller)


def _named(field: str, what: str) -> Callable[[Any, Caller], None]:
    """What a limited caller must name (a whole-fleet view sums agents it does not see)."""
    def check(params: Any, caller: Caller) -> None:
        if getattr(params, field) is None:
            raise _glob_refusal(caller, f"name {what}")

    return check


def _own_tenant(params: Any, caller: Caller) -> None:
    """A tenant's caller is in its own tenant's part of the event bus: another tenant
    answers as one that does not exist."""
    if caller.tenant is not None and params.tenant not in (None, caller.tenant):
        raise jsonrpc.not_found("tenant", params.tenant)


def _gateway_client(params: Any, caller: Caller) -> None:
    if caller.tenant is not None and (params.agent is None or params.token is not None):
        raise _glob_refusal(caller, "a gateway client of its own is one of its agents "
                                    "(agent, not token)")
    _one("agent")(params, caller)


def _both(*checks: Callable[[Any, Caller], None]) -> Callable[[Any, Caller], None]:
    def check(params: Any, caller: Caller) -> None:
        for one in checks:
            one(params, caller)

    return check


def _servers_filter(*lists: str) -> Callable[[Any, Caller], Any]:
    """Listings of the pool: items, `unavailable` and `failed` of servers the caller does
    not see taken out (`mcp_servers` rows by their name)."""
    def seen(result: Any, caller: Caller) -> Any:
        if caller.tenant is None:
            return result
        fields: dict[str, Any] = {}
        for key in lists:
            rows = _get(result, key)
            # a pool's item names its `server`; an instance's status row is the server's
            fields[key] = [r for r in rows if caller.sees_server(
                r.get("server", r.get("name")) if isinstance(r, Mapping) else r.name)]
        for key in ("unavailable", "failed"):
            if _has(result, key):
                value = _get(result, key)
                fields[key] = ({k: v for k, v in value.items() if caller.sees_server(k)}
                               if isinstance(value, Mapping)
                               else [n for n in value if caller.sees_server(n)])
        return _replace(result, **fields)

    return seen


def _has(obj: Any, key: str) -> bool:
    return key in obj if isinstance(obj, Mapping) else hasattr(obj, key)


def _replace(result: Any, **fields: Any) -> Any:
    if isinstance(result, msgspec.Struct):
        return msgspec.structs.replace(result, **fields)
    return {**result, **fields}


def _get(obj: Any, key: str) -> Any:
    return obj[key] if isinstance(obj, Mapping) else getattr(obj, key)


def _seen_keys(table: Mapping[str, Any], caller: Caller) -> dict[str, Any]:
    return {k: v for k, v in table.items() if caller.sees(k)}


def _status_filter(result: Any, caller: Caller) -> Any:
    return _servers_filter("mcp_servers")(_replace(
        result, agents=[a for a in result.agents if caller.sees(a.name)],
        tasks=_seen_keys(result.tasks, caller), elastic=_seen_keys(result.elastic, caller),
        cluster_slots=_seen_keys(result.cluster_slots, caller)), caller)


def _stats_filter(result: Any, caller: Caller) -> Any:
    tasks = result.tasks
    # the gateway's clients and tools, and log files, name agents it does not see
    fields: dict[str, Any] = {
        "gateway": _gateway_filter(result.gateway, caller),
        "supervisor": _replace(result.supervisor, log_files_failing={})}
    if caller.tenant is not None:
        # the bus's followers: another tenant's say what it follows
        fields["events"] = {**result.events, "followers": [
            f for f in result.events["followers"] if f.get("tenant") == caller.tenant]}
    if isinstance(result.cluster, Mapping):
        fields["cluster"] = _cluster_filter(result.cluster, caller)
    seen = _seen_keys(_get(tasks, "agents"), caller)
    # the total of its agents' tasks, not every tenant's (the dashboard's fleet chart)
    return _replace(result, agents=_seen_keys(result.agents, caller),
                    tasks=_replace(tasks, agents=seen, total=totals(seen.values())),
                    **fields)


def _cluster_filter(cluster: Mapping[str, Any], caller: Caller) -> dict[str, Any]:
    """A cluster node's figures (ClusterNode.status): the cluster agents placed here and
    those whose file table differs from the cluster's are named, the rest are this
    node's counters, left as the supervisor's are."""
    placement = cluster["agents"]
    return {**cluster, "agents": {**placement, **{
        key: _seen_keys(placement[key], caller) for key in ("placed", "differs")}}}


def _gateway_filter(stats: Any, caller: Caller) -> Any:
    """Gateway figures a tenant's caller may see: its agents' clients (`agent:NAME`, a
    replica's `NAME#N`) and the tools of servers it sees."""
    if not caller.limited:
        return stats

    def client_seen(name: str) -> bool:
        agent = name.removeprefix("agent:") if name.startswith("agent:") else (
            name.partition("#")[0] if "#" in name else None)
        return agent is not None and caller.sees(agent)

    clients = _get(stats, "clients")
    seen = _replace(stats, clients={k: v for k, v in clients.items() if client_seen(k)})
    if caller.tenant is None:
        return seen  # limited to an agent glob: every server is there for it
    tools = _get(stats, "tools")
    return _replace(seen, tools={k: v for k, v in tools.items()
                                 if caller.sees_server(k.partition("__")[0])},
                    http=None)


def _tasks_filter(result: Any, caller: Caller) -> Any:
    return _replace(result, tasks=[t for t in result.tasks if caller.sees(t.agent)])


def _task_filter(result: Any, caller: Caller) -> Any:
    if not caller.sees(result.agent):
        raise jsonrpc.not_found("task", result.task_id)
    return result


def _lines_filter(result: Any, caller: Caller) -> Any:
    return _replace(result, lines=[ln for ln in _get(result, "lines") if caller.sees(ln.source)])


def _new_lines(params: Any, caller: Caller) -> Any:
    seen = _lines_filter(params, caller)
    return seen if _get(seen, "lines") else None


class _Seen:
    """A stream's channel that passes on only what the caller sees: each notification of
    a method in `filters` through its filter (None: not sent at all)."""

    def __init__(self, inner: Channel, caller: Caller,
                 filters: Mapping[str, Callable[[Any, Caller], Any]]) -> None:
        self.inner = inner
        self.caller = caller
        self.filters = filters

    @property
    def writable(self) -> asyncio.Event:
        return self.inner.writable

    def notify(self, method: str, params: Any) -> None:
        seen = self.filters.get(method)
        if seen is not None:
            params = seen(params, self.caller)
            if params is None:
                return
        self.inner.notify(method, params)


def _seen(filters: Mapping[str, Callable[[Any, Caller], Any]]
          ) -> Callable[[Channel, Caller], Channel]:
    return lambda inner, caller: _Seen(inner, caller, filters)


def _event_seen(params: Any, caller: Caller) -> Any:
    """An event of an agent the caller does not see (its worker's, or corral's own about
    it) is not sent; a caller's event is no agent's."""
    if caller.agents is None:
        return params  # a tenant's caller: the bus sends it its tenant's alone
    agent = agent_of(bytes(params) if isinstance(params, msgspec.Raw)
                     else msgspec.json.encode(params))
    return params if agent is None or caller.sees(agent) else None


def _of_agent(params: Any, caller: Caller) -> Any:
    return params if caller.sees(params.agent) else None


def _rows_filter(field: str) -> Callable[[Any, Caller], Any]:
    def seen(params: Any, caller: Caller) -> Any:
        return _replace(params, replicas=[r for r in params.replicas
                                          if caller.sees(getattr(r, field))])

    return seen


_AGENT_PARAM = _one("agent")
AGENT_RULES: dict[str, AgentRule] = {
    "daemon.info": AgentRule(_nothing),
    "agents.status": AgentRule(_targets("names"), filter=_status_filter),
    "agents.start": AgentRule(_targets("names", all_field=True)),
    "agents.stop": AgentRule(_targets("names", all_field=True)),
    "agents.restart": AgentRule(_targets("names", all_field=True)),
    "agents.signal": AgentRule(_targets("names", all_field=True)),
    "agents.describe": AgentRule(_one("name")),
    "agents.history": AgentRule(_one("name")),
    "agents.rollback": AgentRule(_one("name")),
    "agents.update": AgentRule(_one("name")),
    "agents.add": AgentRule(_adding),
    "agents.remove": AgentRule(_targets("names")),
    "agents.scale": AgentRule(_one("name")),
    "agents.pause": AgentRule(_one("name")),
    "agents.resume": AgentRule(_one("name")),
    "logs.tail": AgentRule(_targets("names"), filter=_lines_filter),
    "logs.follow": AgentRule(_targets("names"), channel=_seen({"logs.lines": _new_lines})),
    "stats.get": AgentRule(_nothing, filter=_stats_filter),
    "stats.history": AgentRule(_both(_named("agent", "an agent"), _AGENT_PARAM)),
    "stats.watch": AgentRule(_nothing, channel=_seen({"stats.sample": _stats_filter})),
    "agents.watch": AgentRule(_targets("names"), channel=_seen({
        "agents.snapshot": _rows_filter("name"), "agents.sample": _rows_filter("agent"),
        "agents.transition": _of_agent, "agents.roster": _of_agent,
        "agents.health": _of_agent})),
    "tasks.run": AgentRule(_AGENT_PARAM),
    "tasks.submit": AgentRule(_AGENT_PARAM),
    "tasks.get": AgentRule(_nothing, filter=_task_filter),
    "tasks.list": AgentRule(_AGENT_PARAM, filter=_tasks_filter),
    "tasks.cancel": AgentRule(_nothing, owner=("tasks.get", "task", "task_id")),
    "events.publish": AgentRule(_own_tenant),
    "events.follow": AgentRule(_own_tenant, channel=_seen({"events.event": _event_seen})),
    "tools.list": AgentRule(_both(_AGENT_PARAM, _server("server")),
                            filter=_servers_filter("tools")),
    "tools.call": AgentRule(_tool("tool")),
    "mcp.status": AgentRule(_nothing, filter=lambda r, c: _replace(
        _servers_filter("mcp_servers")(r, c), gateway=_gateway_filter(
            _get(r, "gateway"), c))),
    "mcp.start": AgentRule(_server("name")),
    "mcp.stop": AgentRule(_server("name")),
    "mcp.restart": AgentRule(_server("name")),
    "resources.list": AgentRule(_both(_AGENT_PARAM, _server("server")),
                                filter=_servers_filter("resources", "resource_templates")),
    "resources.read": AgentRule(_reading),
    "prompts.list": AgentRule(_both(_AGENT_PARAM, _server("server")),
                              filter=_servers_filter("prompts")),
    "prompts.get": AgentRule(_tool("prompt")),
    # a tenant's own view (its callers' only tenants method); the only limited callers
    # let through whole_tenants are a tenant's
    "tenants.list": AgentRule(_nothing, filter=lambda r, c: _replace(
        r, tenants=[t for t in r.tenants if t.name == c.tenant]), whole_tenants=True),
    "gateway.list": AgentRule(_gateway_client),
    "gateway.call": AgentRule(_gateway_client),
    "gateway.watch": AgentRule(_nothing),
    "gateway.status": AgentRule(_nothing, filter=_gateway_filter),
    # a dashboard link for the caller's own tenant, agents and scopes (ui.Sessions.issue)
    "ui.login": AgentRule(_nothing),
    # packages.deploy reads a path of the daemon's host: for callers that see every agent
    "packages.releases": AgentRule(_one("name")),
}


def agent_rule(name: str, caller: Caller) -> AgentRule:
    rule = AGENT_RULES.get(name)
    if rule is None:
        raise _glob_refusal(caller, f"{name} is for callers that see every agent")
    if rule.whole_tenants and caller.agents is not None:
        raise _glob_refusal(caller, f"{name} is for callers that see whole tenants (a "
                                    f"tenant's use counts agents outside {caller.agents})")
    return rule


def open_to(caller: Caller, name: str) -> bool:
    """Whether a method may be called by this caller at all (some params may still be
    refused): what a dashboard session is offered."""
    if not caller.limited:
        return True
    try:
        agent_rule(name, caller)
    except RpcError:
        return False
    return True
