"""The gateway's daemon side: who a client is, what it may use, and what it did.

Every gateway call, from the HTTP gateway's sites (`corral mcp serve`'s, on the local
socket, among them), goes through `GatewayService.call` once: the client's allowlist, its limits,
accounting and the audit log. Who the clients are: docs/gateway.md.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict

import msgspec

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..mcp import toolsearch
from ..mcp.client import MAX_INPUT_ROUNDS, META_CAPABILITIES
from ..mcp.logrelay import LogRelay
from ..mcp.relay import InputRelay, asks_input
from ..mcp.server import needs_tasks
from ..supervisor.config import DEFAULT_TENANT, ConfigError, GatewaySettings
from ..supervisor.lifecycle import serving_changed
from ..supervisor.policy import PolicyGuard
from ..supervisor.quotas import visible_allow
from ..supervisor.runas import tenant_of
from ..supervisor.stream import Roster, Stream, Subscription
from ..supervisor.tasks.call import MCP, MCP_AGENTS, MCP_SERVER, Call, DoorWire, GatewayClient
from ..supervisor.tasks.personwait import PersonWait
from ..text import plural
from ..tracecontext import CURRENT, ClientSpan, Parent, meta, parse_or_none
from .api import Auditor, Dispatcher
from .attribution import AttemptMark, Attribution
from .audit import failure_of, gateway_call, outcome_of
from .caller import Caller, ClientEnded
from .gatewaylimits import CallCounter, Limiter
from .gatewayskills import METHODS as SKILL_METHODS
from .gatewayskills import GatewaySkills, is_skill, pooled
from .mcptasks import (
    AGENTS_VIEW,
    AgentTools,
    Follows,
    GatewayTask,
    TaskHandles,
    agents_called,
    call_params,
    key_meta,
    trace_meta,
)
from .ownskills import OwnSkills
from .relayseal import Holder, SealedState, StateSeal, answered
from .tokendigests import TokenDigests, hash_token
from .tokensfile import OPERATOR, TokenEntry, load_tokens

if TYPE_CHECKING:
    from ..supervisor.agents import Agents
    from ..supervisor.process_replica import ProcessReplica, ReplicaExit, Transition
    from ..supervisor.tasks import TaskManager
    from ..supervisor.tasks.model import Task
    from ..supervisor.tools import Tools
    from ..supervisor.tracing import Tracer
    from .tokens import Token, TokenRevoked


# resources one gateway session may subscribe to at once (each may hold a listen stream)
MAX_SUBSCRIPTIONS = 64
# the tasks extension's requests of a task already made (a table, not one made a request)
_HANDLED = {"tasks/get": TaskHandles.get, "tasks/cancel": TaskHandles.cancel,
            "tasks/update": TaskHandles.update}


def _expands(template: Any, uri: str) -> bool:
    """Whether `uri` expands an RFC 6570 template (an {expression}: one or more characters)."""
    if not isinstance(template, str) or "{" not in template:
        return False
    parts = re.split(r"\{[^}]*\}", template)
    return re.fullmatch(".+".join(re.escape(p) for p in parts), uri) is not None


class _Limits(TypedDict):
    max_concurrent: int
    rate_per_minute: int
    max_sessions: int


class Identity(msgspec.Struct, kw_only=True):
    """A gateway client: its name, allowlist (None: everything), owner and limits."""

    name: str
    allow: list[str] | None
    owner: str | None
    max_concurrent: int
    rate_per_minute: int
    max_sessions: int  # its HTTP sessions at once (daemon/http/mcpsessions.py)
    # judged at each call: an allowlist made when it started may predate a server
    # another tenant added since
    tenant: str | None = None
    # the one server it sees as itself (at /mcp/NAME); None: every server's
    server: str | None = None
    # an agent replica's token: the replica, and the attempt its address names, if any
    replica: Any = None
    mark: AttemptMark | None = None
    # an HTTP API token's agent glob and scopes, meaning here what they mean at the API;
    # a client of no tenant is the operator only when `operator` says so
    agents: str | None = None
    scopes: frozenset[str] | None = None
    operator: bool = False
    # the client process's uid and pid, where its socket says (the local socket's)
    who: tuple[int, int] = (-1, -1)
    # the agent `corral mcp serve --agent` serves as, whose policy rules judge its calls
    as_agent: str = ""
    since: float | None = None  # an API token's: when it was made (Caller.since)
    until: float | None = None  # an API token's: when it expires (its sessions end then)


class _Slot(msgspec.Struct):
    """One of a client's slots, held from its enter to its exit (a class, not a
    generator's context manager: the model gateway takes one a call)."""

    limiter: Limiter
    ident: Identity
    rated: bool = False

    def __enter__(self) -> None:
        self.limiter.admit(self.ident, self.rated)

    def __exit__(self, *exc: object) -> None:
        self.limiter.in_flight -= 1


class GatewayChanged(NamedTuple):
    """What the gateway offers changed: these lists, once per loop turn however many."""

    kinds: list[str]


