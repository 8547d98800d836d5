"""The HTTP gateway: the pool as one MCP server over Streamable HTTP, in the daemon
(docs/http.md, "The MCP gateway"), at `/mcp` of the daemon's HTTP server and, with
`[gateway] listen`, on a site of its own too, and on the local socket beside the control
socket (`corral mcp serve`'s: localgateway.py), by the same handlers and sessions.

aiohttp is imported here only, and this module only when the gateway is served over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Coroutine
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import msgspec
from aiohttp import web
from yarl import URL

from ... import jsonrpc
from ...jsonrpc import Envelope, ErrorResponse, Id, Response, RpcError
from ...mcp import envelope, sse
from ...mcp.client import LEGACY, META_VERSION, STATELESS
from ...mcp.envelope import Mirror
from ...mcp.http import METHOD_HEADER, NAME_HEADER, SESSION_HEADER, VERSION_HEADER
from ...mcp.logrelay import META_LOG_LEVEL, LogRelay
from ...mcp.server import MISSING_CAPABILITY, GatewaySession, Progress
from ...supervisor.addresses import loopback
from ...supervisor.config import ConfigError
from ...supervisor.process_replica import ReplicaExit
from ...supervisor.stream import Subscription
from ..attribution import mark_of
from ..caller import ClientEnded
from ..mcptasks import AGENTS_VIEW
from ..models.answers import Exchange
from ..models.lean import LeanConnection, LeanRequest, answer_json, respond
from .mcpsessions import SessionsFull, SessionTable
from .server import HttpRunner, Refusals, held_across_upgrade

if TYPE_CHECKING:
    from ...supervisor.config import GatewaySettings
    from ..gatewayaccess import GatewayService, Identity
    from ..handoff import Listeners
    from ..localgateway import LocalGateway
    from ..models.gateway import ModelGateway

log = logging.getLogger("corral.gateway.http")

ENDPOINT = "/mcp"
METADATA = "/.well-known/oauth-protected-resource"
VIEW = "/{server}"  # one server seen as itself (docs/gateway.md)
MAX_BODY = 16 * 1024 * 1024
REPLAY = 256
REPLAY_BYTES = 4 << 20
MAX_PENDING = 1024
MAX_PENDING_BYTES = 1 << 20  # as the REST API's SSE streams (sse.HIGH_WATER)
RESUME_GRACE = 10.0
# a 2026-07-28 error's own HTTP status: a method corral does not have (404), a
# capability the client did not declare, corral's or a server's behind (400, SEP-2575)
STATELESS_STATUS = {jsonrpc.METHOD_NOT_FOUND: 404, MISSING_CAPABILITY: 400}


class PoolBackend:
    def __init__(self, service: GatewayService, ident: Identity) -> None:
        self.service = service
        self.ident = ident
        # its handles, and its subscriptions (this session's), are the daemon's
        # and its servers' skills, which the agents' view (/mcp/corral) has none of;
        # made once, not at each of the several looks a request takes
        skills = {"skills"} if ident.server != AGENTS_VIEW else set()
        self.features = service.features() | {"tasks", "subscriptions"} | skills

    @cached_property
    def key(self) -> str:
        """Its subscriptions' owner: made at its first (a 2026-07-28 request's backend,
        made a request, subscribes to nothing)."""
        return f"gateway session {secrets.token_hex(8)}"

    async def list_items(self, kind: str) -> list[dict[str, Any]]:
        return await self.service.list_items(self.ident, kind)

    def forward(self, method: str, params: dict[str, Any], on_progress: Progress | None,
                on_log: LogRelay | None = None) -> Coroutine[Any, Any, Any]:
        # the service's own coroutine: no layer of this one's at every call
        return self.service.forward(self.ident, method, params, on_progress, on_log=on_log)

    async def task(self, method: str, params: dict[str, Any]) -> Any:
        return await self.service.task(self.ident, method, params)

    async def subscribe(self, uri: str, on_update: Callable[[str], None]) -> None:
        await self.service.subscribe(self.ident, uri, self.key, on_update)

    async def unsubscribe(self, uri: str) -> None:
        await self.service.unsubscribe(self.ident, uri, self.key)


class SseStream:
    """One SSE stream of a session: a POST's answer, or the session's GET stream."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.wake = asyncio.Event()
        self.finished = False  # its last event (a POST's answer) is queued
        self.readers = 0
        self.call: asyncio.Task[Any] | None = None
        self.orphaned: asyncio.TimerHandle | None = None

    def queue(self, data: bytes) -> None:
        self.pending.append(data)
        self.pending_bytes += len(data)

    def take(self) -> bytes:
        data = self.pending.popleft()
        self.pending_bytes -= len(data)
        return data

    def full(self) -> bool:
        return len(self.pending) >= MAX_PENDING or self.pending_bytes >= MAX_PENDING_BYTES


