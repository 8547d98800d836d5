"""An MCP client (host side) on corral's JSON-RPC layer, over any transport (a
`jsonrpc.Peer` whose `send` is the transport's write).

Lifecycle, per revision (the official SDK's rules): 2026-07-28 `server/discover`, then
`_meta` on every request; older ones `initialize`. The probe gets a share of the start
timeout, then `initialize` is sent on the same connection while the probe stays pending: a
late discover answer still wins, and a server that locked to 2026-07-28 meanwhile rejects
`initialize` with -32022, which leads to one re-probe. Sampling is refused; elicitation is
asked of a person when the call carries an `Asker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from .. import __version__, jsonrpc
from ..jsonrpc import Peer, RpcError
from ..tracecontext import CURRENT
from .logrelay import META_LOG_LEVEL, LogRelay
from .paramheaders import ParamHeaders, designations
from .relay import InputRelay, asks_input

log = logging.getLogger("corral.mcp")
# a task's call's idempotency key in its tools/call `_meta`: the same on every attempt of
# the call (supervisor/tasks/steps.py), so that a server that honours it makes it once
IDEMPOTENCY_META = "io.corral/idempotency-key"

STATELESS = "2026-07-28"
LEGACY = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")  # newest first
SUPPORTED = (STATELESS, *LEGACY)
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT = "io.modelcontextprotocol/clientInfo"
CLIENT_INFO = {"name": "corral", "version": __version__}
# the MCP spec's code for "unsupported protocol version" (data: {"supported": [...]})
MCP_UNSUPPORTED_VERSION = -32022
# the share of the start timeout the probe has to itself before initialize is tried
DISCOVER_SHARE = 0.5
MAX_PAGES = 1000
# the spec's tool-name rule; "__" is refused too, as corral's SERVER__TOOL separator
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
TASK_DONE = ("completed", "failed", "cancelled")
TASK_POLL_DEFAULT = 0.5  # seconds, when the server suggests no pollInterval
TASK_POLL_MAX = 5.0
# rounds of input one request may ask for (2026-07-28's input_required results) before
# corral gives it up: a server that asks for ever is not waited on for ever
MAX_INPUT_ROUNDS = 8
# what a 2026-07-28 server's listen stream is asked for: (its capability, the filter)
LISTENED = (("tools", "toolsListChanged"), ("prompts", "promptsListChanged"),
            ("resources", "resourcesListChanged"))
# a probe refused with -32022 that still names 2026-07-28: the probe is sent once more
_REPROBE = object()

ProgressCallback = Callable[[dict[str, Any]], None]
# who answers a server's elicitation of one call: given the request's params, the
# ElicitResult ({"action": "accept", "content": ...}, "decline" or "cancel")
Asker = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# what a call with an Asker declares it can answer (2026-07-28: per request)
ASKER_CAPABILITIES: dict[str, Any] = {"elicitation": {"form": {}}}


def cancel_params(rid: jsonrpc.Id) -> dict[str, Any]:
    return {"requestId": rid, "reason": "timed out or cancelled by corral"}


def _unspoken(who: str, versions: list[str]) -> RpcError:
    return RpcError(jsonrpc.UNSUPPORTED_VERSION, f"{who} supports protocol versions "
                    f"{versions}, none of which corral speaks ({', '.join(SUPPORTED)})")


def _supported_of(exc: RpcError) -> list[str]:
    data = exc.data if isinstance(exc.data, dict) else {}
    found = data.get("supported")
    return [v for v in found if isinstance(v, str)] if isinstance(found, list) else []


def root_uri(root: str) -> str:
    """A configured root (a path or a URI) as the `file://` URI MCP expects."""
    if "://" in root:
        return root
    return Path(root).resolve().as_uri()


class ServerSession(msgspec.Struct, frozen=True):
    """What a client knows of its server's session, handed to the next daemon image with
    the server's process (`corral upgrade`): it goes on without `initialize` again."""

    version: str
    capabilities: dict[str, Any] = {}
    tools: list[dict[str, Any]] = []
    rejected_tools: list[str] = []
    log_level: str | None = None
    calls: int = 0
    errors: int = 0