class GatewayService:
    def __init__(self, agents: Agents, tools: Tools, stream: Stream, audit: Auditor,
                 tasks: TaskManager, calls: Dispatcher[Any] | None = None,
                 tracer: Tracer | None = None, guard: PolicyGuard | None = None) -> None:
        self.agents = agents
        self.guard = guard  # the model gateway's (a replica's tool calls pass the chain's)
        self.stream = stream  # GatewayChanged goes on it
        self.tools = tools
        self.audit = audit
        self.settings = GatewaySettings()
        self._anonymous: tuple[GatewaySettings | None, Identity | None] = (None, None)
        self.tokens: dict[str, tuple[str, TokenEntry]] = {}
        # token hash -> its replica (its identity made at each use, with today's servers)
        self.replica_tokens: dict[str, ProcessReplica] = {}
        # a replica -> its token's hash, by the replica itself: a rollout starts a new
        # replica of the label while the old one still drains, each its own token
        self._replica_hash: dict[ProcessReplica, str] = {}
        self.digests = TokenDigests()  # a token's hash, once (not once a request)
        # a replica's model-gateway identity by its token's hash, with the settings and
        # spec it was made of (made again when either is another)
        self._model_clients: dict[str, tuple[GatewaySettings, Any, Identity]] = {}
        self.url: str | None = None  # the HTTP gateway's, for agents' environment
        self.socket_path: str | None = None
        self.by_client: defaultdict[str, CallCounter] = defaultdict(CallCounter)
        self.by_tool: defaultdict[str, CallCounter] = defaultdict(CallCounter)
        self.limiters: defaultdict[str, Limiter] = defaultdict(Limiter)
        self._pending: set[str] = set()
        self._flush: asyncio.Handle | None = None
        # the HTTP API's tokens, once the state database that keeps them is open
        # (open_tokens): one holding `mcp:call` (or `admin`) opens /mcp too
        self.api_tokens: Callable[[str], Token | None] | None = None
        self.tracer = tracer
        # the tasks extension; an agent as a tool is a task submitted through `calls`
        self.handles = TaskHandles(lambda: self.settings)
        self.agent_tools = AgentTools(calls, lambda: list(agents.values()), self._sees_agent)
        # a replica's call of an attempt is its step
        self.attribution = Attribution(tasks.active)
        self.chain = tasks.worker.chain  # every replica's call passes it
        tasks.worker.agents_wire = DoorWire(made=self._linked_agent_call)
        stream.subscribe(self._roster, Roster)
        self.attributed = 0  # replicas' calls made as a task's step, and made as none's
        self.unattributed = 0
        self.seal = StateSeal()  # the states of input requests relayed to clients
        self.own_skills: OwnSkills | None = None  # [gateway] skills_dir, as last loaded
        self.skills = GatewaySkills(tools, self._tenant_sees, lambda: self.own_skills,
                                    self._skill_read, self._sees_skill)

    # -- configuration --------------------------------------------------------------------
    def open_tokens(self, authenticate: Callable[[str], Token | None]) -> None:
        from .tokens import TokenRevoked

        self.api_tokens = authenticate
        self.stream.subscribe(self._revoked, TokenRevoked)

    def _revoked(self, e: TokenRevoked) -> None:
        """What a revoked token held at the gateway ends: its sessions, and its per-agent
        instances, whose owner no later token is (decision 1831)."""
        self.stream.emit(ClientEnded(f"token {e.token.name}", e.token.created))
        self.tools.forget(_owner_of(e.token.name, e.token.created).__eq__, "its token revoked")

    def configure(self, settings: GatewaySettings, base: Path, teams: Iterable[str] = ()
                  ) -> list[str]:
        """Apply [gateway] (at start and on reload: rotating a token is an edit and a
        reload). What changed, in words; raises ConfigError, changing nothing. `teams`:
        those added at run time (the config's are its loader's to judge)."""
        tokens: dict[str, tuple[str, TokenEntry]] = {}
        if settings.tokens_file:
            path = Path(settings.tokens_file)
            tokens = load_tokens(path if path.is_absolute() else base / path)
        own = OwnSkills.load(base / settings.skills_dir) if settings.skills_dir else None
        if own is not None:  # (an agent the config names is its loader's to refuse)
            from ..supervisor.configload import skill_twin

            skills = [s.name for s in own.skills.values()]
            twin = skill_twin((a.name for a in self.agents.values()), skills) \
                or skill_twin(teams, skills, "team")
            if twin is not None:
                raise ConfigError(twin)
        said = [f"{key} {old!r} -> {new!r}" for key, old, new in (
            (k, getattr(self.settings, k), getattr(settings, k))
            for k in settings.__struct_fields__) if old != new]
        before = {name: (digest, entry) for digest, (name, entry) in self.tokens.items()}
        after = {name: (digest, entry) for digest, (name, entry) in tokens.items()}
        said += [f"client {n} added" for n in sorted(set(after) - set(before))]
        said += [f"client {n} removed" for n in sorted(set(before) - set(after))]
        changed = [n for n in sorted(set(before) & set(after)) if before[n] != after[n]]
        said += [f"client {n} changed" for n in changed]
        for gone in set(self.tokens) - set(tokens):
            self.digests.forget(gone)
        self.settings = settings
        self.tokens = tokens
        for name in [*changed, *(set(before) - set(after))]:
            self.stream.emit(ClientEnded(name))
        if (own.entries() if own else []) != (self.own_skills.entries()
                                             if self.own_skills else []):
            # their SKILL.md files are in resources/list (the extension says no more)
            said.append("skills_dir: its skills changed")
            self.changed(["resources"])
        self.own_skills = own
        return said

    # -- identities -----------------------------------------------------------------------
    def _limits(self, entry: TokenEntry | None = None) -> _Limits:
        s = self.settings
        return {"max_concurrent": (entry.max_concurrent if entry and entry.max_concurrent
                                   else s.max_concurrent),
                "rate_per_minute": (entry.rate_per_minute if entry and
                                    entry.rate_per_minute is not None else s.rate_per_minute),
                "max_sessions": (entry.max_sessions if entry and entry.max_sessions
                                 else s.max_sessions_per_client)}

    def identify(self, *, agent: str | None = None, token: str | None = None) -> Identity:
        """Who a client is; an unknown token or agent is refused."""
        if token is not None:
            ident = self.by_token(token)
            if ident is None:
                raise RpcError(jsonrpc.UNAUTHORIZED, "unauthorized: unknown gateway token")
            return ident
        if agent is not None:
            spec = self.agents.agent(agent).spec  # NOT_FOUND for an unknown agent
            return Identity(name=f"agent:{agent}", allow=self.tools.allowlist(spec),
                            owner=f"{agent}#0", tenant=spec.tenant, as_agent=agent,
                            **self._limits())
        return Identity(name=OPERATOR, allow=None, owner="corral-cli", operator=True,
                        **self._limits())

    def _tenant_sees(self, ident: Identity, tool: str) -> bool:
        """Whether the server of `tool` is the client's tenant's, or shared. A client of
        no tenant is the default tenant's unless it is the operator, as at /mcp/corral."""
        if ident.operator:
            return True
        tenant = ident.tenant if ident.tenant is not None else DEFAULT_TENANT
        server, sep, _ = tool.partition("__")
        entry = self.tools.servers.get(server)
        if entry is None:
            # a server that is not there is judged here as one not seen, not passed on to
            # the rules: a rule matching both names would answer the two apart (the
            # agents' and the operator's skills are the server corral's, never the pool's)
            return not sep or server == AGENTS_VIEW
        return entry.spec.shared or entry.spec.tenant == tenant

    def _server_seen(self, ident: Identity) -> Callable[[str], bool]:
        """Whether the client's tenant sees a server now (one it does not, none there is:
        decision 1694)."""
        return lambda server: self._tenant_sees(ident, f"{server}__")

    def tenant_sessions(self, ident: Identity) -> int:
        """The HTTP sessions the client's tenant's clients may hold together (0: no bound)."""
        if ident.tenant is None:
            return 0
        return self.agents.tenancy.spec(ident.tenant).max_gateway_sessions

    def anonymous(self) -> Identity | None:
        """Who a request without a token is, when [gateway] anonymous_tools allows it
        (made once per configuration, not a request: nothing changes one)."""
        s, allow = self.settings, self.settings.anonymous_tools
        if self._anonymous[0] is not s:
            self._anonymous = (s, None if allow is None else Identity(
                name="anonymous", allow=list(allow), owner="gateway:anonymous",
                **self._limits()))
        return self._anonymous[1]

    def replica_client(self, token: str) -> Identity | None:
        """The agent replica whose token this is, as a client of the model gateway (no
        tools: its allowlist is by_token's to make, at /mcp)."""
        digest = self.digests.of(token)
        kept = self._model_clients.get(digest)
        if kept is not None and kept[0] is self.settings and \
                kept[2].replica.spec is kept[1] and digest in self.replica_tokens:
            return kept[2]
        ident = self._replica_client(token, digest, tools=False)
        if ident is not None:
            self._model_clients[digest] = (self.settings, ident.replica.spec, ident)
        return ident

    def _replica_client(self, token: str, digest: str, tools: bool = True
                        ) -> Identity | None:
        replica = self.replica_tokens.get(digest)
        if replica is None:
            return None
        self.digests.known(token, digest)
        return Identity(name=replica.label, allow=self.tools.allowlist(replica.spec)
                        if tools else [], owner=replica.label,
                        tenant=tenant_of(replica.spec), replica=replica, **self._limits())

    def by_token(self, token: str) -> Identity | None:
        digest = self.digests.of(token)
        ident = self._replica_client(token, digest)
        if ident is not None:
            return ident
        # looked up by digest: timing can tell at most something of a SHA-256 of the token
        found = self.tokens.get(digest)
        if found is None:
            return self._api_identity(token)
        self.digests.known(token, digest)
        name, entry = found
        return Identity(name=name, allow=list(entry.tools), owner=f"gateway:{name}",
                        **self._limits(entry))

    def _api_identity(self, secret: str) -> Identity | None:
        """An API token's identity at /mcp: it needs `mcp:call` (or `admin`); it sees its
        tenant's servers, and with an agent glob what the matching agents' allowlists admit."""
        token = self.api_tokens(secret) if self.api_tokens is not None else None
        if token is None:
            return None
        if not token.scopes & {"mcp:call", "admin"}:
            # a token that is one, refused for its scopes: 403, not an unknown token's 401
            raise RpcError(jsonrpc.FORBIDDEN, f"forbidden: token {token.name} lacks the "
                                              "mcp:call scope the gateway needs")
        return msgspec.structs.replace(self.identity_of(Caller(
            via="http", token=token.name, scopes=token.scopes, agents=token.agents,
            tenant=token.tenant, since=token.created)), until=token.expires)

    def identity_of(self, caller: Caller) -> Identity:
        """A command's caller at the gateway's chain (decision 2052): an API token's holder
        as /mcp makes it, the socket's operator as `corral mcp serve`'s peer (its uid)."""
        if caller.token is not None:
            return Identity(name=f"token {caller.token}", owner=_owner_of(caller.token,
                            caller.since), allow=self._token_allow(caller.agents, caller.tenant),
                            tenant=caller.tenant, agents=caller.agents, scopes=caller.scopes,
                            operator=caller.tenant is None, since=caller.since, **self._limits())
        if caller.limited:  # (a dashboard's login: no caller of tools.call today)
            raise RpcError(jsonrpc.FORBIDDEN, f"forbidden: {caller.who} calls tools at /mcp")
        return msgspec.structs.replace(self.identify(), who=(caller.uid, caller.pid))

    def _token_allow(self, agents: str | None, tenant: str | None) -> list[str] | None:
        servers = {n: e.spec for n, e in self.tools.servers.items()}
        if agents is None:
            return None if tenant is None else visible_allow(["*"], tenant, servers)
        out: set[str] = set()
        # a glob of no tenant names the operator's agents alone (Caller.sees)
        whose = tenant if tenant is not None else DEFAULT_TENANT
        for a in self.agents.values():
            if fnmatchcase(a.name, agents) and a.spec.tenant == whose:
                out.update(self.tools.allowlist(a.spec))
        return sorted(out)

    def replica_environment(self, replica: ProcessReplica) -> dict[str, str]:
        """CORRAL_MCP_URL and a fresh token for an agent replica (its previous one void)."""
        if replica.kind != "agent" or self.url is None or not self.settings.agent_tokens:
            return {}
        token = secrets.token_urlsafe(32)
        digest = hash_token(token)
        old = self._replica_hash.pop(replica, None)
        if old is not None:
            self.replica_tokens.pop(old, None)
            self._model_clients.pop(old, None)
            self.digests.forget(old)
        self._replica_hash[replica] = digest
        self.replica_tokens[digest] = replica
        env = {"CORRAL_MCP_URL": self.url, "CORRAL_MCP_TOKEN": token}
        if self.socket_path:
            env["CORRAL_MCP_SOCKET"] = self.socket_path
        return env

    def token_of(self, replica: ProcessReplica) -> str | None:
        """The digest of the token `replica` was given (`corral upgrade` hands it on)."""
        return self._replica_hash.get(replica)

    def kept(self, replica: ProcessReplica, digest: str) -> None:
        """A replica kept across `corral upgrade` goes on with the token it was given."""
        self._replica_hash[replica] = digest
        self.replica_tokens[digest] = replica

    def forget_replica(self, e: ReplicaExit) -> None:
        digest = self._replica_hash.pop(e.replica, None)
        if digest is not None:
            self.replica_tokens.pop(digest, None)
            self._model_clients.pop(digest, None)
            self.digests.forget(digest)

    def _roster(self, e: Roster) -> None:
        """A removed agent's replicas leave the clients' limits and counts, kept by name: an
        agent made and removed under fresh names grew both for good (decision 1831)."""
        if e.agent not in self.agents:
            for kept in (self.limiters, self.by_client):
                for label in [n for n in kept if n.startswith(f"{e.agent}#")]:
                    del kept[label]

    # -- what a client sees and calls -----------------------------------------------------
    def features(self) -> frozenset[str]:
        return frozenset({"tools", "resources", "prompts", "completions"})

    def slot(self, ident: Identity, rated: bool = False) -> _Slot:
        """One of the client's `max_concurrent` slots for a request that is not a tool
        call: nothing a client sends runs unbounded; `rated`, a token of its
        rate_per_minute too (a call the chain audits: a skill read)."""
        return _Slot(self.limiters[ident.name], ident, rated)

    async def list_items(self, ident: Identity, kind: str) -> list[dict[str, Any]]:
        """Tools and prompts named SERVER__NAME; under tool search, `search_tools` and the
        pinned."""
        items = await self._items(ident, kind)
        if kind == "tools" and self.searching(ident):
            return toolsearch.listed(items, self.settings.tool_search_pinned)
        return items

    def searching(self, ident: Identity) -> bool:
        """Whether the client lists tools by searching: at /mcp, under its tenant's
        `tool_search`, else the gateway's (a server seen as itself lists its own)."""
        if ident.server is not None:
            return False
        own = self.agents.tenancy.spec(ident.tenant).tool_search \
            if ident.tenant is not None else None
        return self.settings.tool_search if own is None else own

    async def _items(self, ident: Identity, kind: str) -> list[dict[str, Any]]:
        pool = self.tools
        listers = {"tools": pool.list_tools, "resources": pool.list_resources,
                   "resourceTemplates": pool.list_resource_templates,
                   "prompts": pool.list_prompts}
        lister = listers.get(kind)
        if lister is None:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"no such list: {kind}")
        if ident.server == AGENTS_VIEW:
            return self.agent_tools.listed(ident) if kind == "tools" else []
        with self.slot(ident):
            items = await lister(owner=ident.owner, allow=ident.allow)
        # an allowlist made when its session began may predate a server added since
        items = [i for i in items if self._tenant_sees(ident, f"{i.get('server')}__")]
        if ident.server is not None:
            return [_as_itself(i, kind) for i in items if i.get("server") == ident.server]
        if kind == "resources":  # a skill's file is read at /mcp by the name skills give it
            items = [{**i, "uri": pooled(str(i.get("server")), i.get("uri"))} for i in items]
            items += self.skills.own_resources(ident)
        return [{k: v for k, v in i.items() if k != "server"} for i in items]

    def sees_server(self, ident: Identity, server: str) -> bool:
        """Whether the client may see `server` (or /mcp/corral) as itself."""
        return server == AGENTS_VIEW or (server in self.tools.servers
                                         and self._tenant_sees(ident, f"{server}__"))

    async def forward(self, ident: Identity, method: str, params: dict[str, Any],
                      on_progress: Callable[[dict[str, Any]], None] | None,
                      on_log: LogRelay | None = None) -> Any:
        called = agents_called(ident, method, params)
        if called is not None:
            return await self._agent_call(ident, method, called, None, on_progress)
        if method in SKILL_METHODS or (method == "resources/read" and
                                       is_skill(str(params.get("uri")))):
            # a read is a Call with its row (decision 1691): rated as a tool call is,
            # or a client past its rate writes rows as fast as it sends; a list is none
            with self.slot(ident, rated=method != "skills/list"):
                return await self.skills.serve(ident, method, params)
        if ident.server is not None:
            params = _qualified(ident.server, method, params)
        if method == "tools/call":
            name = params.get("name")
            if isinstance(name, str) and self._task_tool(name) == "required":
                raise needs_tasks(f"tool {name}")  # a call made no task: refused
            return await self._tool_call(ident, params, on_progress, on_log)
        with self.slot(ident):
            return await self._other(ident, method, params)

    async def _tool_call(self, ident: Identity, params: dict[str, Any],
                         on_progress: Callable[[dict[str, Any]], None] | None,
                         on_log: LogRelay | None = None) -> Any:
        name, arguments = call_params(params)
        if name == toolsearch.TOOL and self.searching(ident):
            # over the client's own list: it finds nothing it could not have listed
            return toolsearch.answer(await self._items(ident, "tools"), arguments)
        said = params.get("_meta")
        context = parse_or_none(said.get("traceparent"), said.get("tracestate")) \
            if isinstance(said, dict) else None
        relay, opened = self._relay(ident, name, params, name.partition("__")[0])
        result = await self.call(ident, name, arguments, on_progress, context, relay, on_log)
        return self._sealed(ident, name, opened, relay, result)

    def _sealed(self, ident: Identity, subject: str, opened: SealedState | None,
                relay: InputRelay | None, result: Any) -> Any:
        """A relayed input_required with the server's state sealed, bound to the client
        and `subject` (the tool, prompt or resource it asked for)."""
        if relay is None or not asks_input(result):
            return result
        asked = result.get("inputRequests")
        methods = {k: r["method"] for k, r in asked.items()
                   if isinstance(r, dict) and isinstance(r.get("method"), str)} \
            if isinstance(asked, dict) else {}
        return {**result, "requestState": self.seal.seal(
            Holder(ident.name, ident.tenant), subject, result.get("requestState"), opened,
            self.settings.input_wait, methods)}

    def _relay(self, ident: Identity, name: str, params: dict[str, Any],
               server: str | None) -> tuple[InputRelay | None, SealedState | None]:
        """Who answers the server's input requests of this call: the client, when it
        declared its capabilities, with its answers and the state it brought back; None:
        corral. Answers to requests corral did not relay are refused before the server
        sees any, but elicitation results a client that is no replica gives with no state."""
        responses = params.get("inputResponses")
        if "inputResponses" in params and not isinstance(responses, dict):
            raise RpcError(jsonrpc.INVALID_PARAMS,
                           f"invalid params: {name}: inputResponses must be an object")
        opened = self.seal.open(Holder(ident.name, ident.tenant), name,
                                params["requestState"]) \
            if "requestState" in params else None
        entry = self.tools.servers.get(server) if server is not None else None
        roots = entry is not None and entry.spec.relay_roots
        if responses:
            # any replica's call, attributed or not: its next may be its task's, whose
            # elicitation is asked of a person, never answered ahead by the agent
            answered(name, responses, opened, server, roots, unasked=ident.replica is None)
        said = params.get("_meta")
        caps = said.get(META_CAPABILITIES) if isinstance(said, dict) else None
        if not isinstance(caps, dict):
            return None, None
        return InputRelay(caps, responses, opened.state if opened else None,
                          roots=roots), opened

    async def task(self, ident: Identity, method: str, params: dict[str, Any]) -> Any:
        """A request of the tasks extension (mcptasks.py)."""
        handled = _HANDLED.get(method)
        if handled is not None:
            return handled(self.handles, ident, params)
        called = agents_called(ident, method, params)
        if called is not None:
            return await self._agent_call(ident, method, called, self.handles)
        if ident.server is not None:
            params = _qualified(ident.server, method, params)
        how = await self._task_support(ident, params.get("name"))
        if how is None or (how == "after_input" and "inputResponses" not in params):
            return await self._tool_call(ident, params, None)
        return self.handles.open(ident, None,
                                 lambda handle: self._held_call(ident, params, handle))

    async def _held_call(self, ident: Identity, params: dict[str, Any],
                         handle: GatewayTask) -> Any:
        """A call the gateway holds as a task: a server's input requests wait in the
        handle for `tasks/update`, and the call is sent again with the answers."""
        for _ in range(MAX_INPUT_ROUNDS + 1):
            result = await self._tool_call(ident, params, None)
            if not asks_input(result):
                return result
            answers = await handle.ask(result.get("inputRequests") or {},
                                       self.settings.input_wait)
            params = {**params, "inputResponses": answers,
                      "requestState": result["requestState"]}
        raise AssertionError("unreachable: the seal refuses past MAX_INPUT_ROUNDS")

    async def _task_support(self, ident: Identity, name: Any) -> str | None:
        """How the pool's tool `name` runs as a task: as its server's `task_tools` say,
        or as it says itself; None: not one (nor is a tool the client may not see)."""
        if not isinstance(name, str) or "__" not in name:
            return None
        if self.chain.refused(Call(ident.replica, name, {}, None,
                                   client=self._client(ident))) is not None:
            return None  # (the chain's view link says so: the call is its refusal)
        configured = self._task_tool(name)
        if configured is not None:
            return configured
        server = name.partition("__")[0]
        with self.slot(ident):
            tools = await self.tools.list_tools(owner=ident.owner, allow=ident.allow,
                                                server=server)
        tool = next((t for t in tools if t.get("name") == name), None)
        execution = tool.get("execution") if tool is not None else None
        how = execution.get("taskSupport") if isinstance(execution, dict) else None
        return how if how in ("optional", "required") else None

    def _task_tool(self, name: str) -> str | None:
        """What the server's `task_tools` say of the pool's tool `name` (None: no task)."""
        server, _, own = name.partition("__")
        entry = self.tools.servers.get(server)
        if entry is None or not entry.spec.task_tools:
            return None
        return next((how for glob, how in entry.spec.task_tools.items()
                     if fnmatchcase(own, glob)), None)

    async def _agent_call(self, ident: Identity, method: str, params: dict[str, Any],
                          handles: TaskHandles | None,
                          on_progress: Callable[[dict[str, Any]], None] | None = None
                          ) -> Any:
        """A call of an agent's tool (/mcp/corral): a Call of the one chain, whose view
        link alone judges whether the caller may make it (decision 1690); its corral task,
        followed by a handle or waited for."""
        if method != "tools/call":
            raise RpcError(jsonrpc.METHOD_NOT_FOUND, f"method not found: {method} (the "
                                                     "agents' view has tools alone)")
        name, arguments = call_params(params)
        key = key_meta(params)
        if handles is not None:
            handles.room(ident)  # before the task exists: a refusal leaves nothing behind
        if ident.replica is None:
            return await self._client_agent_call(ident, name, arguments, handles,
                                                 on_progress, trace_meta(params), key)
        said = trace_meta(params)
        if handles is None or self.chain.refused(self._agent_call_of(ident, name)) \
                is not None:  # (the view's refusal is the call's own: no handle for it)
            return await self._replica_agent_call(ident, name, arguments, on_progress,
                                                  said, key)
        return handles.open(ident, None, lambda _: self._replica_agent_call(
            ident, name, arguments, None, said, key))

    def _agent_call_of(self, ident: Identity, agent: str) -> Call:
        """The caller's call of `agent` at /mcp/corral as the chain's view link reads it:
        a replica's is its own (its allowlist and `spawns`); a client's view of the agents
        is its allowlist's `corral__AGENT`, an API token's its agent glob (its allowlist at
        /mcp is its agents' tools, not the agents), an anonymous client's none (it runs
        no agent)."""
        client = self._client(ident)
        if client is not None and ident.scopes is not None:
            client = client._replace(allow=None if ident.agents is None
                                     else [f"{AGENTS_VIEW}__{ident.agents}"])
        elif client is not None and ident.name == "anonymous":
            client = client._replace(allow=[])
        return Call(ident.replica, f"{AGENTS_VIEW}__{agent}", {}, None, door=MCP_AGENTS,
                    client=client)

    def _sees_agent(self, ident: Identity, agent: str) -> bool:
        """Whether the chain's view link admits the caller's call of `agent` (read for
        the agents' listing, which shows what a call would be let make)."""
        return self.chain.refused(self._agent_call_of(ident, agent)) is None

    async def _replica_agent_call(self, ident: Identity, name: str,
                                  arguments: dict[str, Any],
                                  on_progress: Callable[[dict[str, Any]], None] | None,
                                  said: dict[str, Any] | None, key: str | None) -> Any:
        """A replica's call of an agent: its attempt's is the task's spawn; one of no task
        passes its replica's policy as a call of no task at /mcp does; `said`: the
        client's trace context (its `_meta`'s), the call's span's parent; `key`: its
        idempotency key (`_meta`'s), the spawn's or the submission's."""
        async def submitted(call: Call) -> Any:  # of no task: a task of its own
            # (the labels it is handed are the chain's: approvals.py `_replica_call`)
            task_id = await self.agent_tools.submit(ident, name, call.arguments, call.key)
            return await self.agent_tools.outcome(ident, task_id, on_progress)
        tool = f"{AGENTS_VIEW}__{name}"
        return await self._limited(ident, tool, lambda task: self._recorded(
            ident, tool, lambda: self._entered(self._agent_call_of(ident, name)._replace(
                arguments=arguments, task=task, key=key, meta=said,
                wire=DoorWire(made=submitted)))))

    async def _linked_agent_call(self, call: Call) -> Any:
        """The worker link's call of an agent that is no task's, past the chain: a task
        of its own, submitted as its replica's tenant's caller, as at /mcp (decision
        1830)."""
        r = call.replica
        assert r is not None  # (the worker link's caller is its replica)
        ident = Identity(name=r.label, allow=[], owner=r.label, tenant=tenant_of(r.spec),
                         replica=r, **self._limits())
        task_id = await self.agent_tools.submit(ident, call.name.partition("__")[2],
                                                call.arguments, call.key)
        return await self.agent_tools.outcome(ident, task_id)

    async def _client_agent_call(self, ident: Identity, name: str,
                                 arguments: dict[str, Any], handles: TaskHandles | None,
                                 on_progress: Callable[[dict[str, Any]], None] | None,
                                 said: dict[str, Any] | None, key: str | None) -> Any:
        """A client's call of an agent that is no agent's: a Call of the one chain, its
        `client` the caller, whose view, policy rules, audit and trace links judge it as
        any tool call of its; its dispatch the submission of its corral task, then
        followed by a handle (the tasks extension) or waited for."""
        async def submitted(call: Call) -> Any:
            task_id = await self.agent_tools.submit(ident, name, call.arguments, call.key)
            if handles is None:
                return await self.agent_tools.outcome(ident, task_id, on_progress)
            return handles.open(ident, Follows(name, task_id),
                                lambda handle: self.agent_tools.outcome(ident, task_id))
        return await self._limited(ident, f"{AGENTS_VIEW}__{name}", lambda _: self._entered(
            self._agent_call_of(ident, name)._replace(
                arguments=arguments, key=key, meta=said, wire=DoorWire(made=submitted))))

    def _skill_call(self, ident: Identity, name: str, method: str = "skills/get") -> Call:
        """A skill read as the chain reads it: its SERVER__SKILL `name`, its method."""
        return Call(ident.replica, name, {}, None,
                    door=MCP if ident.server is None else MCP_SERVER,
                    client=self._client(ident), skill=method)

    async def _skill_read(self, ident: Identity, method: str, params: dict[str, Any],
                          name: str, made: Callable[[], Awaitable[Any]]) -> Any:
        """A skill read (DESIGN 28): a Call of the one chain, whose view link judges it,
        its trace and audit links as any call's, its dispatch the read `made` (decision
        1691); `params`'s `_meta` its trace context."""
        return await self._entered(self._skill_call(ident, name, method)._replace(
            meta=trace_meta(params), wire=DoorWire(made=lambda call: made())))

    def _sees_skill(self, ident: Identity, name: str) -> bool:
        """Whether the chain's view link admits the client's read of the skill `name`
        (read for the skills' lists: what may be read, no more)."""
        return self.chain.refused(self._skill_call(ident, name)) is None

    async def _entered(self, call: Call) -> Any:
        answer = self.chain.enter(call)
        return await answer if inspect.isawaitable(answer) else answer

    async def _other(self, ident: Identity, method: str, params: dict[str, Any]) -> Any:
        pool = self.tools
        if method == "prompts/get":
            name = str(params.get("name"))
            relay, opened = self._relay(ident, name, params, name.partition("__")[0])
            return self._sealed(ident, name, opened, relay, await pool.get_prompt(
                name, params.get("arguments") or {}, owner=ident.owner, allow=ident.allow,
                relay=relay, sees=self._server_seen(ident)))
        if method == "resources/read":
            uri = str(params.get("uri"))
            server = await self._server_of(ident, uri)
            relay, opened = self._relay(ident, uri, params, server)
            return self._sealed(ident, uri, opened, relay, await pool.read_resource(
                server, uri, owner=ident.owner, allow=ident.allow, relay=relay))
        if method == "completion/complete":
            ref = dict(params.get("ref") or {})
            if ref.get("type") == "ref/prompt":
                server, _, ref["name"] = str(ref.get("name")).partition("__")
            else:
                server = await self._server_of(ident, str(ref.get("uri")), templates=True)
            return await pool.complete(server, ref, params.get("argument") or {},
                                       params.get("context"), owner=ident.owner,
                                       allow=ident.allow, sees=self._server_seen(ident))
        raise RpcError(jsonrpc.METHOD_NOT_FOUND, f"method not found: {method}")

    async def subscribe(self, ident: Identity, uri: str, subscriber: str,
                        on_update: Callable[[str], None]) -> None:
        """`on_update(uri)` at each update of a resource the client may read, until
        `unsubscribe`; at most MAX_SUBSCRIPTIONS of one subscriber (a session)."""
        pool = self.tools
        mine = [key for key, ls in pool.subscriptions.items() if subscriber in ls]
        if len(mine) >= MAX_SUBSCRIPTIONS and uri not in {u for _, u in mine}:
            raise RpcError(jsonrpc.REFUSED,
                           f"resources/subscribe {uri}: this session holds {len(mine)} "
                           f"subscriptions, MAX_SUBSCRIPTIONS ({MAX_SUBSCRIPTIONS}): "
                           "unsubscribe from one first")
        with self.slot(ident):
            server = await self._server_of(ident, uri)
            await pool.subscribe(server, uri, subscriber,
                                 lambda _server, got, _params: on_update(got),
                                 owner=ident.owner, allow=ident.allow)

    async def unsubscribe(self, ident: Identity, uri: str, subscriber: str) -> None:
        """The end of `subscribe`'s (one not made is no error, as the spec's is not)."""
        for server in [s for s, u in self.tools.subscriptions if u == uri]:
            await self.tools.unsubscribe(server, uri, subscriber, owner=ident.owner)

    async def _server_of(self, ident: Identity, uri: str, templates: bool = False) -> str:
        """The one server this client may use whose resources (or templates) have `uri`."""
        pool = self.tools
        having: list[str] = []
        if not templates:
            listed = await pool.list_resources(owner=ident.owner, allow=ident.allow)
            having = sorted({r["server"] for r in listed if r.get("uri") == uri})
        if not having:
            listed = await pool.list_resource_templates(owner=ident.owner, allow=ident.allow)
            having = sorted({t["server"] for t in listed
                             if t.get("uriTemplate") == uri or _expands(t.get("uriTemplate"),
                                                                        uri)})
        having = [h for h in having if self._tenant_sees(ident, f"{h}__")]
        if ident.server is not None:  # a server seen as itself: its own resources alone
            having = [h for h in having if h == ident.server]
        if len(having) != 1:
            # -32602 with data.uri, as SEP-2164 asks of a resource not found
            raise RpcError(jsonrpc.INVALID_PARAMS,
                           f"resource {uri}: " + (f"listed by {', '.join(having)}" if having
                                                  else "no server this client may use "
                                                       "lists it"), {"uri": uri})
        return str(having[0])

    async def call(self, ident: Identity, name: str, arguments: dict[str, Any],
                   on_progress: Callable[[dict[str, Any]], None] | None = None,
                   context: Parent | None = None,
                   relay: InputRelay | None = None, on_log: LogRelay | None = None) -> Any:
        """One tools/call by a gateway client, an agent's replica or not: its door's part
        (attribution, limits, accounting) around the one chain, whose links judge it
        (tasks/chain.py); `context`: the client's trace context, the call's span's parent."""
        return await self._limited(ident, name, lambda task: self._recorded(
            ident, name, lambda: self._entered_by(ident, task, name, arguments, on_progress,
                                                  relay, on_log, context)))

    async def _limited(self, ident: Identity, tool: str,
                       make: Callable[[Task | None], Awaitable[Any]]) -> Any:
        """`make(task)`, a call under the door's part of every gateway call, whatever its
        door: its attempt (a replica's; None, a call of no task), the client's limits (a
        slot of its max_concurrent held until it is answered, a token of its
        rate_per_minute: /mcp/corral's too, decision 1692) and its count; a refusal
        there the door's own row (`_refused`), before the chain."""
        limiter = self.limiters[ident.name]
        try:
            limiter.admit(ident)
        except RpcError as exc:  # its limits': a row a minute (decision 1742)
            unwritten = limiter.refusal_row(time.monotonic())
            self._refused(ident, tool, f"refused: {exc.message}" + (
                f" ({plural(unwritten, 'refusal')} by its limits before it not written)"
                if unwritten else ""), unwritten is not None)
            raise
        try:
            # the token before the attempt: a refused address is a row too (decision
            # 1740), or a stale one wrote rows as fast as it was sent
            task = None if ident.replica is None else \
                self.attribution.task_of(ident.replica, ident.mark)
        except RpcError as exc:
            limiter.in_flight -= 1
            self._refused(ident, tool, f"refused: {exc.message}")
            raise
        if ident.replica is not None:
            self._count(ident, task)
        try:
            return await make(task)
        finally:
            limiter.in_flight -= 1

    def _client(self, ident: Identity) -> GatewayClient | None:
        """The client as a Call names one that is no agent's replica (None: a replica's)."""
        if ident.replica is not None:
            return None
        return GatewayClient(ident.name, ident.owner, ident.tenant, ident.allow,
                             functools.partial(self._tenant_sees, ident), ident.who,
                             None if ident.tenant is None else
                             self.agents.tenancy.specs.get(ident.tenant), ident.as_agent)

    async def _recorded(self, ident: Identity, name: str,
                        make: Callable[[], Awaitable[Any]]) -> Any:
        """The outcome of the call `make` makes, its time and the person's wait counted
        (its audit row is the chain's audit link's)."""
        start = time.perf_counter()
        outcome = "ok"
        with PersonWait() as person:  # the approval's wait, counted apart
            try:
                result = await make()
                outcome = outcome_of(result)
                return result
            except BaseException as exc:
                outcome = failure_of(exc)
                raise
            finally:
                self._counted(ident, name, time.perf_counter() - start, outcome,
                              person.seconds)

    async def _entered_by(self, ident: Identity, task: Task | None, name: str,
                          arguments: dict[str, Any],
                          on_progress: Callable[[dict[str, Any]], None] | None,
                          relay: InputRelay | None, on_log: LogRelay | None,
                          context: Parent | None) -> Any:
        """The client's call: its door's `Call`, through the one chain (tasks/chain.py),
        whose trace link makes its span, a child of the client's context (`_meta`). A
        client that is no agent's replica is the Call's `client`: its allowlist and its
        tenant's view for the chain's first link."""
        said = None if context is None else meta(context.trace_id, context.span_id,
                                                 context.sampled, context.tracestate)
        answer = self.chain.enter(Call(
            ident.replica, name, arguments, task, meta=said,
            door=MCP if ident.server is None else MCP_SERVER,
            # tenant and all: a token's name made again for another tenant is another caller
            wire=DoorWire(on_progress, relay, on_log, f"{ident.owner} of {ident.tenant}"),
            client=self._client(ident)))
        if not inspect.isawaitable(answer):
            return answer
        if self.tracer is None and task is None and said is not None:
            # no trace link: the client's context goes on to the server as it came
            return await _under(answer, ClientSpan(said))
        return await answer

    def _count(self, ident: Identity, task: Task | None) -> None:
        """An agent replica's call, counted as a task's step or as no task's."""
        counter = self.by_client[ident.name]
        if task is None:
            counter.unattributed += 1
            self.unattributed += 1
        else:
            counter.attributed += 1
            self.attributed += 1

    def _counted(self, ident: Identity, tool: str, seconds: float, outcome: str,
                 waited: float = 0.0) -> None:
        error = outcome != "ok"
        self.by_client[ident.name].add(seconds, error, waited)
        self.by_tool[self._counted_as(tool)].add(seconds, error, waited)

    def _refused(self, ident: Identity, tool: str, outcome: str, row: bool = True) -> None:
        """A call its door refused (the client's limits, an attempt it may not name),
        which never entered the chain: counted, and its row the door's own (`row`)."""
        self._counted(ident, tool, 0.0, outcome)
        if row:
            gateway_call(self.audit, ident.name, ident.tenant, tool, None, outcome, ident.who)

    def _counted_as(self, tool: str) -> str:
        """The name a call is counted under: its tool's, or NO_SUCH_TOOL's (a client names
        what it likes: 2 MB names, each a counter, grew the daemon without bound). A name
        counted already is kept under it: nothing grows, and no tool is looked up a call."""
        if tool in self.by_tool:
            return tool
        server, _, name = tool.partition("__")
        entry = self.tools.servers.get(server)
        known = entry is not None and any(i.client.tool(name) is not None
                                          for i in entry.all())
        return tool if known else NO_SUCH_TOOL

    def stats(self) -> dict[str, Any]:
        clients = {n: {**(self.by_client.get(n) or CallCounter()).replica_summary(),
                       "in_flight": self.limiters[n].in_flight if n in self.limiters else 0}
                   for n in sorted({*self.by_client, *self.limiters})}
        return {"clients": clients,
                "tools": {n: s.summary() for n, s in sorted(self.by_tool.items())},
                "url": self.url, "attributed": self.attributed,
                "unattributed": self.unattributed}

    # -- list_changed ---------------------------------------------------------------------
    def changed(self, kinds: list[str]) -> None:
        """Lists changed; watchers hear once per loop turn, however many changes."""
        self._pending.update(kinds)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self._tell)

    def _tell(self) -> None:
        self._flush = None
        kinds, self._pending = sorted(self._pending), set()
        self.stream.emit(GatewayChanged(kinds))

    def watch(self, watcher: Callable[[GatewayChanged], None]) -> Subscription:
        return self.stream.subscribe(watcher, GatewayChanged)

    def unwatch(self, sub: Subscription) -> None:
        self.stream.unsubscribe(sub)

    def on_transition(self, event: Transition) -> None:
        """An MCP server started serving or stopped: what the pool offers may change."""
        if event.kind == "mcp" and serving_changed(event.previous, event.state):
            self.changed(["tools", "resources", "prompts"])


