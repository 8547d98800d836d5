"""The A2A routes of the [http] server: `/a2a/AGENT/.well-known/agent-card.json` and the
two bindings at `/a2a/AGENT`. Who calls is found as on REST (a bearer token), or, for
an agent `[a2a] anonymous` names, no one: a caller limited to that agent. An agent the
caller may not see is not found, as on REST."""

from __future__ import annotations

import collections
import functools
import hashlib
import re
import time
from email.utils import formatdate
from typing import Any, cast

import msgspec
from aiohttp import web

from ... import jsonrpc
from ...jsonrpc import RpcError, visible
from ...ratelimit import PerKey
from ...supervisor.addresses import loopback
from ...supervisor.config import DEFAULT_TENANT, AgentSpec
from ...tracecontext import parse_or_none
from ..caller import A2A_VIA, Caller
from ..http import route
from ..http.auth import authenticate
from ..http.context import HttpContext
from ..http.sse import Streams
from ..http.tokenstreams import TokenStreams
from ..models.answers import Exchange
from ..models.lean import LeanRequest, Serve, respond
from ..tokens import tokens_of
from . import card, httpjson
from . import jsonrpc as rpc
from . import wire as w
from .door import SENT_CONTEXT, A2aDoor
from .operations import Operations
from .push import PushConfigs

PREFIX = "/a2a"
_NAMED = len(PREFIX) + 1  # where the agent's name begins in a path of the door's
# the POSTs read lean (models/lean.py): a message to an agent (a name aiohttp's router reads
# as it came: no escape, no dot segment), JSON-RPC or HTTP+JSON's SendMessage
_LEAN = re.compile(r"/a2a/([^/%.][^/%]*)(/message:send)?")
CARD_PATH = ".well-known/agent-card.json"
JSON_TYPES = frozenset({"application/json", "application/a2a+json"})
CARD_MAX_AGE = 300  # seconds a client may keep a card
# what an anonymous caller may do: run the agent's tasks, read them, answer their asks
ANONYMOUS_SCOPES = frozenset({"tasks:run", "tasks:read", "approvals"})
# the anonymous callers kept made and bound (one an agent and address): the least
# recently seen made again when asked
KEPT_ANONYMOUS = 1024
# the cards whose first-served time is kept (their Last-Modified), the least recently
# served forgotten: a card names the Host it was asked by, so each Host is another card
KEPT_CARDS = 256


