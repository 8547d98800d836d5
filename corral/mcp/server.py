"""The gateway's MCP server session: corral's pool served as one MCP server.

One `GatewaySession` per MCP client, whatever carries its messages (stdio for
`corral mcp serve`, Streamable HTTP in the daemon). The transport hands each incoming
message to `receive` with a `reply` function that reaches the client in the context of
that message (stdout; or the HTTP response / SSE stream of that POST); unsolicited
notifications (`list_changed`) go to `push`, which the transport sets where it has a
channel for them (stdout; the HTTP GET stream).

Revisions, negotiated per client as the MCP client in client.py does from the other side:
- 2024-11-05 … 2025-11-25: `initialize` picks the version (the client's when corral
  speaks it, else the newest corral speaks), then `notifications/initialized`.
- 2026-07-28 (stateless): `server/discover` answers what corral speaks; each request names
  its version in `_meta`, and its result carries `resultType`. A request naming a version
  corral does not speak is refused with -32022 and the versions it does.

What the session serves comes from a `Backend` (the daemon's pool, directly or through
the control socket): tools, resources and prompts named `SERVER__NAME`, completion. The
session owns progress (the client's `progressToken` is given back on every progress
notification of its request) and cancellation (`notifications/cancelled` cancels the
request's task, which cancels the upstream call; no response is sent for it, as the
spec asks).
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
from .client import LEGACY, META_CLIENT, META_VERSION, STATELESS, SUPPORTED

log = logging.getLogger("corral.gateway")

SERVER_INFO = {"name": "corral", "version": __version__}
UNSUPPORTED_PROTOCOL_VERSION = -32022  # the 2026-07-28 error code, with data.supported
LIST_KINDS = {"tools/list": "tools", "resources/list": "resources",
              "resources/templates/list": "resourceTemplates", "prompts/list": "prompts"}
# requests passed on to the pool, with the capability each needs
FORWARDED = {"tools/call": "tools", "resources/read": "resources",
             "prompts/get": "prompts", "completion/complete": "completions"}
CHANGED = {"tools": "notifications/tools/list_changed",
           "resources": "notifications/resources/list_changed",
           "prompts": "notifications/prompts/list_changed"}

_one = msgspec.json.Decoder(Envelope)
_batch = msgspec.json.Decoder(list[Envelope])
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
        """Every item of a kind ("tools", "resources", "resourceTemplates", "prompts")
        this client may see."""
        ...

    async def forward(self, method: str, params: dict[str, Any],
                      on_progress: Progress | None) -> Any:
        """A request for one upstream server (tools/call, resources/read, prompts/get,
        completion/complete), checked against the client's allowlist."""
        ...


