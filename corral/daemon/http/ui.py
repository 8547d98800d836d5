"""The dashboard (`/ui`, docs/http.md, "The dashboard"): one page and its vendored
libraries under a strict Content-Security-Policy, one JSON endpoint through which the page
calls an allowlist of control methods on the one Dispatcher, and its SSE streams at
`GET /ui/stream/METHOD`. The login, the cookie and the checks of Host, Origin and the CSRF
token are the table in docs/http.md.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import html
import ipaddress
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgspec
import yarl
from aiohttp import web

from ... import jsonrpc
from ...jsonrpc import RpcError
from ...methods import REGISTRY, Resource, TracesGet
from ..caller import Caller
from ..tokens import TokenRevoked, Tokens, tokens_of
from ..visibility import open_to
from . import sse
from .context import HttpContext
from .resources import RESOURCES
from .rest import API_KEY
from .route import Route, problem, route, rpc_problem

STATIC = Path(__file__).with_name("static")
PREFIX = "/ui"
COOKIE = "corral_ui"
CSRF_HEADER = "X-CSRF-Token"

# long enough to copy a link from a terminal into a browser, short enough that a link
# left in a scrollback or a shell history is dead
CODE_TTL = 60.0
SESSION_TTL = 12 * 3600.0
# both stores are bounded for each party apart (a tenant, an agent glob, the operator): a
# caller with the admin scope could mint codes in a loop, and one store's oldest dropped
# whoever's they were let a tenant's admin log the operator and every tenant out
MAX_CODES = 32
MAX_SESSIONS = 64

# the control methods and streams declared `dashboard`: each is a REST route's too, so the
# page can do nothing a token of the same scopes could not
STREAMS = tuple(name for name, spec in REGISTRY.items()
                if spec.dashboard and any(r.stream is not None for r in spec.routes))
METHODS = tuple(name for name, spec in REGISTRY.items()
                if spec.dashboard and name not in STREAMS)

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# by suffix, not mimetypes: its table does not know .mjs everywhere, and under nosniff a
# module served as anything but JavaScript does not run
TYPES = {".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript",
         ".css": "text/css", ".md": "text/plain", ".png": "image/png",
         ".svg": "image/svg+xml"}


class LoginRefused(Exception):
    pass


@dataclass(kw_only=True)
class _Grant:
    caller: Caller
    expires: float
    # the bearer token that asked for the link (None: a socket peer): the session ends
    # with it, so that revoking a tenant's token also logs its pages out
    token: Caller | None = None
    # the socket peer that asked for it (uid, gid), whose session ends once the socket
    # would no longer take it as the session's tenant (its group given another, or none)
    peer: tuple[int, int] | None = None


@dataclass(kw_only=True)
class LoginSession(_Grant):
    id: str
    csrf: str


G = TypeVar("G", bound=_Grant)


def _drop_oldest(kept: dict[str, G], caller: Caller, bound: int) -> None:
    """The oldest of `kept` (codes or sessions, by their grants) of the caller's party
    dropped until it holds fewer than `bound`: another party's are never its to drop."""
    party = (caller.tenant, caller.agents)
    mine = [k for k, g in kept.items() if (g.caller.tenant, g.caller.agents) == party]
    for key in mine[:max(0, len(mine) - bound + 1)]:  # (dicts keep their order)
        del kept[key]


class Peers(Protocol):
    """The control socket's word on a peer (daemon/control.py ControlServer)."""

    def tenant_of(self, uid: int, gid: int) -> str | None: ...

    def authorized(self, uid: int, gid: int) -> bool: ...


