"""The gateway's MCP server session: corral's pool served as one MCP server, one
`GatewaySession` per client whatever the transport (which hands each message to `receive`
with a `reply` in its context; unsolicited notifications go to `push`). A 2026-07-28
request's `_meta` is checked first, by the transport calling `screen`. A cancelled request
gets no response, as the spec asks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec
from msgspec import UNSET

from .. import __version__, jsonrpc
from ..jsonrpc import Envelope, ErrorResponse, Id, Notification, Response, RpcError
from . import envelope
from .askclient import WAIT, PendingAsks
from .client import IDEMPOTENCY_META, LEGACY, LISTENED, META_CAPABILITIES, META_VERSION, SUPPORTED
from .envelope import Mirror, Refusal
from .logrelay import LEVELS, META_LOG_LEVEL, LogRelay, valid_level
from .relay import NEEDS, asks_input

log = logging.getLogger("corral.gateway")

SERVER_INFO = {"name": "corral", "version": __version__}
LIST_KINDS = {"tools/list": "tools", "resources/list": "resources",
              "resources/templates/list": "resourceTemplates", "prompts/list": "prompts"}
# requests passed on to the pool, with the capability each needs
FORWARDED = {"tools/call": "tools", "resources/read": "resources",
             "prompts/get": "prompts", "completion/complete": "completions"}
CHANGED = {k: f"notifications/{k}/list_changed" for k in ("tools", "resources", "prompts")}
FILTERS = dict(LISTENED)  # subscriptions/listen's filter field for each kind of list_changed
SUBSCRIPTION = "io.modelcontextprotocol/subscriptionId"
# 2026-07-28 results that carry the caching hints (SEP-2549), besides the lists'
CACHEABLE = frozenset({"resources/read", "skills/list", "skills/get"})
# what corral says of a result's freshness: nothing kept (the servers behind may change
# it at any time), and for this client alone (it is filtered by the client's allowlist)
CACHE_HINTS = {"ttlMs": 0, "cacheScope": "private"}
# the tasks extension (SEP-2663, daemon/mcptasks.py): a backend with the feature "tasks"
# serves it to a client that declares it
TASKS = "io.modelcontextprotocol/tasks"
TASK_METHODS = frozenset({"tasks/get", "tasks/update", "tasks/cancel"})
# the skills extension (SEP-2640, daemon/gatewayskills.py): a backend with the feature
# "skills" serves the servers' skills, each checked against its digest
SKILLS = "io.modelcontextprotocol/skills"
SKILL_METHODS = frozenset({"skills/list", "skills/get", "resources/directory/read"})
SUBSCRIBING = frozenset({"resources/subscribe", "resources/unsubscribe"})
# requests whose server may ask for input (SEP-2322)
ASKING = frozenset({"tools/call", "prompts/get", "resources/read"})
MISSING_CAPABILITY = -32021  # MissingRequiredClientCapability (SEP-2575)

TRACE_KEYS = ("traceparent", "tracestate")
Progress = Callable[[dict[str, Any]], None]
Reply = Callable[[Any], None]


class Backend(Protocol):
    """What the session serves; names are qualified (`SERVER__NAME`) by the backend."""

    @property
    def features(self) -> frozenset[str]:
        """Which of "tools", "resources", "prompts", "completions" it serves."""
        ...

    async def list_items(self, kind: str) -> list[dict[str, Any]]:
        """Every item of a kind this client may see."""
        ...

    async def forward(self, method: str, params: dict[str, Any],
                      on_progress: Progress | None, on_log: LogRelay | None = None) -> Any:
        """A request for one upstream server, checked against the client's allowlist;
        `on_log`: the client gets the server's log messages of a tools/call."""
        ...

    async def task(self, method: str, params: dict[str, Any]) -> Any:
        """A request of the tasks extension (the feature "tasks"): a tools/call of a
        client that declared it, or tasks/get, tasks/update, tasks/cancel."""
        ...

    async def subscribe(self, uri: str, on_update: Callable[[str], None]) -> None:
        """`on_update(uri)` at each update of the resource, until `unsubscribe`."""
        ...

    async def unsubscribe(self, uri: str) -> None:
        ...