class HttpSession:
    def __init__(self, sid: str | None, ident: Identity, backend: PoolBackend) -> None:
        self.id = sid
        self.ident = ident
        self.mcp = GatewaySession(backend, push=self._push,
                                  ask_wait=backend.service.settings.input_wait)
        self.last_seen = time.monotonic()
        self.history: deque[tuple[int, str, bytes]] = deque()  # REPLAY, REPLAY_BYTES
        self.history_bytes = 0
        self.streams: dict[str, SseStream] = {}
        self.standalone: SseStream | None = None
        self.watching: Subscription | None = None  # to the gateway's changes
        self.expiry: asyncio.TimerHandle | None = None  # its token's, where it expires
        self._seq = itertools.count(1)

    def emit(self, stream: SseStream, msg: Any, *, last: bool = False) -> None:
        payload = msgspec.json.encode(msg)
        seq = next(self._seq)
        self._remember(seq, stream.key, payload)
        if stream.full() and not last:
            return  # a reader that does not read loses progress, not our memory
        stream.queue(sse.format_event(payload, str(seq)))
        stream.finished = stream.finished or last
        stream.wake.set()

    def _remember(self, seq: int, key: str, payload: bytes) -> None:
        history = self.history
        history.append((seq, key, payload))
        self.history_bytes += len(payload)
        while len(history) > REPLAY or (self.history_bytes > REPLAY_BYTES and
                                        len(history) > 1):
            self.history_bytes -= len(history.popleft()[2])

    def _push(self, msg: Any) -> None:
        if self.standalone is not None and self.standalone.readers:
            self.emit(self.standalone, msg)

    @property
    def busy(self) -> bool:
        return bool(self.mcp.inflight) or any(s.readers for s in self.streams.values()) \
            or bool(self.standalone and self.standalone.readers)

    def close(self) -> None:
        self.mcp.close()
        for s in [*self.streams.values(), *([self.standalone] if self.standalone else [])]:
            s.finished = True
            s.wake.set()


def parse_listen(listen: str) -> tuple[str, str | None, int]:
    """("unix", path, 0) or ("tcp", host, port)."""
    if listen.startswith("unix:"):
        return "unix", listen[5:], 0
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdecimal() or not host:
        raise ConfigError(f"gateway.listen: {listen!r} is neither unix:PATH nor HOST:PORT")
    return "tcp", host.strip("[]"), int(port)