class A2aRoutes:
    def __init__(self, ctx: HttpContext) -> None:
        self.ctx = ctx  # its `a2a` read at each request: a reload hands it the file's
        # the push configs' home: the cluster's with [cluster] (any node delivers), else
        # the node's state database
        home = ctx.services.cluster.push or ctx.services.task_engine.push
        self.ops = Operations(A2aDoor(ctx.dispatcher, ctx.services.stream),
                              PushConfigs(ctx.a2a.push_private, ctx.services.hub.daemon,
                                          home),
                              Streams(ctx.settings.max_streams,
                                      ctx.settings.max_streams_per_token),
                              TokenStreams(tokens_of(ctx.services.store)))
        self.limiter = PerKey(ctx.settings.rate_per_minute)
        self.no_one = functools.lru_cache(maxsize=KEPT_ANONYMOUS)(self._no_one)
        # a card's digest -> when first served (an LRU: one a Host asked by, KEPT_CARDS)
        self.cards: collections.OrderedDict[bytes, float] = collections.OrderedDict()

    def spec(self, request: web.Request, agent: str, caller: Caller | None) -> AgentSpec:
        """The agent's spec, if it is one the caller sees (None: anonymous, the agents the
        operator named); else not found."""
        known = self.ctx.services.agents.get(agent)
        found = known.spec if known is not None else None
        if found is not None and found.protocol == "none":
            found = None  # a plain program takes no tasks: no A2A agent
        seen = found is not None and (
            caller.sees(agent) if caller is not None else self.anonymous(request, agent))
        if found is None or not seen:
            raise w.A2aError(w.ErrorKind(-32601, 404, None, "NOT_FOUND"), f"no such agent: "
                             f"{agent}")
        return found

    def anonymous(self, request: web.Request, agent: str) -> bool:
        settings = self.ctx.a2a  # (as the last reload left it)
        return agent in settings.anonymous and (
            settings.anonymous_remote or _loopback(request.remote or ""))

    def caller(self, request: web.Request, agent: str) -> Caller | None:
        """The request's caller, bound (the Dispatcher's `bind`, once a request); None for
        one with no token (anonymous, maybe)."""
        if "Authorization" not in request.headers:
            return None
        try:
            return self.ctx.dispatcher.bind(authenticate(self.ctx, request))
        except RpcError as exc:
            raise w.A2aError(w.UNAUTHENTICATED if exc.code == jsonrpc.UNAUTHORIZED
                             else w.FORBIDDEN, exc.message) from None

    def acting(self, request: web.Request, agent: str, caller: Caller | None,
               spec: AgentSpec | None = None) -> Caller:
        """Who the operation is made as: the caller, or the anonymous caller limited to
        the agent (its tenant's, if not the operator's). `spec`: the agent's, as `spec`
        found it for this caller (for no one: the agent is anonymous to this request)."""
        if caller is not None:  # (a token's holder, by the A2A door: submitted.py)
            made = msgspec.structs.replace(caller, via=A2A_VIA)  # (bound as it was)
        elif spec is not None or self.anonymous(request, agent):
            tenant = (spec or self.ctx.services.agents[agent].spec).tenant
            made = self.no_one(agent, request.remote or "",
                               None if tenant == DEFAULT_TENANT else tenant)
        else:
            raise w.A2aError(w.UNAUTHENTICATED, "unauthorized: no bearer token (send "
                             "Authorization: Bearer <token>)")
        wait = self.limiter.admit(made.who)
        if wait > 0:
            raise w.A2aError(w.REFUSED, f"{made.who} is over its "
                             f"{self.limiter.per_minute} requests per minute")
        return made

    def _no_one(self, agent: str, remote: str, tenant: str | None) -> Caller:
        """An anonymous caller of the address `remote`, made and bound once for the
        requests it makes (`no_one`): a message's links read who it is several times."""
        # no one, but one no one per address off this host (`anonymous_remote`): its
        # tasks hold its name as their label, and are its alone (decision 1171); on
        # loopback every caller has the one address, which tells them apart not
        who = f"a2a anonymous {agent}" + ("" if _loopback(remote) else f" at {remote}")
        return self.ctx.dispatcher.bind(Caller(via=A2A_VIA, name=who, agents=agent,
                                               tenant=tenant, scopes=ANONYMOUS_SCOPES))

    def card_of(self, request: web.Request, spec: AgentSpec) -> dict[str, Any]:
        public = self.ctx.a2a.url  # (set, the card names no request's Host)
        base = f"{public or f'{request.scheme}://{request.host}'}{PREFIX}/{spec.name}"
        return card.card_of(spec, base, anonymous=spec.name in self.ctx.a2a.anonymous)

    async def card(self, request: web.Request) -> web.StreamResponse:
        agent = request.match_info["agent"]
        try:
            caller = self.caller(request, agent)
            spec = self.spec(request, agent, caller)
        except w.A2aError as exc:
            return route.problem(exc.kind.http, exc.message)
        body = msgspec.json.encode(self.card_of(request, spec))
        digest = hashlib.sha256(body).digest()
        since = self._since(digest)
        etag = f'"{digest[:12].hex()}"'
        headers = {"Cache-Control": f"{'public' if caller is None else 'private'}, "
                   f"max-age={CARD_MAX_AGE}", "Last-Modified": formatdate(since, usegmt=True),
                   "ETag": etag}
        if self.ctx.a2a.url is None:
            # (its URL is the Host's: a cache keyed by the path alone would serve a card a
            # caller asked with a Host of its own to every client)
            headers["Vary"] = "Host"
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type="application/json", headers=headers)

    def _since(self, digest: bytes) -> float:
        """When the card of `digest` was first served, as far as the kept cards recall."""
        cards = self.cards
        since = cards.get(digest)
        if since is None:
            since = cards[digest] = time.time()
            if len(cards) > KEPT_CARDS:
                cards.popitem(last=False)
        else:
            cards.move_to_end(digest)
        return since

    def posts(self, path: str) -> Serve | None:
        """What serves a POST of `path` read lean: `lean`, for a message to an agent."""
        return self.lean if _LEAN.fullmatch(path) else None

    async def lean(self, ex: Exchange) -> bool:
        """A POST models/lean.py read, served as aiohttp's is (aiohttp's request machinery
        was a fifth of a message's CPU); False, nothing done, for one aiohttp's is to
        serve as it came: a stream, a query (a name given twice is read otherwise), a
        Cookie (the dashboard's session: LeanRequest reads none)."""
        agent, _, rest = ex.path[_NAMED:].partition("/")
        body = ex.raw or b""
        if ex.query or "cookie" in ex.headers or (not rest and rpc.streams(body)):
            return False
        respond(ex, await self.serve(cast(web.Request, LeanRequest(
            ex, {"agent": agent, "rest": rest})), body))
        counted, key = self.ctx.requests, (_ROUTES[bool(rest)], str(ex.status))
        counted[key] = counted.get(key, 0) + 1  # (metrics.py's count)
        return True

    async def serve(self, request: web.Request, body: bytes | None = None
                    ) -> web.StreamResponse:
        """A request of either binding; `body` its body when read already (lean.py's,
        within its bound, which is under body_of's)."""
        agent = request.match_info["agent"]
        path = request.match_info.get("rest", "").strip("/")
        binding = "jsonrpc" if not path and request.method == "POST" else "http_json"
        try:
            version = request.headers.get("A2A-Version")
            if version is not None and version not in ("1.0", "1"):
                raise w.A2aError(w.VERSION_NOT_SUPPORTED, f"A2A-Version {visible(version)} is not "
                                 f"served: this agent speaks {w.VERSION}")
            caller = self.caller(request, agent)
            spec = self.spec(request, agent, caller)
            made = self.acting(request, agent, caller, spec)
            if body is None:
                read = await route.body_of(request)
                if isinstance(read, web.Response):
                    return read
                body = read
            if body and request.content_type not in JSON_TYPES:
                raise w.A2aError(w.CONTENT_TYPE, f"send the body as application/json, not "
                                 f"{request.content_type}")
        except w.A2aError as exc:
            if binding == "jsonrpc":
                return rpc.answer(request, rpc.error(None, exc), exc.kind.http
                                  if exc.kind.http in (401, 403, 404, 429) else 200)
            return httpjson.error(request, exc)

        # (a partial, not a closure: its names would be cells, each read of them dearer)
        card_now = functools.partial(self.card_of, request, spec)
        # the caller's trace context, as REST reads it: one not of the format is none
        sent, said = request.headers.get("traceparent"), None  # (most send none)
        if sent is not None:
            parent = parse_or_none(sent, request.headers.get("tracestate"))
            if parent is not None:
                said = SENT_CONTEXT.set((sent, parent.tracestate))
        try:
            if binding == "jsonrpc":
                return await rpc.serve(request, body, self.ops, made, agent, card_now)
            return await httpjson.serve(request, path, body, self.ops, made, agent, card_now)
        finally:
            if said is not None:
                SENT_CONTEXT.reset(said)


# a request's address read once (an IP's parse was three of a message's every time)
_loopback = functools.lru_cache(maxsize=1024)(loopback)


# the routes' patterns as aiohttp names them (metrics.py's label)
_ROUTES = (f"{PREFIX}/{{agent}}", f"{PREFIX}/{{agent}}/{{rest}}")


def setup(app: web.Application, ctx: HttpContext) -> A2aRoutes:
    a2a = A2aRoutes(ctx)

    async def close(app: web.Application) -> None:
        await a2a.ops.close()

    async def resume(app: web.Application) -> None:
        await a2a.ops.resume()

    app.on_startup.append(resume)
    app.on_cleanup.append(close)
    app.add_routes([
        web.get(f"{PREFIX}/{{agent}}/{CARD_PATH}", a2a.card),
        web.route("*", f"{PREFIX}/{{agent}}", a2a.serve),
        web.route("*", f"{PREFIX}/{{agent}}/{{rest:.*}}", a2a.serve),
    ])
    return a2a