class _Inline:
    """A call `answer` runs in its caller's task, as the session cancels it: once, and
    marked so, apart from the caller's own cancellation."""

    __slots__ = ("cancelled", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task, self.cancelled = task, False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.task.cancel()


class GatewaySession:
    def __init__(self, backend: Backend, *, push: Reply | None = None,
                 ask_wait: float = WAIT) -> None:
        self.backend = backend
        self.push = push
        self.version: str | None = None  # negotiated by initialize (legacy revisions)
        self.initialized = False
        # a 2025-11-25 client's, from initialize
        self.extensions: dict[str, Any] = {}
        self.client_capabilities: dict[str, Any] = {}
        # a 2025-11-25 session whose client declared a capability a server's input
        # request needs (NEEDS): asked on the call's channel; once, at initialize
        self.askable = False
        self.asks = PendingAsks(ask_wait)
        # a 2025-11-25 client's, from logging/setLevel (logrelay.py)
        self.log_level: str | None = None
        self.subscribed: set[str] = set()  # its resources/subscribe URIs
        self._ending: set[asyncio.Task[Any]] = set()
        self.inflight: dict[Id, asyncio.Task[Any] | _Inline] = {}
        self._cancelled: set[Id] = set()
        # subscriptions/listen streams by request id: (the kinds asked for, their channel)
        self.listening: dict[Id, tuple[frozenset[str], Reply]] = {}

    # -- what the transport calls ---------------------------------------------------------
    def screen(self, env: Envelope, mirror: Mirror | None) -> Refusal | None:
        """The refusal of a 2026-07-28 request for its envelope (envelope.py), or None;
        `mirror`: what its HTTP headers said (None over stdio)."""
        if (self.version is not None and (envelope.meta_of(env) or {}).get(META_VERSION)
                is None) or not envelope.stateless(env, mirror):
            return None
        return envelope.check(env, mirror)

    def receive(self, env: Envelope, reply: Reply) -> asyncio.Task[Any] | None:
        """Handle one incoming message; a request's answer goes to `reply`. Returns the
        task answering a request that needs one."""
        begun = self._begin(env, reply)
        if begun is None:
            return None
        rid, result = begun
        task = asyncio.ensure_future(result)
        self.inflight[rid] = task
        task.add_done_callback(lambda t: self._finish(rid, t, reply))
        return task

    async def answer(self, env: Envelope, reply: Reply) -> None:
        """`receive` run in the caller's own task, which waits for its one answer (an HTTP
        POST's): no Task a call. A cancellation the session makes (a notifications/cancelled,
        its end) is the call's, told as receive's; any other (the client went) is raised."""
        begun = self._begin(env, reply)
        if begun is None:
            return
        rid, result = begun
        task = asyncio.current_task()
        assert task is not None
        before = task.cancelling()
        self.inflight[rid] = call = _Inline(task)
        failed: BaseException | None = None
        try:
            value = await result
        except asyncio.CancelledError as exc:
            ours = call.cancelled and task.uncancel() <= before
            # (the exception's frames hold this one: nothing here holds the caller's task)
            call = task = None  # type: ignore[assignment]
            if not ours:  # the caller's, alone or beside the session's
                self._cancelled.discard(rid)
                raise
            value, failed = None, exc
        except Exception as exc:
            value, failed = None, exc
        finally:
            self.inflight.pop(rid, None)
        self._tell(rid, reply, failed, value)
        failed = None  # (its frames hold this one: no cycle keeps the call's params)

    def _begin(self, env: Envelope, reply: Reply) -> tuple[Id, Awaitable[Any]] | None:
        """A request's id and what answers it, when that is awaited; whatever else the
        message is, handled here."""
        if env.jsonrpc != "2.0":
            if env.method is not UNSET and env.id is not UNSET and env.id is not None:
                reply(ErrorResponse(env.id, RpcError(
                    jsonrpc.INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"'
                ).to_object()))
            return None
        if env.method is UNSET:
            self.asks.answered(env)  # the client's answer to a server's input request
            return None
        method = env.method
        if env.id is UNSET:
            self._notification(method, env.params)
            return None
        rid = env.id
        if rid is None:
            reply(ErrorResponse(None, RpcError(jsonrpc.INVALID_REQUEST,
                                               "invalid request: id is null").to_object()))
            return None
        try:
            params = _params(env.params)
            result = self._listen(rid, params, reply) if method == "subscriptions/listen" \
                else self._request(method, params, reply)
        except RpcError as exc:
            reply(ErrorResponse(rid, exc.to_object()))
            return None
        if not isinstance(result, Awaitable):
            reply(Response(rid, result))
            return None
        return rid, result

    def notify_changed(self, kinds: list[str]) -> None:
        """The pool's lists changed: tell a client that has a channel for it."""
        kinds = [k for k in kinds if k in CHANGED and k in self.backend.features]
        for rid, (wanted, reply) in list(self.listening.items()):
            for kind in kinds:
                if kind in wanted:
                    reply(Notification(CHANGED[kind], {"_meta": {SUBSCRIPTION: rid}}))
        if self.push is None or not self.initialized:
            return
        for kind in kinds:
            self.push(Notification(CHANGED[kind]))

    def close(self) -> None:
        """The client is gone: cancel every call it has in flight (and so upstream)."""
        self.asks.close()
        for task in list(self.inflight.values()):
            task.cancel()
        for uri in self.subscribed:  # its subscriptions end with it, upstream too
            ending = asyncio.ensure_future(self.backend.unsubscribe(uri))
            self._ending.add(ending)
            ending.add_done_callback(self._ended)
        self.subscribed.clear()

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._ending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("gateway: an ended session's subscription: %s", task.exception())

    def may_ask(self, env: Envelope) -> bool:
        """Whether answering `env` may first mean asking the client (a server's input
        request), or telling it a server's log messages: the transport then keeps a
        channel for it (HTTP: the POST's SSE stream)."""
        return (env.method in ASKING and self.askable) or \
            (env.method == "tools/call" and self.version is not None
             and self.log_level is not None)

    # -- internals ------------------------------------------------------------------------
    def _finish(self, rid: Id, task: asyncio.Task[Any], reply: Reply) -> None:
        self.inflight.pop(rid, None)
        # (its exception retrieved whatever is told: asyncio logs none)
        exc = asyncio.CancelledError() if task.cancelled() else task.exception()
        self._tell(rid, reply, exc, None if exc is not None else task.result())

    def _tell(self, rid: Id, reply: Reply, exc: BaseException | None, value: Any) -> None:
        """A call's outcome as its answer: its result, its error, or nothing when its
        client cancelled it (the spec: no response)."""
        if rid in self._cancelled:
            self._cancelled.discard(rid)
        elif isinstance(exc, asyncio.CancelledError):
            reply(ErrorResponse(rid, RpcError(jsonrpc.REQUEST_CANCELLED,
                                              "request cancelled").to_object()))
        elif exc is None:
            reply(Response(rid, value))
        elif isinstance(exc, RpcError):
            reply(ErrorResponse(rid, exc.to_object()))
        else:
            log.error("gateway: handler failed", exc_info=exc)
            reply(ErrorResponse(rid, RpcError(jsonrpc.INTERNAL_ERROR,
                                              f"internal error: {exc}").to_object()))

    def _notification(self, method: str, raw: Any) -> None:
        if method == "notifications/initialized":
            self.initialized = True
        elif method == "notifications/cancelled":
            try:
                params = _params(raw)
            except RpcError:
                return
            rid = params.get("requestId")
            task = self.inflight.get(rid) if isinstance(rid, int | str) else None
            if task is not None and rid is not None:
                self._cancelled.add(rid)
                task.cancel()

    def capabilities(self) -> dict[str, Any]:
        f = self.backend.features
        caps: dict[str, Any] = {"logging": {},
                                **{k: {"listChanged": True} for k in CHANGED if k in f}}
        if "resources" in f and "subscriptions" in f and self.version is not None:
            caps["resources"]["subscribe"] = True
        if "completions" in f:
            caps["completions"] = {}
        return caps

    def _extensions(self, caps: dict[str, Any]) -> dict[str, Any]:
        """`caps` with the tasks and skills extensions the backend serves (to a
        2025-11-25 client only those it declared: an older client's schema has no
        `extensions`)."""
        served = {TASKS: "tasks", SKILLS: "skills"}
        # (a skill's directories are read from its entry's files, gatewayskills.py)
        settings: dict[str, Any] = {SKILLS: {"directoryRead": True}}
        extensions: dict[str, Any] = {
            ext: settings.get(ext, {}) for ext, feature in served.items()
            if feature in self.backend.features
            and (self.version is None or ext in self.extensions)}
        return {**caps, "extensions": extensions} if extensions else caps

    def _listen(self, rid: Id, params: dict[str, Any], reply: Reply) -> Awaitable[Any]:
        """subscriptions/listen: acknowledged with the kinds corral will send, then each
        list_changed of them until cancelled."""
        meta = params.get("_meta")
        if not isinstance(meta, dict) or META_VERSION not in meta or self.version is not None:
            # a 2025-11-25 session has its GET stream instead: a listen held inside one
            # would be past the bound on sessions (a batch held thousands in one)
            raise RpcError(jsonrpc.METHOD_NOT_FOUND,
                           "method not found: subscriptions/listen (2026-07-28 only)")
        asked = params.get("notifications")
        if not isinstance(asked, dict):
            raise RpcError(jsonrpc.INVALID_PARAMS,
                           "invalid params: subscriptions/listen needs a notifications "
                           "object")
        wanted = frozenset(kind for kind, field in FILTERS.items()
                           if asked.get(field) is True and kind in self.backend.features)
        reply(Notification("notifications/subscriptions/acknowledged", {
            "notifications": {FILTERS[k]: True for k in sorted(wanted)},
            "_meta": {SUBSCRIPTION: rid}}))
        self.listening[rid] = (wanted, reply)
        return self._listening(rid)

    async def _listening(self, rid: Id) -> dict[str, Any]:
        try:
            await asyncio.Event().wait()  # until cancelled: by the client, or its end
        finally:
            self.listening.pop(rid, None)
        return {"resultType": "complete"}  # pragma: no cover - never set

    def _request(self, method: str, params: dict[str, Any], reply: Reply) -> Any:
        meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else None
        asked = meta.get(META_VERSION) if meta else None
        stateless = asked is not None and method != "initialize"
        if method == "initialize":
            return self._initialize(params)
        if method == "server/discover":
            return self._discover()
        if method == "ping":
            return _complete({}, stateless)
        if method == "logging/setLevel":
            level = valid_level(params.get("level"))
            if level is None:
                raise RpcError(jsonrpc.INVALID_PARAMS,
                               f"invalid params: logging/setLevel needs a level of "
                               f"{', '.join(LEVELS)}")
            self.log_level = level
            return _complete({}, stateless)
        kind = LIST_KINDS.get(method)
        if kind is not None:
            return self._list(kind, params, stateless)
        tasks = "tasks" in self.backend.features
        if method in TASK_METHODS and tasks:
            if not self._declares_tasks(meta):
                raise needs_tasks(method)
            return self._tasks(method, params, stateless)
        if method in SUBSCRIBING and "subscriptions" in self.backend.features \
                and not stateless:
            return self._subscription(method, params)
        if method in SKILL_METHODS and "skills" in self.backend.features:
            return self._forward(method, params, None, stateless, reply, None)
        need = FORWARDED.get(method)
        if need is None or need not in self.backend.features:
            raise RpcError(jsonrpc.METHOD_NOT_FOUND, f"method not found: {method}")
        if not isinstance(params.get("name" if method != "resources/read" else "uri"), str) \
                and method != "completion/complete":
            raise RpcError(jsonrpc.INVALID_PARAMS,
                           f"invalid params: {method} needs a "
                           f"{'uri' if method == 'resources/read' else 'name'}")
        token = meta.get("progressToken") if meta else None
        on_progress: Progress | None = None
        if token is not None:
            def on_progress(p: dict[str, Any]) -> None:
                reply(Notification("notifications/progress", {**p, "progressToken": token}))
        upstream = {k: v for k, v in params.items() if k != "_meta"}
        passed = self._passed(meta, stateless)
        if passed:
            upstream["_meta"] = passed
        if method == "tools/call" and tasks and self._declares_tasks(meta):
            return self._tasks(method, upstream, stateless)
        level = valid_level(meta.get(META_LOG_LEVEL) if meta else None) if stateless \
            else self.log_level
        on_log = None if level is None or method != "tools/call" else LogRelay(
            level, lambda p: reply(Notification("notifications/message", p)))
        if not stateless and not self.askable:  # its result as it comes: no layer of ours
            return self.backend.forward(method, upstream, on_progress, on_log)
        return self._forward(method, upstream, on_progress, stateless, reply, on_log)

    def _passed(self, meta: dict[str, Any] | None, stateless: bool) -> dict[str, Any]:
        """What of the client's `_meta` goes upstream: its W3C trace context, its call's
        idempotency key, and its capabilities (what it can answer of a server's input
        requests: a 2026-07-28 request's own, a 2025-11-25 session's from initialize)."""
        passed = {k: meta[k] for k in TRACE_KEYS if k in meta} \
            if meta and "traceparent" in meta else {}
        if meta and IDEMPOTENCY_META in meta:
            passed[IDEMPOTENCY_META] = meta[IDEMPOTENCY_META]
        if stateless and meta and isinstance(meta.get(META_CAPABILITIES), dict):
            passed[META_CAPABILITIES] = meta[META_CAPABILITIES]
        elif not stateless and self.askable:
            passed[META_CAPABILITIES] = self.client_capabilities
        return passed

    async def _subscription(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """resources/subscribe, resources/unsubscribe (2025-11-25): updates go to `push`."""
        uri = params.get("uri")
        if not isinstance(uri, str):
            raise RpcError(jsonrpc.INVALID_PARAMS, f"invalid params: {method} needs a uri")
        if method == "resources/unsubscribe":
            self.subscribed.discard(uri)
            await self.backend.unsubscribe(uri)
        else:
            await self.backend.subscribe(uri, self._updated)
            self.subscribed.add(uri)
        return {}

    def _updated(self, uri: str) -> None:
        if self.push is not None and uri in self.subscribed:
            self.push(Notification("notifications/resources/updated", {"uri": uri}))

    def _declares_tasks(self, meta: dict[str, Any] | None) -> bool:
        """In this request's client capabilities, or in its session's initialize."""
        said = meta.get(META_CAPABILITIES) if meta else None
        extensions = said.get("extensions") if isinstance(said, dict) else None
        return TASKS in self.extensions or (isinstance(extensions, dict)
                                            and TASKS in extensions)

    async def _tasks(self, method: str, params: dict[str, Any], stateless: bool) -> Any:
        return _complete(await self.backend.task(method, params), stateless)

    async def _forward(self, method: str, params: dict[str, Any],
                       on_progress: Progress | None, stateless: bool, reply: Reply,
                       on_log: LogRelay | None) -> Any:
        result = _complete(await self.backend.forward(method, params, on_progress, on_log),
                           stateless)
        while not stateless and self.askable and _asks(result):
            # a 2025-11-25 client reads no input_required: it is asked each request on
            # the call's channel, and the call goes again with its answers
            asked = msgspec.json.decode(result) if isinstance(result, msgspec.Raw) \
                else result
            answers = await self.asks.ask(asked.get("inputRequests"), reply)
            result = await self.backend.forward(method, {
                **params, "inputResponses": answers,
                "requestState": asked.get("requestState")}, on_progress, on_log)
        if stateless and method in CACHEABLE and isinstance(result, dict):
            # a 2026-07-28 server behind may have said its own: kept
            return {**CACHE_HINTS, **result}
        return result

    def _initialize(self, params: dict[str, Any]) -> dict[str, Any]:
        asked = params.get("protocolVersion")
        self.version = asked if asked in LEGACY else LEGACY[0]
        caps = params.get("capabilities")
        self.client_capabilities = caps if isinstance(caps, dict) else {}
        self.askable = any(c in self.client_capabilities for c in NEEDS.values())
        extensions = caps.get("extensions") if isinstance(caps, dict) else None
        self.extensions = extensions if isinstance(extensions, dict) else {}
        return {"protocolVersion": self.version,
                "capabilities": self._extensions(self.capabilities()),
                "serverInfo": SERVER_INFO,
                "instructions": "corral's supervised MCP servers, as one server: tools, "
                                "resources and prompts are named SERVER__NAME."}

    def _discover(self) -> dict[str, Any]:
        return {"supportedVersions": list(SUPPORTED),
                "capabilities": self._extensions(self.capabilities()),
                "serverInfo": SERVER_INFO,
                "_meta": {"io.modelcontextprotocol/serverInfo": SERVER_INFO},
                "resultType": "complete", **CACHE_HINTS}

    async def _list(self, kind: str, params: dict[str, Any], stateless: bool
                    ) -> dict[str, Any]:
        if params.get("cursor") is not None:
            # every item is in the first page, so no cursor corral gave out exists
            raise RpcError(jsonrpc.INVALID_PARAMS, "invalid params: unknown cursor")
        feature = "resources" if kind == "resourceTemplates" else kind
        items = await self.backend.list_items(kind) if feature in self.backend.features else []
        result: dict[str, Any] = {kind: items}
        if stateless:
            result.update(CACHE_HINTS, resultType="complete")
        return result


def needs_tasks(what: str) -> RpcError:
    """For a request only a client of the tasks extension may make."""
    return RpcError(MISSING_CAPABILITY, f"missing required client capability: {what} needs "
                                        f"the {TASKS} extension",
                    {"requiredCapabilities": {"extensions": {TASKS: {}}}})


def _asks(result: Any) -> bool:
    """Whether a result asks for input (one passed through undecoded is looked into only
    when it names input_required at all)."""
    if isinstance(result, msgspec.Raw):
        if b'"input_required"' not in bytes(result):
            return False
        result = msgspec.json.decode(result)
    return asks_input(result)


def _complete(result: Any, stateless: bool) -> Any:
    if stateless and isinstance(result, msgspec.Raw):  # a result passed through undecoded
        result = msgspec.json.decode(result)
    if stateless and isinstance(result, dict) and "resultType" not in result:
        return {**result, "resultType": "complete"}
    return result


def _params(raw: Any) -> dict[str, Any]:
    if raw is UNSET or raw is None:
        return {}
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:  # valid JSON, not Python's (a number out of range)
        raise RpcError(jsonrpc.INVALID_PARAMS, f"invalid params: {exc}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RpcError(jsonrpc.INVALID_PARAMS, "invalid params: must be an object")
    return value


# -- stdio ----------------------------------------------------------------------------------
class StdioTransport(jsonrpc.LineProtocol):
    """One session over a pair of pipes (`corral mcp serve`): a JSON-RPC message per line."""

    def __init__(self, session: GatewaySession, write: Callable[[bytes], None],
                 on_eof: Callable[[], None]) -> None:
        super().__init__(self._line, lambda exc: on_eof(),
                         max_line=jsonrpc.DEFAULT_MAX_LINE, on_oversize=self._oversize)
        self.session = session  # made with a `push` that writes as `send` does
        self.write = write

    def send(self, msg: Any) -> None:
        self.write(jsonrpc.encode(msg))

    def _line(self, line: bytes) -> None:
        envs = envelope.parse(line)
        if isinstance(envs, ErrorResponse):
            self.send(envs)
            return
        for env in envs:
            refusal = self.session.screen(env, None)
            if refusal is not None and isinstance(env.id, int | str):
                self.send(ErrorResponse(env.id, refusal.error.to_object()))
            else:
                self.session.receive(env, self.send)

    def _oversize(self, size: int, head: bytes, tail: bytes) -> None:
        self.send(ErrorResponse(None, RpcError(
            jsonrpc.INVALID_REQUEST,
            f"invalid request: a {size}-byte message is over the line limit").to_object()))
