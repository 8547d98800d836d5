"""The command layer: the handler registry, and the one `Dispatcher` every front end calls.

Decoding the typed params, the caller's scope and visibility, the handler, the audit row
of a mutating call and the mapping of errors all happen here, once, so that a rule that
holds for one front end holds for all. Handlers never see a transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..methods import REGISTRY, SCOPES, Method, Params, named
from ..supervisor.core import NoSuchAgent
from ..supervisor.tasks.spawn import REACH
from ..text import clip, one_line
from .caller import Caller, Channel, Discard
from .visibility import AgentRule, agent_rule

Ctx = TypeVar("Ctx")
Narrow = TypeVar("Narrow")
S = TypeVar("S", bound=msgspec.Struct)

Handler = Callable[[Narrow, Any, Caller, Channel], Awaitable[Any]]


class Commands(Generic[Ctx, Narrow]):
    """One domain's handlers and the narrow services they take (`narrow`, made once)."""

    def __init__(self, narrow: Callable[[Ctx], Narrow]) -> None:
        self.narrow = narrow
        self.table: dict[str, Handler[Narrow]] = {}

    def implements(self, declared: type[Params]
                   ) -> Callable[[Handler[Narrow]], Handler[Narrow]]:
        name = declared.declared.name

        def register(fn: Handler[Narrow]) -> Handler[Narrow]:
            if name in self.table:  # pragma: no cover - a programming error
                raise RuntimeError(f"{name} implemented twice")
            self.table[name] = fn
            return fn

        return register


def by_name(narrow: type[S]) -> Callable[[Any], S]:
    """The narrow services `narrow`, a Struct, made of the daemon's of the same names."""
    def made(d: Any) -> S:
        return narrow(**{name: getattr(d, name) for name in narrow.__struct_fields__})

    return made


def wire(value: Any) -> Any:
    """The engine's answer where corral.methods declares its wire twin: the two encode
    alike, and converting would only copy."""
    return value


class Handlers(Generic[Ctx]):
    """Every domain's Commands, each module imported at its first call (they were ~5 ms of
    every boot's CPU); `table` imports them all."""

    def __init__(self, package: str, domains: Mapping[str, str]) -> None:
        self.package = package
        self.domains = domains  # a method name's first part -> its module, in `package`
        self._loaded: dict[str, tuple[Commands[Ctx, Any], Handler[Any]]] = {}
        self._imported: set[str] = set()

    def get(self, name: str) -> tuple[Commands[Ctx, Any], Handler[Any]]:
        """The handler of a declared method; KeyError for a method with none."""
        found = self._loaded.get(name)
        if found is None:
            self._load(self.domains[name.partition(".")[0]])
            found = self._loaded[name]
        return found

    def _load(self, module: str) -> None:
        if module in self._imported:
            return
        import importlib

        commands: Commands[Ctx, Any] = importlib.import_module(
            f"{self.package}.{module}").COMMANDS
        for name, fn in commands.table.items():
            if self.domains.get(name.partition(".")[0]) != module:  # pragma: no cover
                raise RuntimeError(f"{name} implemented in {module}, not its domain's")
            if name in self._loaded:  # pragma: no cover - a programming error
                raise RuntimeError(f"{name} implemented twice")
            self._loaded[name] = (commands, fn)
        self._imported.add(module)

    @property
    def table(self) -> dict[str, tuple[Commands[Ctx, Any], Handler[Any]]]:
        for module in sorted(set(self.domains.values())):
            self._load(module)
        return self._loaded


class Auditor(Protocol):
    """audit.py's Audit: a call's row (`line`: and its line of the daemon log)."""

    def __call__(self, caller: Caller, method: str, params: Any, outcome: str,
                 line: bool = True) -> None: ...