class GatewaySession:
    def __init__(self, backend: Backend, *, push: Reply | None = None) -> None:
        self.backend = backend
        self.push = push
        self.version: str | None = None  # negotiated by initialize (legacy revisions)
        self.client_info: dict[str, Any] = {}
        self.initialized = False
        self.inflight: dict[Id, asyncio.Task[Any]] = {}
        self._cancelled: set[Id] = set()

    # -- what the transport calls ---------------------------------------------------------
    def receive(self, env: Envelope, reply: Reply) -> asyncio.Task[Any] | None:
        """Handle one incoming message; a request's answer goes to `reply`. Returns the
        task answering a request that needs one (the HTTP transport waits for it)."""
        if env.jsonrpc != "2.0":
            if env.method is not UNSET and env.id is not UNSET and env.id is not None:
                reply(ErrorResponse(env.id, RpcError(
                    jsonrpc.INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"'
                ).to_object()))
            return None
        if env.method is UNSET:
            return None  # a response to a request corral never sends: nothing to do
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
            result = self._request(method, params, reply)
        except RpcError as exc:
            reply(ErrorResponse(rid, exc.to_object()))
            return None
        if not isinstance(result, Awaitable):
            reply(Response(rid, result))
            return None
        task = asyncio.ensure_future(result)
        self.inflight[rid] = task
        task.add_done_callback(lambda t: self._finish(rid, t, reply))
        return task

    def notify_changed(self, kinds: list[str]) -> None:
        """The pool's lists changed: tell a client that has a channel for it."""
        if self.push is None or not self.initialized:
            return
        for kind in kinds:
            if kind in CHANGED and kind in self.backend.features:
                self.push(Notification(CHANGED[kind]))

    def close(self) -> None:
        """The client is gone: cancel every call it has in flight (and so upstream)."""
        for task in list(self.inflight.values()):
            task.cancel()

    # -- internals ------------------------------------------------------------------------
    def _finish(self, rid: Id, task: asyncio.Task[Any], reply: Reply) -> None:
        self.inflight.pop(rid, None)
        if rid in self._cancelled:  # the client cancelled it: no response, per the spec
            self._cancelled.discard(rid)
            if not task.cancelled():
                task.exception()  # retrieved, so asyncio does not log it
            return
        if task.cancelled():
            reply(ErrorResponse(rid, RpcError(jsonrpc.REQUEST_CANCELLED,
                                              "request cancelled").to_object()))
            return
        exc = task.exception()
        if exc is None:
            reply(Response(rid, task.result()))
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
        # progress, roots/list_changed and anything else: nothing for corral to do

    def capabilities(self) -> dict[str, Any]:
        f = self.backend.features
        caps: dict[str, Any] = {"logging": {}}
        if "tools" in f:
            caps["tools"] = {"listChanged": True}
        if "resources" in f:
            caps["resources"] = {"listChanged": True}
        if "prompts" in f:
            caps["prompts"] = {"listChanged": True}
        if "completions" in f:
            caps["completions"] = {}
        return caps

    def _request(self, method: str, params: dict[str, Any], reply: Reply) -> Any:
        meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else None
        asked = meta.get(META_VERSION) if meta else None
        stateless = False
        if asked is not None and method != "initialize":
            if asked != STATELESS:
                raise RpcError(UNSUPPORTED_PROTOCOL_VERSION,
                               f"unsupported protocol version: {asked!r}",
                               {"supported": list(SUPPORTED), "requested": asked})
            stateless = True
            if meta and isinstance(meta.get(META_CLIENT), dict):
                self.client_info = meta[META_CLIENT]
        if method == "initialize":
            return self._initialize(params)
        if method == "server/discover":
            return self._discover()
        if method == "ping":
            return _complete({}, stateless)
        if method == "logging/setLevel":
            return _complete({}, stateless)  # corral keeps servers' logs in its own log
        kind = LIST_KINDS.get(method)
        if kind is not None:
            return self._list(kind, params, stateless)
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
        if meta and "traceparent" in meta:
            # the client's W3C context (the keys MCP 2026-07-28 reserves): the call's span
            # is its child, and the upstream server's spans join its trace (tracing.md)
            upstream["_meta"] = {k: meta[k] for k in TRACE_KEYS if k in meta}
        return self._forward(method, upstream, on_progress, stateless)

    async def _forward(self, method: str, params: dict[str, Any],
                       on_progress: Progress | None, stateless: bool) -> Any:
        result = await self.backend.forward(method, params, on_progress)
        return _complete(result, stateless)

    def _initialize(self, params: dict[str, Any]) -> dict[str, Any]:
        asked = params.get("protocolVersion")
        self.version = asked if asked in LEGACY else LEGACY[0]
        info = params.get("clientInfo")
        self.client_info = info if isinstance(info, dict) else {}
        return {"protocolVersion": self.version, "capabilities": self.capabilities(),
                "serverInfo": SERVER_INFO,
                "instructions": "corral's supervised MCP servers, as one server: tools, "
                                "resources and prompts are named SERVER__NAME."}

    def _discover(self) -> dict[str, Any]:
        return {"supportedVersions": list(SUPPORTED), "capabilities": self.capabilities(),
                "serverInfo": SERVER_INFO,
                "_meta": {"io.modelcontextprotocol/serverInfo": SERVER_INFO},
                "resultType": "complete", "ttlMs": 0, "cacheScope": "private"}

    async def _list(self, kind: str, params: dict[str, Any], stateless: bool
                    ) -> dict[str, Any]:
        if params.get("cursor") is not None:
            # every item is in the first page, so no cursor corral gave out exists
            raise RpcError(jsonrpc.INVALID_PARAMS, "invalid params: unknown cursor")
        items = await self.backend.list_items(kind) if _feature(kind) in self.backend.features \
            else []
        result: dict[str, Any] = {kind: items}
        if stateless:
            result.update(ttlMs=0, cacheScope="private", resultType="complete")
        return result


def _feature(kind: str) -> str:
    return "resources" if kind == "resourceTemplates" else kind


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
    except msgspec.DecodeError as exc:  # pragma: no cover - the envelope was valid JSON
        raise RpcError(jsonrpc.INVALID_PARAMS, f"invalid params: {exc}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RpcError(jsonrpc.INVALID_PARAMS, "invalid params: must be an object")
    return value


# -- stdio ----------------------------------------------------------------------------------
class StdioTransport(jsonrpc.LineProtocol):
    """One session over a pair of pipes (a host started `corral mcp serve`): one JSON-RPC
    message per line each way, as the MCP stdio transport says."""

    def __init__(self, session: GatewaySession, write: Callable[[bytes], None],
                 on_eof: Callable[[], None]) -> None:
        super().__init__(self._line, lambda exc: on_eof(),
                         max_line=jsonrpc.DEFAULT_MAX_LINE, on_oversize=self._oversize)
        self.session = session
        self.write = write
        session.push = self.send

    def send(self, msg: Any) -> None:
        self.write(jsonrpc.encode(msg))

    def _line(self, line: bytes) -> None:
        try:
            envs = _batch.decode(line) if line[:1] == b"[" else [_one.decode(line)]
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            code = jsonrpc.PARSE_ERROR if isinstance(exc, msgspec.DecodeError) \
                else jsonrpc.INVALID_REQUEST
            self.send(ErrorResponse(None, RpcError(code, f"{jsonrpc.ERROR_NAMES[code]}: "
                                                         f"{exc}").to_object()))
            return
        for env in envs:
            self.session.receive(env, self.send)

    def _oversize(self, size: int, head: bytes, tail: bytes) -> None:
        self.send(ErrorResponse(None, RpcError(
            jsonrpc.INVALID_REQUEST,
            f"invalid request: a {size}-byte message is over the line limit").to_object()))