@dataclass(kw_only=True)
class LoginSessions:
    """The one-time login codes and the sessions they became, in memory: a daemon restart
    logs every page out, which a new `corral ui` link mends."""

    clock: Callable[[], float] = time.time
    codes: dict[str, _Grant] = field(default_factory=dict)
    sessions: dict[str, LoginSession] = field(default_factory=dict)
    # the HTTP server's context, once ui.setup has mounted the dashboard on it
    context: HttpContext | None = None
    # the token store, asked whether the token a session came from still holds what it
    # held (set by ui.setup)
    tokens: Tokens | None = None
    # the control socket, asked whether a peer's session's uid and group still call as
    # its tenant
    peers: Peers | None = None

    @property
    def url(self) -> str:
        return self.context.url if self.context is not None else ""

    def issue(self, issuer: Caller) -> tuple[str, float]:
        """A one-time code for a session with the issuer's tenant, agents and scopes."""
        if issuer.via != "http" and issuer.token is not None:
            # a dashboard session's cookie authenticates the REST API too: the session it
            # asked for would be tied to no token, outliving the one this came from
            raise RpcError(jsonrpc.FORBIDDEN, "forbidden: a dashboard session asks for no "
                           "login link (the session it would open would not end with the "
                           "token this one came from): ask with that token")
        now = self.clock()
        self._prune(now)
        _drop_oldest(self.codes, issuer, MAX_CODES)
        code = secrets.token_urlsafe(24)
        expires = now + CODE_TTL
        # named for whoever asked for the link, so that the audit log and an ask's `by`
        # name the person (the token's holder, the socket's user), not every dashboard
        whose = issuer.token if issuer.token is not None else f"uid {issuer.uid}"
        caller = Caller(via="ui", uid=issuer.uid, gid=issuer.gid, token=f"dashboard ({whose})",
                        tenant=issuer.tenant, agents=issuer.agents, scopes=issuer.scopes)
        token = issuer if issuer.via == "http" and issuer.token is not None else None
        peer = (issuer.uid, issuer.gid) if issuer.via == "socket" else None
        self.codes[code] = _Grant(caller=caller, expires=expires, token=token, peer=peer)
        return code, expires

    def redeem(self, code: str) -> LoginSession:
        """The code is gone whatever the outcome."""
        now = self.clock()
        grant = self.codes.pop(code, None)
        self._prune(now)
        if grant is None:
            raise LoginRefused("this login link is not valid: it was used already, or it "
                               "never was; run `corral ui` for a new one")
        if grant.expires <= now:
            raise LoginRefused("this login link has expired; run `corral ui` for a new one")
        _drop_oldest(self.sessions, grant.caller, MAX_SESSIONS)
        session = LoginSession(id=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32),
                               caller=grant.caller, expires=now + SESSION_TTL,
                               token=grant.token, peer=grant.peer)
        self.sessions[session.id] = session
        return session

    def find(self, sid: str | None) -> LoginSession | None:
        if sid is None:
            return None
        session = self.sessions.get(sid)
        if session is not None and (session.expires <= self.clock() or (
                session.token is not None and not self._holds(session.token)) or (
                session.peer is not None and not self._peer_holds(session))):
            del self.sessions[sid]
            return None
        return session

    def _holds(self, caller: Caller) -> bool:
        """Whether the token a caller came with is still there, unexpired, with the same
        tenant, agents and scopes (a token revoked and made again under its name with
        other powers is another token)."""
        if self.tokens is None:
            return True  # no tokens to ask
        token = self.tokens.named(caller.token or "")
        return (token is not None and not token.expired(time.time())
                and (token.tenant, token.agents, token.scopes)
                == (caller.tenant, caller.agents, caller.scopes))

    def _peer_holds(self, grant: _Grant) -> bool:
        """Whether the socket peer a session came from is still taken on the socket, as
        the session's tenant (a reload may give its group another, or none)."""
        if self.peers is None or grant.peer is None:
            return True
        uid, gid = grant.peer
        try:
            return self.peers.authorized(uid, gid) and \
                self.peers.tenant_of(uid, gid) == grant.caller.tenant
        except RpcError:  # (in the groups of two tenants: refused on the socket)
            return False

    def revoked(self, e: TokenRevoked) -> None:
        """A token revoked: the sessions and unused links it asked for end now."""
        token = e.token
        for sid in [s for s, v in self.sessions.items()
                    if v.token is not None and v.token.token == token.name]:
            del self.sessions[sid]
        for code in [c for c, g in self.codes.items()
                     if g.token is not None and g.token.token == token.name]:
            del self.codes[code]

    def _prune(self, now: float) -> None:
        for code in [c for c, g in self.codes.items() if g.expires <= now]:
            # an expired code is kept until its link is tried once, to say "expired"
            # rather than "not valid"; past twice its life it is forgotten
            if now - self.codes[code].expires > CODE_TTL:
                del self.codes[code]
        for sid in [s for s, v in self.sessions.items() if v.expires <= now]:
            del self.sessions[sid]