class ServerNews(NamedTuple):
    """What a client tells its owner: log lines, list changes, resource updates."""

    log: Callable[[str], None]
    tools_changed: Callable[[], None]
    list_changed: Callable[[str], None]
    resource_updated: Callable[[str, dict[str, Any]], None]


class McpClient:
    """Speaks MCP to one server over the Peer `make_peer(send)` makes, which the owner
    feeds with the server's messages."""

    def __init__(self, name: str, *, roots: list[str] | None = None,
                 log_level: str | None = None, news: ServerNews | None = None) -> None:
        self.name = name
        self.news = news  # None: nobody is told
        self.peer: Peer | None = None
        self.version: str | None = None
        self.capabilities: dict[str, Any] = {}
        self.tools: list[dict[str, Any]] = []
        # the tools by name and the list they index (made again when listed or resumed)
        self._named: tuple[list[dict[str, Any]], dict[Any, dict[str, Any]]] = ([], {})
        self.rejected_tools: list[str] = []
        self.roots = [root_uri(r) for r in roots or []]
        self.log_level = log_level
        self.calls = 0
        self.errors = 0
        self.calls_in_flight = 0
        self._tokens = itertools.count(1)
        self._progress: dict[Any, ProgressCallback] = {}
        # the calls in flight whose callers asked for the server's log messages
        self._logs: dict[Any, tuple[str | None, LogRelay]] = {}
        # the callers of every request made for one on this session (None: one corral
        # cannot name, such as an agent's task's step): a 2025-11-25 server's log
        # messages are a caller's only while this holds that caller alone (_log_caller)
        self._callers: set[str | None] = set()
        # the calls in flight made for a task, whose elicitation a person answers
        self._askers: dict[Any, Asker] = {}
        self._validators: dict[str, Any] = {}
        # a 2026-07-28 server's resources subscribed to: each one's listen stream
        self._watching: dict[str, jsonrpc.Id] = {}
        # the tools' arguments an HTTP transport says again as headers (SEP-2243): shared
        # with the transport at its construction, renewed with every tools/list
        self.param_headers = ParamHeaders()
        # OpenTelemetry's network.transport of a span of a call to it: "tcp" when remote
        self.network = "pipe"

    def make_peer(self, send: Callable[[bytes], None], **kw: Any) -> Peer:
        self._callers = set()  # a new session: no work of anyone's goes on in it
        self.peer = Peer(
            f"MCP server {self.name}", send, dispatch=self.on_request,
            on_notification=self.on_notification, cancel_method="notifications/cancelled",
            cancel_params=cancel_params, **kw)
        return self.peer

    @property
    def stateless(self) -> bool:
        return self.version == STATELESS

    def client_capabilities(self) -> dict[str, Any]:
        # roots only when some are configured: a server such as server-filesystem that is
        # told the client has roots replaces its directory arguments with them
        return {"roots": {"listChanged": True}} if self.roots else {}

    def _meta(self) -> dict[str, Any]:
        return {META_VERSION: STATELESS, META_CAPABILITIES: self.client_capabilities(),
                META_CLIENT: CLIENT_INFO}

    def _with_meta(self, params: dict[str, Any]) -> dict[str, Any]:
        span = CURRENT.get()
        if self.stateless or span is not None:
            meta = dict(params.get("_meta") or {})
            if self.stateless:  # capabilities a relay put there stand (request)
                meta = {**self._meta(), **meta}
            if span is not None:
                # the keys 2026-07-28 reserves, read by every revision's OpenTelemetry
                # instrumentation (docs/tracing.md)
                meta.update(span.meta)
            params = {**params, "_meta": meta}
        return params

    async def request(self, method: str, params: dict[str, Any] | None = None, *,
                      timeout: float | None, relay: InputRelay | None = None,
                      asker: Asker | None = None) -> Any:
        """One request, with the revision's `_meta` (`timeout` None: the caller keeps the
        deadline). A 2026-07-28 result that asks for input is answered and the request
        sent again with the server's `requestState`, up to MAX_INPUT_ROUNDS times; one a
        `relay`'s caller can answer is returned unanswered (relay.py)."""
        params = relay.params(params or {}) if relay is not None else params or {}
        offered = None
        if relay is not None:
            offered = relay.offered()
        elif asker is not None:
            offered = ASKER_CAPABILITIES
        if offered is not None and self.stateless:
            # the server is told what the caller can answer, beside corral's own
            params = {**params, "_meta": {**(params.get("_meta") or {}), META_CAPABILITIES: {
                **self.client_capabilities(), **offered}}}
        for _ in range(MAX_INPUT_ROUNDS + 1):
            result = await self._send(method, params, timeout)
            if not asks_input(result):
                return result
            if relay is not None and relay.answers(result.get("inputRequests")):
                return result
            params = {k: v for k, v in params.items()
                      if k not in ("inputResponses", "requestState")}
            params["inputResponses"] = await self._inputs(method,
                                                          result.get("inputRequests"), asker)
            if "requestState" in result:
                params["requestState"] = result["requestState"]
        raise RpcError(jsonrpc.REFUSED,
                       f"{method}: MCP server {self.name} still asked for input after "
                       f"{MAX_INPUT_ROUNDS} rounds (corral's bound MAX_INPUT_ROUNDS): given up")

    async def _inputs(self, method: str, asked: Any, asker: Asker | None = None
                      ) -> dict[str, Any]:
        """The answers to a server's input requests: elicitation declined when there is
        no `asker`; sampling, which has no way to decline, fails the request."""
        if not isinstance(asked, dict):
            raise RpcError(jsonrpc.INVALID_REQUEST,
                           f"{method}: MCP server {self.name} asked for input without "
                           "inputRequests")
        answers: dict[str, Any] = {}
        for key, req in asked.items():
            what = req.get("method") if isinstance(req, dict) else None
            if what == "roots/list":
                answers[key] = self._roots()
            elif what == "elicitation/create":
                params = req.get("params") if isinstance(req, dict) else None
                answers[key] = {"action": "decline"} if asker is None else \
                    await asker(params if isinstance(params, dict) else {})
            else:
                raise RpcError(jsonrpc.METHOD_NOT_FOUND,
                               f"{method}: MCP server {self.name} asked for {what!r} input, "
                               f"which corral does not offer (it runs unattended; see "
                               f"docs/decisions.md)")
        return answers

    def _send(self, method: str, params: dict[str, Any], timeout: float | None
              ) -> Awaitable[Any]:
        # the peer's coroutine as it is: no layer of this one's around every request
        assert self.peer is not None
        span = CURRENT.get()
        if span is not None and method == "tools/call":
            # the id it is about to be sent with (nothing is awaited before it is sent)
            span.request_id = getattr(self.peer, "_next_id", -1) + 1
            span.transport = self.network
        return self.peer.request(method, self._with_meta(params), timeout=timeout)

    def session(self) -> ServerSession | None:
        if self.version is None:
            return None
        return ServerSession(**{f: getattr(self, f) for f in ServerSession.__struct_fields__})

    def resume(self, s: ServerSession) -> None:
        """Go on with a session another client negotiated over the same channel."""
        self._negotiated(s.version)
        for f in ServerSession.__struct_fields__[1:]:  # (the version: by _negotiated)
            setattr(self, f, getattr(s, f))
        # whose work goes on in it was not handed over: nobody's, as far as logs go
        self._callers = {None}

    # -- lifecycle ------------------------------------------------------------------------
    async def connect(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        patience = timeout * DISCOVER_SHARE
        for attempt in range(2):
            probe = self._probe()
            found = await self._wait_probe(probe, patience)
            if found is _REPROBE:
                if not attempt:
                    continue
                found = None
            if found is None:  # a legacy server (it refused discover), or one still silent
                try:
                    return await self._initialize_or_late_probe(probe, deadline)
                except RpcError as exc:
                    if exc.code != MCP_UNSUPPORTED_VERSION or attempt:
                        raise
                    # the connection was locked to a modern revision: re-probe once
                    if STATELESS not in _supported_of(exc) and _supported_of(exc):
                        raise _unspoken(f"MCP server {self.name}", _supported_of(exc)
                                        ) from None
                    patience = max(0.0, deadline - time.monotonic())
                    continue
            return await self._adopt(found, deadline)
        raise AssertionError("unreachable")  # pragma: no cover

    def _probe(self) -> asyncio.Future[Any]:
        assert self.peer is not None
        rid, fut = self.peer.request_future("server/discover", {"_meta": self._meta()})
        # a probe given up on is forgotten quietly: its late answer is not garbage
        fut.add_done_callback(lambda f: self.peer.forget(rid) if self.peer else None)
        return fut

    @staticmethod
    async def _wait_probe(probe: asyncio.Future[Any], patience: float) -> Any:
        """The probe's result, or None when the server refused it or is still silent."""
        done, _ = await asyncio.wait({probe}, timeout=patience)
        if not done:
            return None
        try:
            return msgspec.json.decode(probe.result())
        except RpcError as exc:
            if exc.code == jsonrpc.PEER_CLOSED:
                raise
            if exc.code == MCP_UNSUPPORTED_VERSION and STATELESS in _supported_of(exc):
                return _REPROBE  # refused, yet named as supported: once more
            if exc.code == MCP_UNSUPPORTED_VERSION and _supported_of(exc) \
                    and not any(v in LEGACY for v in _supported_of(exc)):
                raise _unspoken("server/discover: the server", _supported_of(exc)) from None
            return None  # every other error: a legacy server (the SDK's denylist)

    async def _initialize_or_late_probe(self, probe: asyncio.Future[Any],
                                        deadline: float) -> str:
        """`initialize`, while a probe still pending may answer late and win."""
        assert self.peer is not None
        rid, init = self.peer.request_future("initialize", self._init_params(LEGACY[0]))
        waiting = {init} if probe.done() else {init, probe}
        failed: asyncio.Future[Any] | None = None
        try:
            while waiting:
                left = deadline - time.monotonic()
                done, waiting = await asyncio.wait(waiting, timeout=max(0.0, left),
                                                   return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    raise RpcError(jsonrpc.REQUEST_TIMEOUT,
                                   f"initialize: no answer from {self.name}")
                if probe in done and probe.exception() is None:
                    found = msgspec.json.decode(probe.result())
                    offered = found.get("supportedVersions") if isinstance(found, dict) else None
                    if isinstance(offered, list) and STATELESS in offered:  # the late answer wins
                        return await self._adopt(found, deadline)
                if init in done:
                    exc = init.exception()
                    if exc is None:
                        return await self._initialized(msgspec.json.decode(init.result()))
                    if probe not in waiting or (isinstance(exc, RpcError)
                                                and exc.code == MCP_UNSUPPORTED_VERSION):
                        init.result()  # raises: -32022 leads to the re-probe
                    # a modern-only server may refuse initialize before its late answer
                    # to the probe arrives: that answer decides
                    failed = init
            if failed is not None:
                failed.result()  # the probe answered without 2026-07-28: the refusal stands
        finally:
            for fut in (probe, init):
                if not fut.done():
                    fut.cancel()
                _forget(fut)
            self.peer.forget(rid)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _adopt(self, found: Any, deadline: float) -> str:
        if not isinstance(found, dict) or not isinstance(found.get("supportedVersions"), list):
            return await self._initialize(LEGACY[0], deadline)
        offered = [v for v in found["supportedVersions"] if isinstance(v, str)]
        if STATELESS in offered:
            self._negotiated(STATELESS)
            self.capabilities = found.get("capabilities") or {}
            await self._after_connect(deadline)
            self._listen()
            return STATELESS
        common = [v for v in LEGACY if v in offered]
        if not common:
            raise _unspoken(f"MCP server {self.name}", offered)
        return await self._initialize(common[0], deadline)

    async def _initialize(self, proposed: str, deadline: float) -> str:
        assert self.peer is not None
        result = await self.peer.request("initialize", self._init_params(proposed),
                                         timeout=max(0.001, deadline - time.monotonic()))
        return await self._initialized(result, deadline)

    def _init_params(self, version: str) -> dict[str, Any]:
        return {"protocolVersion": version, "capabilities": self.client_capabilities(),
                "clientInfo": CLIENT_INFO}

    async def _initialized(self, result: Any, deadline: float | None = None) -> str:
        assert self.peer is not None
        answered = result.get("protocolVersion") if isinstance(result, dict) else None
        if answered not in LEGACY:
            raise RpcError(jsonrpc.UNSUPPORTED_VERSION, (
                f"MCP server {self.name} answered initialize with protocol version "
                f"{answered!r}, which corral does not speak ({', '.join(SUPPORTED)})"))
        version: str = answered
        self._negotiated(version)
        self.capabilities = result.get("capabilities") or {}
        self.peer.notify("notifications/initialized")
        await self._after_connect(deadline)
        return version

    def _negotiated(self, version: str) -> None:
        self.version = version
        self.param_headers.protocol_version = version  # an HTTP transport's header from now on

    async def _after_connect(self, deadline: float | None) -> None:
        if self.log_level and "logging" in self.capabilities:
            timeout = 5.0 if deadline is None else max(0.001, deadline - time.monotonic())
            try:
                await self.request("logging/setLevel", {"level": self.log_level},
                                   timeout=timeout)
            except RpcError as exc:
                self._note(f"logging/setLevel {self.log_level} failed: {exc.message}")

    def _listen(self) -> None:
        """A 2026-07-28 server says its lists changed only on a `subscriptions/listen`
        stream (SEP-2575): one is opened over a pipe and forgotten at once (it lasts as
        long as the connection and is no request in flight). A remote server's is not
        opened: its stream would be one HTTP response held for ever."""
        asked = {field: True for cap, field in LISTENED
                 if (self.capabilities.get(cap) or {}).get("listChanged")}
        if asked and self.network == "pipe" and self.peer is not None:
            self._open_listen(asked)

    def _open_listen(self, notifications: dict[str, Any]) -> jsonrpc.Id:
        assert self.peer is not None
        rid, fut = self.peer.request_future(
            "subscriptions/listen", self._with_meta({"notifications": notifications}))
        self.peer.forget(rid)
        fut.add_done_callback(_forget)
        return rid

    def liveness_request(self) -> tuple[str, dict[str, Any]]:
        """`ping`, or for the stateless revision (which has none) `server/discover`."""
        return ("server/discover", {"_meta": self._meta()}) if self.stateless else ("ping", {})

    def _note(self, text: str) -> None:
        if self.news is not None:
            self.news.log(text)

    # -- lists ----------------------------------------------------------------------------
    async def list_all(self, method: str, key: str, timeout: float) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            params: dict[str, Any] = {} if cursor is None else {"cursor": cursor}
            page = await self.request(method, params, timeout=timeout)
            if not isinstance(page, dict) or not isinstance(page.get(key), list):
                raise RpcError(jsonrpc.INVALID_REQUEST,
                               f"MCP server {self.name}: malformed {method} result")
            items.extend(i for i in page[key] if isinstance(i, dict))
            cursor = page.get("nextCursor")
            if not cursor:
                break
        return items

    # -- tools ----------------------------------------------------------------------------
    async def list_tools(self, timeout: float) -> list[dict[str, Any]]:
        """Tools with names outside the spec are left out, and a name listed twice is left
        out whole: a client would see one for the other."""
        tools: list[dict[str, Any]] = []
        badly_named: list[str] = []
        rejected: list[str] = []
        marks: dict[str, dict[str, str]] = {}
        for tool in await self.list_all("tools/list", "tools", timeout):
            name = tool.get("name")
            if not isinstance(name, str) or not TOOL_NAME.match(name) or "__" in name:
                badly_named.append(repr(name))
                continue
            try:
                marks[name] = designations(tool)
            except ValueError as exc:
                rejected.append(repr(name))
                self._note(f"left out tool {name!r}: {exc} (SEP-2243)")
                continue
            tools.append(tool)
        if badly_named:
            self._note(f"left out tools whose names break the MCP naming rule or contain "
                       f"'__': {', '.join(badly_named)}")
        places: dict[str, list[int]] = {}
        for i, tool in enumerate(tools, 1):
            places.setdefault(tool["name"], []).append(i)
        twice = {name: at for name, at in places.items() if len(at) > 1}
        for name, at in twice.items():
            rejected.append(repr(name))
            self._note(f"left out tool {name!r}: listed {len(at)} times (entries "
                       f"{', '.join(map(str, at))} of its list), each would shadow the other")
        self.tools = [t for t in tools if t["name"] not in twice]
        self.rejected_tools = badly_named + rejected
        self.param_headers.learn(marks)
        self._validators.clear()
        return self.tools

    def tool(self, name: str) -> dict[str, Any] | None:
        listed, named = self._named
        if listed is not self.tools:
            named = {t.get("name"): t for t in reversed(self.tools)}  # (the first of a name)
            self._named = (self.tools, named)
        return named.get(name)

    async def call_tool(self, name: str, arguments: dict[str, Any], *, timeout: float,
                        on_progress: ProgressCallback | None = None,
                        relay: InputRelay | None = None,
                        on_log: LogRelay | None = None, asker: Asker | None = None,
                        caller: str | None = None, key: str | None = None) -> Any:
        """tools/call; on timeout or cancellation `notifications/cancelled` is sent (or
        `tasks/cancel` for a tool whose `execution.taskSupport` is "required", called as a
        task and polled). `on_log` gets the server's log messages of this call
        (logrelay.py); `caller`: whose call it is (None: unnamed); `key`: its
        idempotency key."""
        token = next(self._tokens)
        params: dict[str, Any] = {"name": name, "arguments": arguments,
                                  "_meta": {"progressToken": token}}
        if key is not None:
            params["_meta"][IDEMPOTENCY_META] = key
        tool = self.tool(name) or {}
        as_task = (tool.get("execution") or {}).get("taskSupport") == "required"
        if on_progress is not None:
            self._progress[token] = on_progress
        self._callers.add(caller)
        if on_log is not None:
            self._logs[token] = (caller, on_log)
            if self.stateless:  # a 2026-07-28 server logs only for a request that asks
                params["_meta"][META_LOG_LEVEL] = on_log.level
        if asker is not None:
            self._askers[token] = asker
        self.calls += 1
        self.calls_in_flight += 1
        # the call's deadline: a timer that cancels it, as asyncio.timeout's does, without
        # that context manager's objects and bookkeeping (a tenth of this method's cost)
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        fired: list[bool] = []
        timer = asyncio.get_running_loop().call_later(timeout, _expire, task, fired)
        try:
            if as_task:
                result = await self._call_as_task(params, timeout)
            else:
                result = await self.request("tools/call", params, timeout=None,
                                            relay=relay, asker=asker)
        except (asyncio.CancelledError, TimeoutError) as exc:
            if isinstance(exc, asyncio.CancelledError) and (
                    not fired or task.uncancel() > cancelling):
                raise  # the caller's cancellation, not the deadline
            self.errors += 1
            if self.peer is not None:  # a hang of a server without ping shows this way
                self.peer.timed_out()
            raise RpcError(jsonrpc.REQUEST_TIMEOUT,
                           f"tools/call: no answer from MCP server {self.name} within "
                           f"{timeout:g} s") from None
        except RpcError:
            self.errors += 1
            raise
        finally:
            timer.cancel()
            self.calls_in_flight -= 1
            self._progress.pop(token, None)
            self._logs.pop(token, None)
            self._askers.pop(token, None)
        result = self._check_output(tool, result)
        if isinstance(result, dict) and result.get("isError"):
            self.errors += 1
        return result

    async def _call_as_task(self, params: dict[str, Any], timeout: float) -> Any:
        ttl = int(timeout * 1000) + 60_000
        created = await self.request("tools/call", {**params, "task": {"ttl": ttl}},
                                     timeout=timeout + 1)
        task = created.get("task") if isinstance(created, dict) else None
        if not isinstance(task, dict) or not isinstance(task.get("taskId"), str):
            return created  # the server ran it at once after all
        task_id: str = task["taskId"]
        try:
            while task.get("status") not in TASK_DONE:
                if task.get("status") == "input_required":
                    break  # tasks/result carries the server's request's outcome
                interval = task.get("pollInterval")
                await asyncio.sleep(min(TASK_POLL_MAX, interval / 1000)
                                    if isinstance(interval, int | float) and interval > 0
                                    else TASK_POLL_DEFAULT)
                task = await self.request("tasks/get", {"taskId": task_id},
                                          timeout=timeout + 1)
            return await self.request("tasks/result", {"taskId": task_id},
                                      timeout=timeout + 1)
        except (asyncio.CancelledError, TimeoutError):
            if self.peer is not None and self.peer.closed is None:
                _, fut = self.peer.request_future(
                    "tasks/cancel", self._with_meta({"taskId": task_id}))
                fut.add_done_callback(_forget)
            raise

    def _check_output(self, tool: dict[str, Any], result: Any) -> Any:
        """A result whose structuredContent breaks the tool's outputSchema is made an
        error result naming the mismatch (the spec: clients SHOULD validate)."""
        schema = tool.get("outputSchema")
        if not isinstance(schema, dict) or not isinstance(result, dict) \
                or result.get("isError"):
            return result
        name = str(tool.get("name"))
        problem = "the result has no structuredContent" if "structuredContent" not in result \
            else self._schema_problem(name, schema, result["structuredContent"])
        if problem is None:
            return result
        text = (f"MCP server {self.name}: tool {name} returned structuredContent that does "
                f"not match its outputSchema: {problem}")
        self._note(text)
        return {**result, "isError": True,
                "content": [*(result.get("content") or []), {"type": "text", "text": text}]}

    def _schema_problem(self, name: str, schema: dict[str, Any], value: Any) -> str | None:
        validator = self._validators.get(name)
        if validator is None:
            import jsonschema  # only when some tool declares an outputSchema

            try:
                cls = jsonschema.validators.validator_for(schema)
                cls.check_schema(schema)
                validator = self._validators[name] = cls(schema)
            except jsonschema.SchemaError as exc:
                return f"its outputSchema is not a valid JSON Schema: {exc.message}"
        error = next(iter(validator.iter_errors(value)), None)
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        return f"at {where}: {error.message}"

    # -- resources ------------------------------------------------------------------------
    async def read_resource(self, uri: str, timeout: float,
                            relay: InputRelay | None = None) -> Any:
        self._callers.add(None)  # a caller's request, whose caller is not named here
        return await self.request("resources/read", {"uri": uri}, timeout=timeout,
                                  relay=relay)

    async def subscribe(self, uri: str, timeout: float) -> None:
        """`resources/subscribe`, or of a 2026-07-28 server (which has none) a listen
        stream of its own, opened as `_listen` opens one."""
        if not self.stateless:
            self._callers.add(None)
            await self.request("resources/subscribe", {"uri": uri}, timeout=timeout)
            return
        if self.network != "pipe" or self.peer is None:
            raise RpcError(jsonrpc.REFUSED, f"MCP server {self.name}: resource "
                                            "subscriptions of a remote 2026-07-28 server "
                                            "are not offered yet")
        if uri not in self._watching:
            self._watching[uri] = self._open_listen({"resourceSubscriptions": [uri]})

    async def unsubscribe(self, uri: str, timeout: float) -> None:
        if not self.stateless:
            await self.request("resources/unsubscribe", {"uri": uri}, timeout=timeout)
            return
        rid = self._watching.pop(uri, None)
        if rid is not None and self.peer is not None and self.peer.closed is None:
            # the listen stream ends as a request does, cancelled
            self.peer.notify("notifications/cancelled", cancel_params(rid))

    # -- prompts and completion -----------------------------------------------------------
    async def get_prompt(self, name: str, arguments: dict[str, str], timeout: float,
                         relay: InputRelay | None = None) -> Any:
        self._callers.add(None)
        return await self.request("prompts/get", {"name": name, "arguments": arguments},
                                  timeout=timeout, relay=relay)

    async def complete(self, ref: dict[str, Any], argument: dict[str, Any],
                       context: dict[str, Any] | None, timeout: float) -> Any:
        self._callers.add(None)
        return await self.request("completion/complete", {
            "ref": ref, "argument": argument, **({"context": context} if context else {})},
            timeout=timeout)

    # -- roots and logging ----------------------------------------------------------------
    def set_roots(self, roots: list[str]) -> None:
        uris = [root_uri(r) for r in roots]
        if uris == self.roots:
            return
        self.roots = uris
        if self.peer is not None and self.version is not None:
            self.peer.notify("notifications/roots/list_changed")

    async def set_log_level(self, level: str, timeout: float) -> None:
        self.log_level = level
        await self.request("logging/setLevel", {"level": level}, timeout=timeout)

    # -- from the server ------------------------------------------------------------------
    def on_notification(self, method: str, raw: Any, peer: Peer) -> None:
        try:
            params = msgspec.json.decode(raw) if raw is not msgspec.UNSET else {}
        except msgspec.DecodeError:
            return
        if not isinstance(params, dict):
            params = {}
        if method == "notifications/progress":
            cb = self._progress.get(params.get("progressToken"))
            if cb is not None:
                cb({k: v for k, v in params.items() if k != "progressToken"})
        elif method == "notifications/message":
            logger = f" [{params['logger']}]" if isinstance(params.get("logger"), str) else ""
            data = params.get("data")
            text = data if isinstance(data, str) else msgspec.json.encode(data).decode()
            self._note(f"log {params.get('level', '')}{logger}: {text}")
            caller = self._log_caller()
            if caller is not None:
                caller(params)
        elif self.news is None:
            return
        elif method == "notifications/tools/list_changed":
            self.news.tools_changed()
        elif method in ("notifications/resources/list_changed",
                        "notifications/prompts/list_changed"):
            self.news.list_changed(method)
        elif method == "notifications/resources/updated" and isinstance(params.get("uri"), str):
            self.news.resource_updated(params["uri"], params)

    def _log_caller(self) -> LogRelay | None:
        """The call a log message of the server's can only be of: the one in flight that
        asked for logs, for a 2026-07-28 server (which logs for no other). An older server
        logs for the session, and a call's work may outlive its answer, so there it must
        be the one request in flight and every caller on the session must be its own."""
        if len(self._logs) != 1:
            return None
        caller, relay = next(iter(self._logs.values()))
        if not self.stateless and (self.peer is None or self.peer.in_flight != 1
                                   or caller is None or self._callers != {caller}):
            return None
        return relay

    def _asker(self) -> Asker | None:
        """Who answers a 2025-11-25 server's elicitation/create, which names no call: the
        call with an Asker, when it is the one request in flight (else it is refused)."""
        if len(self._askers) != 1 or self.peer is None or self.peer.in_flight != 1:
            return None
        return next(iter(self._askers.values()))

    def _roots(self) -> dict[str, Any]:
        return {"roots": [{"uri": u, "name": u.rsplit("/", 1)[-1] or u} for u in self.roots]}

    def on_request(self, method: str, raw: Any, peer: Peer) -> Any:
        if method == "ping":
            return {}
        if method == "roots/list":
            return self._roots()
        if method == "elicitation/create":
            asker = self._asker()
            if asker is not None:
                params = msgspec.json.decode(raw) if raw is not msgspec.UNSET else {}
                return asker(params if isinstance(params, dict) else {})
        if method in ("sampling/createMessage", "elicitation/create"):
            what = "sampling" if method.startswith("sampling") else "elicitation"
            raise RpcError(jsonrpc.METHOD_NOT_FOUND,
                           f"{method}: corral does not offer {what} (it runs unattended; "
                           f"see docs/decisions.md)")
        raise jsonrpc.method_not_found(method)


def _expire(task: asyncio.Task[Any], fired: list[bool]) -> None:
    fired.append(True)
    task.cancel()


def _forget(fut: asyncio.Future[Any]) -> None:
    """So that a settled future's exception is not logged as never retrieved."""
    if fut.done() and not fut.cancelled():
        with contextlib.suppress(BaseException):
            fut.exception()