class Dispatcher(Generic[Ctx]):
    """Every front end's one way in. A transport may take calls before the services exist
    (the control socket answers while the state database opens): they wait until `serve`."""

    def __init__(self, handlers: Handlers[Ctx], audit: Auditor,
                 agents: Callable[[Ctx], Iterable[str]] | None = None,
                 owner: Callable[[Ctx, str, str], str | None] | None = None) -> None:
        # the declared methods whose name names no domain (checked without an import)
        missing = sorted(n for n in REGISTRY if n.partition(".")[0] not in handlers.domains)
        if missing:  # pragma: no cover - a programming error, caught by the test suite
            raise RuntimeError(f"control methods without implementation: {missing}")
        self.handlers = handlers
        self.audit = audit
        self.agents = agents  # the names of the agents there are, for a refusal to name
        self.owner = owner  # whose an agent or a server is, for the callers of a tenant
        self._context: asyncio.Future[Ctx] | None = None
        self._narrowed: dict[Commands[Ctx, Any], Any] = {}
        # each method's handler and its domain's narrowed services, made at its first call
        self._made: dict[str, tuple[Any, Handler[Any]]] = {}
        # the channel of every call made in the daemon that takes no stream: it holds
        # nothing of a call's (its event set for good: a wait on it returns at once, bound
        # to no loop), so one serves them all
        self._discard = Discard()

    def bind(self, caller: Caller) -> Caller:
        """A limited caller, given the way to tell whose each object is (before the
        services exist: nothing is anyone's, so nothing is seen). Bound once, it may be
        kept (a door's caller of many requests): its way reads the services as they are."""
        if not caller.limited or caller.owner is not None:
            return caller
        owner = self.owner

        def owner_of(kind: str, name: str) -> str | None:
            ready = self._context
            if owner is None or ready is None or not ready.done():
                return None
            return owner(ready.result(), kind, name)

        return msgspec.structs.replace(caller, owner=owner_of)

    def serve(self, context: Ctx) -> None:
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
        """Check and decode a call at once (RpcError before anything runs), then return the
        handler's run to await. `params`: JSON bytes, a msgspec.Raw, a dict, or None."""
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

    def admit(self, caller: Caller, name: str, given: Collection[str] = ()) -> None:
        """What `dispatch` refuses without the params, for a transport that has not read
        them yet (an HTTP body); audited as `dispatch`'s refusals."""
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

    def check(self, caller: Caller, name: str, params: Any
              ) -> tuple[Method, Any, AgentRule | None]:
        """What `dispatch` checks before anything runs, for a transport that serves a
        call from what it already has (a stream's shared ring): raises RpcError."""
        return self._check(self.bind(caller), name, params)  # (one bound is as it is)

    def _check(self, caller: Caller, name: str, params: Any
               ) -> tuple[Method, Any, AgentRule | None]:
        """`check` of a caller bound already."""
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
        """A refusal of an unknown agent, for a caller limited to some: one it may not see
        is as absent as one that does not exist."""
        ready = self._context
        known = (self.agents(ready.result()) if self.agents is not None and ready is not None
                 and ready.done() else None)
        return NoSuchAgent(exc.name, None if known is None else
                           [n for n in known if caller.sees(n)], exc.note)

    def call(self, caller: Caller, request: str | Params, params: Any = None,
             channel: Channel | None = None) -> Awaitable[Any]:
        """A call made in the daemon, of `request`'s method (or one named, with params):
        its run to await, as `dispatch`'s (a refusal raises here; no frame of its own at
        each resume of the run)."""
        name, params = named(request, params)
        return self.dispatch(caller, name, params, channel or self._discard)

    async def _run(self, spec: Method, params: Any, caller: Caller, channel: Channel,
                   rule: AgentRule | None = None) -> Any:
        ready = self._context
        # (the services exist: the usual case, read with no call)
        context = ready.result() if ready is not None and ready.done() else \
            await asyncio.shield(self._ready())
        try:
            if rule is not None and rule.record is not None:
                # the record the params name must be the caller's: no handler asks
                await rule.record(context, params, caller)
            # the tasks a caller limited to some agents submits spawn none beyond them
            reach = REACH.set((caller.who, caller.agents)) if caller.agents else None
            try:
                made = self._made.get(spec.name)
                if made is None:
                    made = self._made[spec.name] = self._handler(spec.name, context)
                result = await made[1](made[0], params, caller, channel)
            finally:
                if reach is not None:
                    REACH.reset(reach)
            if rule is not None and rule.filter is not None:
                result = rule.filter(result, caller)
        except RpcError as exc:
            # (no local holds an error past here: this frame, in the error's traceback,
            # would hold it, a cycle of both and of all the frame held, left to the
            # collector at every refusal)
            if (spec.mutating and params.changes()) or caller.tenant is not None:
                said = self._as_seen(exc, caller).message \
                    if isinstance(exc, NoSuchAgent) and caller.limited else exc.message
                self.audit(caller, spec.name, params, f"error: {said}")
            if not (isinstance(exc, NoSuchAgent) and caller.limited):
                raise
            raise self._as_seen(exc, caller) from None
        if spec.mutating and params.changes():
            self.audit(caller, spec.name, params, outcome(result), line=params.logged)
        return result

    def _handler(self, name: str, context: Ctx) -> tuple[Any, Handler[Any]]:
        """The method's handler, and the services of its domain it is given."""
        domain, fn = self.handlers.get(name)
        narrowed = self._narrowed
        if domain not in narrowed:
            narrowed[domain] = domain.narrow(context)
        return narrowed[domain], fn


def _scope_held(caller: Caller, spec: Method) -> None:
    if not caller.may(spec.scope):
        raise RpcError(jsonrpc.FORBIDDEN, f"forbidden: {spec.name} needs the {spec.scope} "
                                          f"scope, which {caller.who} does not hold")


def decode(params: Any, into: type[msgspec.Struct]) -> Any:
    """Params as any transport has them, decoded into the method's Struct (a transport
    that built the Struct itself, from a query string, passes it as it is)."""
    if type(params) is into:
        return params
    if type(params) is dict or isinstance(params, Mapping):  # (a dict: no ABC's check)
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
        # one line, bounded, cut between words: a server's message is often several lines
        said = f": {clip(one_line(text), OUTCOME_TEXT)}" if isinstance(text, str) else ""
        return f"error: isError result{said}"
    return "ok"


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
    # whose Retry-After a client would honour for ever
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