class HttpGateway:
    def __init__(self, service: GatewayService, settings: GatewaySettings,
                 base: Path, listeners: Listeners | None = None,
                 models: ModelGateway | None = None, relay: str | None = None) -> None:
        self.service = service
        # a TCP site is served on this unix socket too, for egress = "gateways"
        # sandboxes to reach through their relay (supervisor/egressrelay.py)
        self.relay = relay
        self.models = models  # the model gateway, served beside /mcp (docs/models.md)
        # where its own site's socket is held across `corral upgrade`'s exec, or taken from
        self.listeners = listeners
        self.settings = settings
        self.base = base
        self.sessions: SessionTable[HttpSession] = SessionTable()
        self.url = ""  # where agents are told to reach it
        self.socket_path: str | None = None
        self.mounted = ""  # its URL on the [http] server, when mounted there
        self._runner: web.AppRunner | None = None
        self.local: LocalGateway | None = None  # the local socket's site, once served
        self._local_runner: web.AppRunner | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._abandoning = False  # a site that failed to start is being cleaned up
        self.refused = Refusals({})  # the heads its own site's connections refused
        self._ended = (service.stream.subscribe(self._client_ended, ClientEnded),
                       service.stream.subscribe(self._replica_exited, ReplicaExit))

    # -- start and stop -------------------------------------------------------------------
    def mount(self, app: web.Application) -> None:
        """On this gateway's own site's application, or the daemon's HTTP server's."""
        for path in (ENDPOINT, ENDPOINT + VIEW):
            app.router.add_route("POST", path, self.post)
            app.router.add_route("GET", path, self.get)
            app.router.add_route("DELETE", path, self.delete)
            app.router.add_route("GET", METADATA + path, self.metadata)
        app.router.add_route("GET", METADATA, self.metadata)
        if self.models is not None:
            self.models.mount(app)
        # a session's streams end when their server stops, rather than holding its stop
        app.on_shutdown.append(self._end_sessions)
        if self._reaper is None:
            self._reaper = asyncio.ensure_future(self._reap())

    def served_at(self, base: str, socket_path: str | None) -> None:
        """Mounted on the daemon's HTTP server at `base`: the address agents are given,
        unless the gateway has a site of its own."""
        self.mounted = base + ENDPOINT
        if not self.url:
            self.url, self.socket_path = self.mounted, socket_path

    async def _end_sessions(self, app: web.Application) -> None:
        if self._abandoning:
            return
        for sid in list(self.sessions):
            self._end(sid)

    async def start(self) -> None:
        s = self.settings
        assert s.listen is not None
        kind, where, port = parse_listen(s.listen)
        tls: ssl.SSLContext | None = None
        if s.tls_cert or s.tls_key:
            if not (s.tls_cert and s.tls_key):
                raise ConfigError("gateway: tls_cert and tls_key go together")
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(self._path(s.tls_cert), self._path(s.tls_key))
        if kind == "tcp" and where is not None and not loopback(where) \
                and tls is None and not s.allow_remote:
            raise ConfigError(
                f"gateway.listen: refusing to serve {where}, which is not a loopback address, "
                "without TLS: set tls_cert and tls_key, or allow_remote = true")
        self._runner = await self._site()
        try:
            await self._serve(kind, where, port, tls)
        except BaseException:
            # retried (daemon/extras.py): the next attempt starts from nothing, and the
            # sessions of /mcp on the [http] server, shared, are not this site's to end
            self._abandoning = True
            try:
                await self._runner.cleanup()
            finally:
                self._runner, self._abandoning = None, False
            raise

    async def _site(self) -> web.AppRunner:
        """The runner of a site of its own (`[gateway] listen`'s, the local socket's)."""
        app = web.Application(client_max_size=MAX_BODY)
        self.mount(app)
        # a client that goes away cancels its handler, and so its call upstream; the
        # model calls of the common shape and POSTs of /mcp are served lean (models/lean.py);
        # a connection with no whole request within idle_timeout is closed (as [http]'s)
        runner = HttpRunner(app, self.refused,
                            partial(LeanConnection, models=self.models,
                                    posts={ENDPOINT: self.lean}.get),
                            handle_signals=False, access_log=None, handler_cancellation=True,
                            shutdown_timeout=2.0, keepalive_timeout=self.settings.idle_timeout)
        await runner.setup()
        return runner

    async def _serve(self, kind: str, where: str | None, port: int | None,
                     tls: ssl.SSLContext | None) -> None:
        assert self._runner is not None
        listen = self.settings.listen or ""
        # the socket of the image before `corral upgrade`, if it served this address
        inherited = self.listeners.take("gateway", listen) if self.listeners else None
        site: web.BaseSite
        if kind == "unix":
            assert where is not None
            path = self._path(where)
            if inherited is None:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                Path(path).unlink(missing_ok=True)
            site = (web.SockSite(self._runner, inherited) if inherited
                    else web.UnixSite(self._runner, path))
            self.socket_path = path
            self.url = f"http://localhost{ENDPOINT}"
        else:
            site = (web.SockSite(self._runner, inherited, ssl_context=tls) if inherited
                    else web.TCPSite(self._runner, where, port, ssl_context=tls))
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if kind == "tcp":
            bound = sockets[0].getsockname()[1] if sockets else port
            shown = f"[{where}]" if where and ":" in where else where
            self.url = f"{'https' if tls else 'http'}://{shown}:{bound}{ENDPOINT}"
            if self.relay is not None:
                await self._serve_relay(self.relay, tls)
        elif inherited is None:
            Path(self.socket_path or "").chmod(0o660)
        if self.listeners is not None:
            held_across_upgrade(self.listeners, "gateway", listen, self._runner, site, tls)

    async def _serve_relay(self, path: str, tls: ssl.SSLContext | None) -> None:
        """The TCP site's twin on a unix socket: the relay inside a sandbox passes the
        agent's bytes through as they are (TLS too), so the same TLS is spoken here. Open
        to every user, as the TCP site is: a client needs a token either way."""
        assert self._runner is not None
        Path(path).unlink(missing_ok=True)
        await web.UnixSite(self._runner, path, ssl_context=tls).start()
        Path(path).chmod(0o666)

    async def serve_local(self, sock: socket.socket, local: LocalGateway) -> None:
        """The local socket's site (localgateway.py), held across `corral upgrade` as the
        others are; its callers are identified by `local`."""
        from ..localgateway import NAME

        self._local_runner = runner = await self._site()
        site = web.SockSite(runner, sock)
        await site.start()
        self.local = local
        if self.listeners is not None:
            held_across_upgrade(self.listeners, NAME, str(local.path), runner, site, None)

    def _path(self, p: str) -> str:
        path = Path(p)
        return str(path if path.is_absolute() else self.base / path)

    async def close(self) -> None:
        for sub in self._ended:
            self.service.stream.unsubscribe(sub)
        if self.listeners is not None:
            self.listeners.gone("gateway")
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for sid in list(self.sessions):
            self._end(sid)
        for runner in (self._runner, self._local_runner):
            if runner is not None:
                await runner.cleanup()
        self._runner = self._local_runner = None
        if self.local is not None:
            self.local.path.unlink(missing_ok=True)
        for made in (self.socket_path, self.relay):
            if made:
                Path(made).unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        return {"listen": self.settings.listen, "url": self.url,
                "socket": self.socket_path, "mounted": self.mounted or None,
                "sessions": len(self.sessions),
                "busy": sum(s.busy for s in self.sessions.values()),
                "evicted": self.sessions.evictions,
                "refused": {code: n for (_, code), n in self.refused.counts.items()}}

    async def _reap(self) -> None:
        idle = self.settings.session_idle_timeout
        while True:
            await asyncio.sleep(min(30.0, idle / 4))
            before = time.monotonic() - idle
            for sid in [sid for sid, s in self.sessions.items()
                        if s.last_seen < before and not s.busy]:
                self._end(sid)

    def _client_ended(self, e: ClientEnded) -> None:
        for sid in [sid for sid, s in self.sessions.items()
                    if s.ident.name == e.name and s.ident.since == e.since]:
            self._end(sid)

    def _replica_exited(self, e: ReplicaExit) -> None:
        """A replica's sessions end with it: each holds the replica, which holds what it
        ran with, and one it left open would be kept until the idle reaper, or for good
        while a stream of it is held (decision 2010)."""
        for sid in [sid for sid, s in self.sessions.items() if s.ident.replica is e.replica]:
            self._end(sid)

    def _end(self, sid: str) -> None:
        sess = self.sessions.pop(sid, None)
        if sess is not None:
            if sess.expiry is not None:
                sess.expiry.cancel()
            if sess.watching is not None:
                self.service.unwatch(sess.watching)
            sess.close()

    # -- requests -------------------------------------------------------------------------
    def _who(self, request: web.Request) -> Identity:
        origin = request.headers.get("Origin")
        if origin and not loopback(urlsplit(origin).hostname or ""):
            raise _http(403, f"origin {origin} is not allowed")
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        local = self.local
        ident: Identity | None
        if local is not None and request.transport is not None and \
                request.transport.get_extra_info("sockname") == str(local.path):
            ident = self._local(request, local, token.strip() if auth else None)
        elif not auth:
            ident = self.service.anonymous()
        else:
            try:
                ident = self.service.by_token(token.strip()) if scheme.lower() == "bearer" \
                    else None
            except RpcError as exc:  # a token it knows, without the scope: 403
                raise _http(403, exc.message) from None
        if ident is None:
            raise web.HTTPUnauthorized(
                text="a valid bearer token is required" if auth else "no bearer token",
                headers={"WWW-Authenticate": 'Bearer resource_metadata='
                         f'"{_origin(request)}{METADATA}{request.path}"'})
        ident = self._marked(request, ident)
        server = request.match_info.get("server")
        if server is None:
            return ident
        if not self.service.sees_server(ident, server):
            raise _http(404, f"no MCP server {server} this client may use")
        return msgspec.structs.replace(ident, server=server)

    @staticmethod
    def _local(request: web.Request, local: LocalGateway, token: str | None) -> Identity:
        """A client of the local socket: its peer's caller, or the agent (`?agent=NAME`)
        or token it names; refused in the words of the control socket's refusals."""
        try:
            return local.identify(request.transport, request.query.get("agent"), token)
        except RpcError as exc:
            status = {jsonrpc.UNAUTHORIZED: 401, jsonrpc.NOT_FOUND: 404}.get(exc.code, 403)
            raise _http(status, exc.message) from None

    @staticmethod
    def _marked(request: web.Request, ident: Identity) -> Identity:
        """The client with the task attempt its address names (`?task=ID&attempt=N`,
        attribution.py), which only an agent replica's token may name."""
        try:
            mark = mark_of(request.query)
        except ValueError as exc:
            raise _http(400, str(exc)) from None
        if mark is None:
            return ident
        if ident.replica is None:
            raise _http(400, f"gateway client {ident.name} is no agent replica: an "
                             "attempt's address is for the token of the replica that runs it")
        return msgspec.structs.replace(ident, mark=mark)

    @staticmethod
    def _legacy_version(request: web.Request, rid: Id | None = None) -> None:
        """A 2025-11-25 session's request names a version of its revisions, if any."""
        version = request.headers.get(VERSION_HEADER)
        if version is not None and version not in LEGACY:
            raise _http(400, f"unsupported {VERSION_HEADER}: {version}", rid=rid)

    def _session(self, request: web.Request, ident: Identity, rid: Id | None = None
                 ) -> HttpSession:
        self._legacy_version(request, rid)
        sid = request.headers.get(SESSION_HEADER)
        if sid is None:
            raise _http(400, f"no {SESSION_HEADER}: initialize first", rid=rid)
        sess = self.sessions.get(sid)
        if sess is None:
            raise _http(404, self.sessions.why_gone(sid) or "no such session (it ended, "
                        "expired, or the daemon restarted): initialize again", rid=rid)
        if sess.ident.name != ident.name:
            raise _http(403, "this session belongs to another client", rid=rid)
        if sess.ident.mark != ident.mark:
            raise _http(404, "this session began at another attempt's address: initialize "
                             "again", rid=rid)
        if sess.ident.server != ident.server:
            raise _http(404, f"this session is of {_path(sess.ident.server)}, not of "
                             f"{_path(ident.server)}: initialize again", rid=rid)
        sess.last_seen = time.monotonic()
        return sess

    async def lean(self, ex: Exchange) -> bool:
        """A POST of /mcp that models/lean.py read, answered as aiohttp's is (aiohttp's
        request and response machinery was a fifth of the daemon's CPU a tools/call); False,
        nothing done, for one answered with a stream: aiohttp's to serve, as it came."""
        try:
            resp = await self.post(cast(web.Request, LeanRequest(ex)))
        except _Streams:
            return False
        except web.HTTPException as exc:
            resp = exc
        respond(ex, resp)
        return True

    async def post(self, request: web.Request) -> web.StreamResponse:
        ident = self._who(request)
        body = await request.read()
        envs = envelope.parse(body)
        if isinstance(envs, ErrorResponse):
            return _json(request, envs, 400)
        batch = body[:1] == b"["
        if not envs:
            return _json(request, ErrorResponse(None, RpcError(
                jsonrpc.INVALID_REQUEST, "empty batch").to_object()), 400)
        first = envs[0]
        rid = first.id if isinstance(first.id, int | str) else None
        headers: dict[str, str] = {}
        if not batch and request.headers.get(SESSION_HEADER) is None:
            mirror = Mirror(request.headers.get(VERSION_HEADER),
                            request.headers.get(METHOD_HEADER), request.headers.get(NAME_HEADER))
            if envelope.stateless(first, mirror):
                return await self._stateless(request, ident, first, mirror)
            if not envelope.is_request(first) and (
                    mirror.version == STATELESS or META_VERSION in (envelope.meta_of(first)
                                                                    or {})):
                return web.Response(status=202)  # of no session: nothing to act on
        if first.method == "initialize" and not batch:
            self._legacy_version(request, rid)
            sess = self._new_session(ident)
            assert sess.id is not None
            headers[SESSION_HEADER] = sess.id
        else:
            sess = self._session(request, ident, rid)
        requests = [e for e in envs if e.method is not msgspec.UNSET
                    and e.id is not msgspec.UNSET]
        if not requests:
            for e in envs:
                sess.mcp.receive(e, lambda msg: None)
            return web.Response(status=202, headers=headers)
        if not batch and (_wants_progress(first) or sess.mcp.may_ask(first)) and \
                "text/event-stream" in request.headers.get("Accept", ""):
            # a call that may say things before its answer (progress, or a server's
            # request for input asked of the client) keeps its stream for them
            return await self._stream_answer(request, sess, first, headers)
        answers: list[Any] = []
        if batch:  # until each call is told (its answer, or none: cancelled by its client);
            # this handler's own cancellation (its client went) cancels them
            calls = (sess.mcp.receive(e, answers.append) for e in envs)
            await asyncio.gather(*(t for t in calls if t is not None), return_exceptions=True)
        else:  # its one call in this handler's own task
            await sess.mcp.answer(first, answers.append)
        answers = [a for a in answers if isinstance(a, Response | ErrorResponse)]
        if batch:
            return _json(request, answers, 200, headers)
        if not answers:  # cancelled by the client meanwhile: nothing to say
            return web.Response(status=202, headers=headers)
        return _json(request, answers[0], 200, headers)

    async def _stateless(self, request: web.Request, ident: Identity, env: Envelope,
                         mirror: Mirror) -> web.StreamResponse:
        """A 2026-07-28 request, answered on its own POST. An error keeps its id and has
        its own status (envelope.py, STATELESS_STATUS): a 404 for a method corral does
        not have lets a client tell a 2026-07-28 server apart unread."""
        sess = HttpSession(None, ident, PoolBackend(self.service, ident))
        refusal = sess.mcp.screen(env, mirror)
        if refusal is not None:
            return _json(request, ErrorResponse(env.id if isinstance(env.id, int | str)
                                                else None, refusal.error.to_object()),
                         refusal.status)
        if env.method == "subscriptions/listen":
            return await self._listen(request, ident, env)
        if _wants_progress(env) and "text/event-stream" in request.headers.get("Accept", ""):
            return await self._stream_answer(request, sess, env, {})
        answers: list[Any] = []
        await sess.mcp.answer(env, answers.append)
        answer = next((a for a in answers if isinstance(a, Response | ErrorResponse)), None)
        if answer is None:  # cancelled meanwhile: nothing to say
            return web.Response(status=202)
        code = answer.error.code if isinstance(answer, ErrorResponse) else None
        return _json(request, answer,
                     STATELESS_STATUS.get(code, 200) if code is not None else 200)

    async def _listen(self, request: web.Request, ident: Identity, env: Envelope
                      ) -> web.StreamResponse:
        """subscriptions/listen: an SSE stream held open until the client goes away, held
        as one of the client's sessions (bounded as they are, and busy while open)."""
        if isinstance(request, LeanRequest):
            raise _Streams
        sess = self._new_session(ident)
        assert sess.id is not None
        try:
            return await self._stream_answer(request, sess, env, {})
        finally:
            self._end(sess.id)

    def _new_session(self, ident: Identity) -> HttpSession:
        try:
            evicted = self.sessions.make_room(ident, self.service.tenant_sessions(ident),
                                              self.settings.max_sessions)
        except SessionsFull as exc:
            raise _http(503, str(exc), {"Retry-After": "5"}) from None
        for old in evicted:
            self._end(old)
        sid = secrets.token_urlsafe(24)
        sess = HttpSession(sid, ident, PoolBackend(self.service, ident))
        self.sessions[sid] = sess
        if ident.until is not None:  # its token's expiry ends it, its streams too (1831)
            sess.expiry = asyncio.get_running_loop().call_later(
                max(0.0, ident.until - time.time()), self._end, sid)
        sess.watching = self.service.watch(lambda e: sess.mcp.notify_changed(e.kinds))
        return sess

    async def _stream_answer(self, request: web.Request, sess: HttpSession, env: Envelope,
                             headers: dict[str, str]) -> web.StreamResponse:
        """An SSE stream once the call says something before its answer, else its answer
        as JSON: one body, which clients that refuse an SSE event over 1 MiB (the
        official SDK, fastmcp) read whatever its size."""
        if isinstance(request, LeanRequest):  # (a session initialize made: made again there)
            self._end(headers.get(SESSION_HEADER, ""))
            raise _Streams
        stream = SseStream(f"post-{secrets.token_hex(6)}")
        first: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def reply(msg: Any) -> None:
            answer = isinstance(msg, Response | ErrorResponse)
            if not first.done():
                first.set_result(msg if answer else None)
                if answer:
                    return
            sess.emit(stream, msg, last=answer)

        stream.call = sess.mcp.receive(env, reply)
        if stream.call is None and not first.done():  # pragma: no cover - defensive
            return web.Response(status=202, headers=headers)
        try:
            answered = await first
        except asyncio.CancelledError:  # the client went away before a word: no stream
            if stream.call is not None:
                stream.call.cancel()
            raise
        if answered is not None:
            return _json(request, answered, 200, headers)
        if sess.id is not None:
            sess.streams[stream.key] = stream
        return await self._pump(request, sess, stream, headers)

    async def _pump(self, request: web.Request, sess: HttpSession, stream: SseStream,
                    headers: dict[str, str]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        if stream.orphaned is not None:
            stream.orphaned.cancel()
            stream.orphaned = None
        stream.readers += 1
        try:
            await resp.prepare(request)
            while True:
                while stream.pending:
                    await resp.write(stream.take())
                if stream.finished:
                    break
                stream.wake.clear()
                await stream.wake.wait()
            sess.streams.pop(stream.key, None)
        finally:
            stream.readers -= 1
            if not stream.finished and stream.call is not None and not stream.readers:
                # lost mid-call: resumable for a while, then the call is cancelled
                stream.orphaned = asyncio.get_running_loop().call_later(
                    RESUME_GRACE, _give_up, sess, stream)
            sess.last_seen = time.monotonic()
        return resp

    async def get(self, request: web.Request) -> web.StreamResponse:
        ident = self._who(request)
        if "text/event-stream" not in request.headers.get("Accept", "text/event-stream"):
            raise _http(406, "GET serves text/event-stream only")
        sess = self._session(request, ident)
        last = request.headers.get("Last-Event-ID")
        if last is not None:
            return await self._resume(request, sess, last)
        if sess.standalone is not None and sess.standalone.readers:
            raise _http(409, "this session already has its GET stream open")
        sess.standalone = sess.standalone or SseStream("get")
        return await self._pump(request, sess, sess.standalone, {})

    async def _resume(self, request: web.Request, sess: HttpSession, last: str
                      ) -> web.StreamResponse:
        try:
            seq = int(last)
        except ValueError:
            raise _http(400, f"Last-Event-ID {last!r} is not one corral gave") from None
        key = next((k for s, k, _ in sess.history if s == seq), None)
        if key is None:
            raise _http(404, f"event {last} is no longer kept: call again")
        stream = sess.streams.get(key) or (sess.standalone if key == "get" else None)
        if stream is None:  # finished and delivered before: replay what followed
            stream = SseStream(key)
            stream.finished = True
        stream.pending.clear()
        stream.pending_bytes = 0
        for s, k, p in sess.history:
            if k == key and s > seq:
                stream.queue(sse.format_event(p, str(s)))
        return await self._pump(request, sess, stream, {})

    async def delete(self, request: web.Request) -> web.Response:
        sess = self._session(request, self._who(request))
        assert sess.id is not None
        self._end(sess.id)
        return web.Response(status=200)

    async def metadata(self, request: web.Request) -> web.Response:
        """RFC 9728 protected-resource metadata: bearer tokens in the header; corral's
        tokens are issued by its operator (tokens_file), so no authorization server."""
        path = request.path.removeprefix(METADATA) or ENDPOINT
        # (as the client addressed it: the gateway may be served at several addresses)
        return web.json_response({"resource": f"{_origin(request)}{path}",
                                  "authorization_servers": [],
                                  "bearer_methods_supported": ["header"],
                                  "resource_name": "corral MCP gateway"})


class _Streams(Exception):
    """A POST read lean that is answered with a stream (aiohttp's, as it came)."""


def _origin(request: web.Request) -> URL:
    """As the client addressed it; a Host no URL has (empty too) localhost's, not a 500."""
    with contextlib.suppress(ValueError):
        return request.url.origin()
    return URL("http://localhost")


def _path(server: str | None) -> str:
    return ENDPOINT if server is None else f"{ENDPOINT}/{server}"


def _give_up(sess: HttpSession, stream: SseStream) -> None:
    stream.orphaned = None
    if not stream.readers and stream.call is not None and not stream.call.done():
        stream.call.cancel()
    sess.streams.pop(stream.key, None)


def _wants_progress(env: Envelope) -> bool:
    """Whether the request asked to be told things before its answer: its progress, or
    (a 2026-07-28 request) its server's log messages."""
    meta = envelope.meta_of(env) or {}
    return meta.get("progressToken") is not None or meta.get(META_LOG_LEVEL) is not None


def _json(request: web.Request, msg: Any, status: int, headers: dict[str, str] | None = None
          ) -> web.StreamResponse:
    return answer_json(request, msgspec.json.encode(msg), status, headers)


def _http(status: int, text: str, headers: dict[str, str] | None = None,
          rid: Id | None = None) -> web.HTTPException:
    """An HTTP error whose body is a JSON-RPC error, as MCP clients read it (with the
    request's id, when it was read)."""
    # (a header's byte that is no UTF-8 came as a surrogate, which JSON has not: escaped)
    text = text.encode(errors="surrogateescape").decode(errors="backslashreplace")
    body = msgspec.json.encode(ErrorResponse(rid, RpcError(
        jsonrpc.INVALID_REQUEST if status < 500 else jsonrpc.SERVER_ERROR, text).to_object()))
    cls: type[web.HTTPException] = _ERRORS[status]
    return cls(body=body, content_type="application/json", headers=headers)


_ERRORS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 403: web.HTTPForbidden,
    404: web.HTTPNotFound, 406: web.HTTPNotAcceptable, 409: web.HTTPConflict,
    503: web.HTTPServiceUnavailable}