class Guard:
    """The rules every `/ui` request meets: Host, then (for a call) session, Origin and
    CSRF token."""

    def __init__(self, ctx: HttpContext, sessions: LoginSessions) -> None:
        self.ctx = ctx
        self.sessions = sessions

    def _server(self) -> yarl.URL:
        return yarl.URL(self.ctx.url)

    def host_ok(self, host: str | None) -> bool:
        server = self._server()
        if server.scheme == "http+unix":
            return True  # no browser reaches a unix socket by a name it resolved
        if not host:
            return False
        try:
            asked = yarl.URL(f"{server.scheme}://{host}")
        except ValueError:
            return False
        if asked.port != server.port or asked.host is None or asked.user is not None:
            return False
        name = asked.host.lower().strip("[]")
        listen = (server.host or "").strip("[]")
        if name in (listen, "localhost"):
            return True
        try:
            literal = ipaddress.ip_address(name)
        except ValueError:
            literal = None
        if ipaddress.ip_address(listen).is_unspecified:
            # on every address: any address of ours, or this machine's own names
            return literal is not None or name in self._own_names
        return False

    @functools.cached_property
    def _own_names(self) -> set[str]:
        return {socket.gethostname().lower(), socket.getfqdn().lower()}

    def caller(self, request: web.Request) -> Caller | None:
        """The session's Caller, None without a session cookie; raises RpcError when a
        write breaks a rule. Also the HTTP server's authenticator for the cookie."""
        session = self.sessions.find(request.cookies.get(COOKIE))
        if session is None:
            return None
        if request.method not in ("GET", "HEAD"):
            self.check_write(request, session)
        return session.caller

    def check_write(self, request: web.Request, session: LoginSession) -> None:
        origin = request.headers.get("Origin")
        if origin != f"{self._server().scheme}://{request.host}":
            raise RpcError(jsonrpc.FORBIDDEN, "forbidden: a write needs this dashboard's "
                           "Origin header, and none was sent" if origin is None else
                           f"forbidden: Origin {origin!r} is not this dashboard's")
        token = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(token.encode(), session.csrf.encode()):
            raise RpcError(jsonrpc.FORBIDDEN,
                           f"forbidden: missing or wrong {CSRF_HEADER} header")

    def authenticate(self, request: web.Request) -> Caller:
        caller = self.caller(request)
        if caller is None:
            raise RpcError(jsonrpc.UNAUTHORIZED,
                           "unauthorized: no dashboard session (open the link that "
                           "`corral ui` prints)")
        return caller

    @web.middleware
    async def rules(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self.host_ok(request.headers.get("Host")):
            response: web.StreamResponse = problem(
                421, f"Host {request.headers.get('Host')!r} is not this server's")
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                response = problem(exc.status, f"{request.method} {request.path}: "
                                   f"{exc.reason}", reason=exc.reason)
        response.headers.update(SECURITY_HEADERS)
        response.headers.setdefault("Cache-Control", "no-store")
        return response


def _static_files() -> dict[str, tuple[bytes, str]]:
    """Every file the page may load, read once: nothing outside this table is served,
    whatever the path asked."""
    out: dict[str, tuple[bytes, str]] = {}
    for path in sorted(STATIC.rglob("*")):
        kind = TYPES.get(path.suffix) or ("text/plain" if path.name.startswith("LICENSE")
                                          else None)
        if path.is_file() and kind is not None:
            out[path.relative_to(STATIC).as_posix()] = (path.read_bytes(), kind)
    return out


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# the page a browser is shown for a login link refused: plain HTML under the same CSP (its
# stylesheet is the dashboard's own), saying what to do
REFUSED_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>corral: login link refused</title>
<link rel="icon" href="static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="static/app.css"></head>
<body><main><section id="login">
<h2>This login link does not work</h2>
<p id="why">{why}</p>
<p>A link logs in once, within a minute of being printed. On the daemon's machine, run
<code>corral ui</code> and open the new link it prints.</p>
</section></main></body>
</html>
"""


class Pages:
    def __init__(self, ctx: HttpContext, sessions: LoginSessions) -> None:
        self.ctx = ctx
        self.sessions = sessions
        self.guard = Guard(ctx, sessions)
        self.files = _static_files()
        self.calls: dict[str, Route] = {
            name: route(ctx.dispatcher, name, self.guard.authenticate) for name in METHODS}
        # each stream's REST row (the one without path variables where there are two),
        # its params and checks; a path's variables (a task's stream:
        # /tasks/{task_id}/stream) come in the query string here
        self.streams: dict[str, Resource] = {}
        for res in RESOURCES:
            if res.stream is not None and res.method in STREAMS and (
                    res.method not in self.streams or not res.path_params):
                self.streams[res.method] = _query_only(res)

    def app(self, streams: set[asyncio.Task[Any]]) -> web.Application:
        ui = web.Application(middlewares=[self.guard.rules])
        ui[sse.STREAMS] = streams  # the server's one set: all are ended at shutdown
        ui.add_routes([
            web.get("", self.to_index),
            web.get("/", self.index),
            web.get("/static/{path:.+}", self.asset),
            web.get("/login", self.login),
            web.get("/session", self.session_info),
            web.post("/logout", self.logout),
            web.post("/api/{method}", self.call),
            web.get("/stream/{method}", self.stream),
        ])
        return ui

    def static(self, name: str) -> web.Response:
        if name not in self.files:
            raise web.HTTPNotFound()
        body, kind = self.files[name]
        # revalidated each load: a daemon upgraded under an open tab serves its own page
        return web.Response(body=body, content_type=kind,
                            charset="utf-8" if kind.startswith("text/") else None,
                            headers={"Cache-Control": "no-cache"})

    async def index(self, request: web.Request) -> web.StreamResponse:
        return self.static("index.html")

    async def asset(self, request: web.Request) -> web.StreamResponse:
        return self.static(request.match_info["path"])

    async def to_index(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": f"{PREFIX}/"})

    async def login(self, request: web.Request) -> web.StreamResponse:
        try:
            session = self.sessions.redeem(request.query.get("code", ""))
        except LoginRefused as exc:
            # a browser's navigation: a page a person reads, not a problem
            if "text/html" in request.headers.get("Accept", ""):
                return web.Response(status=401, content_type="text/html",
                                    text=REFUSED_PAGE.format(why=html.escape(str(exc))))
            return problem(401, str(exc))
        response = web.Response(status=303, headers={"Location": f"{PREFIX}/"})
        response.set_cookie(COOKIE, session.id, path=PREFIX, httponly=True,
                            samesite="Strict", max_age=int(SESSION_TTL),
                            secure=self.ctx.url.startswith("https:"))
        return response

    async def session_info(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.find(request.cookies.get(COOKIE))
        if session is None:
            return problem(401, "no dashboard session (open the link "
                                "that `corral ui` prints)")
        # the methods the session may call: the page asks no other (nodes.list and
        # tenants.list are not a glob's; traces.get not of a daemon without [tracing])
        offered = [name for name in METHODS if open_to(session.caller, name)
                   and (name != TracesGet.declared.name
                        or self.ctx.services.traces is not None)]
        body = {"csrf": session.csrf, "expires": session.expires, "methods": offered,
                "streams": sorted(self.streams), "scopes": sorted(session.caller.scopes),
                "tenant": session.caller.tenant}
        return web.Response(body=msgspec.json.encode(body), content_type="application/json")

    async def logout(self, request: web.Request) -> web.StreamResponse:
        try:
            caller = self.guard.caller(request)
        except RpcError as exc:
            return rpc_problem(exc)
        if caller is not None:
            self.sessions.sessions.pop(request.cookies[COOKIE], None)
        response = web.Response(status=204)
        response.del_cookie(COOKIE, path=PREFIX)
        return response

    async def call(self, request: web.Request) -> web.StreamResponse:
        handle = self.calls.get(request.match_info["method"])
        if handle is None:
            return problem(404, f"{request.match_info['method']} is not a "
                                f"method the dashboard calls")
        session = self.sessions.find(request.cookies.get(COOKIE))
        if session is not None:  # (none: the handler's 401)
            # rated as the REST API's requests are: the same methods, the same bound
            refused = request.config_dict[API_KEY].rated(session.caller)
            if refused is not None:
                return refused
        return await handle(request)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """A stream for the page's EventSource: a GET, so no CSRF header (it changes
        nothing, and the SameSite=Strict cookie is not sent from another site's page)."""
        res = self.streams.get(request.match_info["method"])
        if res is None:
            return problem(404, f"{request.match_info['method']} is not a "
                                f"stream the dashboard follows")
        try:
            caller = self.guard.authenticate(request)
        except RpcError as exc:
            return rpc_problem(exc)
        session = self.sessions.find(request.cookies.get(COOKIE))
        assert session is not None  # (it authenticated the request)
        api = request.config_dict[API_KEY]
        try:
            params = api.params(request, res, b"")
            # it ends with the session, and with the token the session was made from
            return await api.stream(
                request, caller, res, params,
                token=session.token.token if session.token is not None else None,
                until=time.time() + session.expires - self.sessions.clock())
        except RpcError as exc:
            return rpc_problem(exc)


def _query_only(res: Resource) -> Resource:
    """A REST row whose path variables are given as query parameters (the page's stream
    URL is stream/METHOD)."""
    if not res.path_params:
        return res
    return msgspec.structs.replace(res, path_params={},
                                   query=(*res.query, *res.path_params.values()))


def setup(app: web.Application, ctx: HttpContext) -> None:
    sessions = ctx.services.ui
    if not isinstance(sessions, LoginSessions):  # no [http], or logins of another kind
        return
    sessions.context = ctx
    tokens = sessions.tokens = tokens_of(ctx.services.store)
    tokens.stream.subscribe(sessions.revoked, TokenRevoked)
    pages = Pages(ctx, sessions)
    ctx.authenticators.append(pages.guard.caller)
    app.add_subapp(PREFIX, pages.app(app[sse.STREAMS]))