NO_SUCH_TOOL = "(no such tool)"  # the calls of names no server has, counted together


def _owner_of(name: str, created: float | None) -> str:
    """An API token's owner of per-agent instances: its identity's, its name and the time
    it was made (a later token of its name never shares it, decision 1808)."""
    return f"token:{name} of {created!r}"


def _as_itself(item: dict[str, Any], kind: str) -> dict[str, Any]:
    """An item of a server seen as itself: its own name (tools, prompts), no `server`."""
    out = {k: v for k, v in item.items() if k != "server"}
    if kind in ("tools", "prompts") and isinstance(out.get("name"), str):
        out["name"] = out["name"].partition("__")[2]
    return out


def _qualified(server: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """A request of a client that sees `server` as itself, with the pool's names: a tool
    or prompt (or a completion's prompt) `NAME` is `server__NAME`."""
    if method in ("tools/call", "prompts/get") and isinstance(params.get("name"), str):
        return {**params, "name": f"{server}__{params['name']}"}
    ref = params.get("ref")
    if method == "completion/complete" and isinstance(ref, dict) and \
            ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str):
        return {**params, "ref": {**ref, "name": f"{server}__{ref['name']}"}}
    return params


async def _under(call: Awaitable[Any], span: ClientSpan) -> Any:
    """`call` with `span` the context's client span, and without it after: the call may
    run in its HTTP request's own task (GatewaySession.answer), which goes on after it."""
    token = CURRENT.set(span)
    try:
        return await call
    finally:
        CURRENT.reset(token)

