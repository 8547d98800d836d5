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
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..methods import REGISTRY, SCOPES, Method

Ctx = TypeVar("Ctx")


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

    def __init__(self, handlers: Handlers[Ctx], audit: Audit) -> None:
        missing = handlers.missing()
        if missing:  # pragma: no cover - a programming error, caught by the test suite
            raise RuntimeError(f"control methods without implementation: {missing}")
        self.handlers = handlers.table
        self.audit = audit
        self._context: asyncio.Future[Ctx] | None = None

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
        spec = self.method(name)
        if not caller.may(spec.scope):
            raise RpcError(jsonrpc.FORBIDDEN, f"forbidden: {name} needs the {spec.scope} "
                                              f"scope, which {caller.who} does not hold")
        typed = decode(params, spec.params)
        return self._run(spec, typed, caller, channel)

    async def call(self, caller: Caller, name: str, params: Any = None,
                   channel: Channel | None = None) -> Any:
        return await self.dispatch(caller, name, params, channel or Discard())

    async def _run(self, spec: Method, params: Any, caller: Caller, channel: Channel
                   ) -> Any:
        ready = self._ready()
        context = ready.result() if ready.done() else await asyncio.shield(ready)
        try:
            result = await self.handlers[spec.name](context, params, caller, channel)
        except RpcError as exc:
            if spec.mutating:
                self.audit(caller, spec.name, params, f"error: {exc.message}")
            raise
        if spec.mutating:
            self.audit(caller, spec.name, params, outcome(result))
        return result


def decode(params: Any, into: type[msgspec.Struct]) -> Any:
    """Params as any transport has them, decoded into the method's Struct."""
    if isinstance(params, Mapping):
        try:
            return msgspec.convert(params, into)
        except msgspec.ValidationError as exc:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"invalid params: {exc}") from None
    if isinstance(params, bytes | bytearray | memoryview):
        params = msgspec.Raw(bytes(params))
    return jsonrpc.decode_params(params, into)


def outcome(result: Any) -> str:
    """How the audit log records a result: an MCP tool result with isError is an error."""
    if isinstance(result, dict) and result.get("isError") is True:
        content = result.get("content")
        first = content[0] if isinstance(content, list) and content else None
        text = first.get("text") if isinstance(first, dict) else None
        return f"error: isError result{f': {text:.200}' if isinstance(text, str) else ''}"
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
