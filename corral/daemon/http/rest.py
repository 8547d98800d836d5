"""The REST API (`/api/v1`, docs/http.md, "The REST API"): one generic handler serves
every row of `RESOURCES` (authenticate, rate limit, params from the request, one call on
the Dispatcher, the answer as JSON or problem+json). Nothing here knows what a method does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from typing import Any

import msgspec
import msgspec.inspect as mi
from aiohttp import web, web_urldispatcher

from ... import jsonrpc
from ...jsonrpc import RpcError
from ...methods import REGISTRY, EventsFollow, Resource
from ...ratelimit import PerKey
from ...tracecontext import parse_or_none
from ..api import Dispatcher
from ..caller import Caller
from ..eventhandlers import event_tenant
from ..tokens import tokens_of
from . import bodies, index, openapi, route, sse
from .auth import authenticate, bearer
from .context import HttpContext
from .idempotency import MAX_KEY_LENGTH, Answer, IdempotencyKeys, Pending
from .resources import PREFIX, RESOURCES
from .tokenstreams import TokenStreams

JSON = "application/json"
IDEMPOTENCY_KEY = "Idempotency-Key"
KEPT_KEY = "idempotency_key"  # a param that takes the header (kept by the method)


@cache
def _fields(method: str) -> dict[str, mi.Field]:
    """Read, never changed: msgspec's inspection of a Struct evaluates every annotation
    (0.5-0.9 ms), which every request paid before (the soak: a fifth of the daemon's CPU)."""
    info = mi.type_info(REGISTRY[method].params)
    assert isinstance(info, mi.StructType)
    return {f.encode_name: f for f in info.fields}


def _keeps_key(res: Resource) -> bool:
    """Whether a resource's Idempotency-Key is its method's param, kept by the method
    (a task's), rather than in memory here."""
    return res.idempotent and KEPT_KEY in _fields(res.method)


def _is_list(f: mi.Field) -> bool:
    t = f.type
    if isinstance(t, mi.UnionType):
        return any(isinstance(x, mi.ListType) for x in t.types)
    return isinstance(t, mi.ListType)


class Api:
    def __init__(self, ctx: HttpContext) -> None:
        self.ctx = ctx
        self.dispatcher: Dispatcher[Any] = ctx.dispatcher
        self.limiter = PerKey(ctx.settings.rate_per_minute)
        self.keys = IdempotencyKeys()
        self.ring = sse.EventRing(ctx.dispatcher, ctx.settings.event_ring)
        self.streams = sse.Streams(ctx.settings.max_streams,
                                   ctx.settings.max_streams_per_token)
        self.tokens = tokens_of(ctx.services.store)
        # the open streams of each token (a dashboard session's under the token it was
        # made from): revoking the token ends them
        self.by_token = TokenStreams(self.tokens)

    # -- the way in ----------------------------------------------------------------------
    def caller(self, request: web.Request) -> Caller | web.Response:
        try:
            caller = authenticate(self.ctx, request)
        except RpcError as exc:  # no token (401), or a dashboard write breaking a rule (403)
            return route.bearer_refusal(exc)
        refused = self.rated(caller)
        return caller if refused is None else refused

    def rated(self, caller: Caller) -> web.Response | None:
        """The 429 of a caller past `[http] rate_per_minute` (None: counted, it goes): a
        token's requests, and a dashboard session's calls (its token's sessions' own)."""
        wait = self.limiter.admit(caller.who)
        if wait <= 0:
            return None
        return route.problem(
            429, f"{caller.who} is over its {self.limiter.per_minute} requests per minute",
            jsonrpc.REFUSED, {"Retry-After": str(math.ceil(wait))})

    # -- params from the request ----------------------------------------------------------
    @staticmethod
    def query_params(request: web.Request, res: Resource, fields: dict[str, mi.Field]
                     ) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for key in request.query:
            if key == sse.LAST_ID and res.stream is not None:
                continue  # the stream's resumption point (sse.py), not a param
            if key not in res.query:
                raise RpcError(jsonrpc.INVALID_PARAMS,
                               f"invalid params: unknown query parameter `{key}`"
                               + (f" (known: {', '.join(res.query)})" if res.query else ""))
            if key in params:
                continue
            values = request.query.getall(key)
            if _is_list(fields[key]):
                params[key] = [v for value in values for v in value.split(",") if v]
            elif len(values) > 1:
                raise RpcError(jsonrpc.INVALID_PARAMS,
                               f"invalid params: query parameter `{key}` given twice")
            else:
                params[key] = values[0]
        return params

    def params(self, request: web.Request, res: Resource, body: bytes) -> Any:
        """The method's params from the path, the query string and the body, or RpcError
        (400)."""
        spec = REGISTRY[res.method]
        fields = _fields(res.method)
        params = self.query_params(request, res, fields)
        given = bodies.decode(body, bodies.body_type(spec.params, res.body), res.body)
        params.update({name: value for name in given.__struct_fields__
                       if (value := getattr(given, name)) is not msgspec.UNSET})
        for var, name in res.path_params.items():
            value = request.match_info[var]
            params[name] = [value] if name == "names" else value
        key = request.headers.get(IDEMPOTENCY_KEY)
        if key is not None and _keeps_key(res):
            # a key the method keeps with what it makes (a task's, in its home:
            # corral/taskkeys.py), not in this process's memory
            if not key or len(key) > MAX_KEY_LENGTH:
                raise RpcError(jsonrpc.INVALID_REQUEST, "an Idempotency-Key is 1 to "
                                                        f"{MAX_KEY_LENGTH} characters")
            params[KEPT_KEY] = key
        if "traceparent" in fields and "traceparent" not in params:
            # one not of the format starts a new trace, as the W3C Recommendation asks; the
            # tracestate as parsed (none when not printable ASCII: a header's bytes that
            # are not UTF-8 arrive as text no store can write)
            traceparent = request.headers.get("traceparent")
            parent = parse_or_none(traceparent, request.headers.get("tracestate"))
            if parent is not None:
                params["traceparent"] = traceparent
                if parent.tracestate is not None:
                    params["tracestate"] = parent.tracestate
        try:
            return msgspec.convert(params, spec.params, strict=False)
        except msgspec.ValidationError as exc:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"invalid params: {exc}") from None

    # -- the handlers ---------------------------------------------------------------------
    def handler(self, res: Resource) -> route.Route:
        spec = REGISTRY[res.method]

        async def handle(request: web.Request) -> web.StreamResponse:
            caller = self.caller(request)
            if isinstance(caller, web.Response):
                return caller
            try:
                # refused before a byte of the body is read, with what the query
                # string asks for too
                self.dispatcher.admit(caller, res.method, request.query.keys())
            except RpcError as exc:
                return route.rpc_problem(exc)
            body = b""
            if request.body_exists:
                if request.content_type not in (JSON, "", "application/octet-stream"):
                    return route.problem(415, f"send the body as {JSON}, not "
                                              f"{request.content_type}")
                read = await route.body_of(request, route.limit_of(
                    _body_types(spec.params, res.body)))
                if isinstance(read, web.Response):
                    return read
                body = read
            try:
                params = self.params(request, res, body)
                if res.stream is not None:
                    return await self.stream(request, caller, res, params)
                return await self.idempotent(request, caller, res, body,
                                             lambda: self.answer(request, caller, res,
                                                                 params))
            except RpcError as exc:
                return route.rpc_problem(exc)
            except Exception as exc:  # a defect: answered as one, as the socket does
                return route.rpc_problem(RpcError(jsonrpc.INTERNAL_ERROR,
                                                  f"internal error: {jsonrpc.describe(exc)}"))

        return handle

    async def stream(self, request: web.Request, caller: Caller, res: Resource, params: Any,
                     *, token: str | None = None, until: float | None = None
                     ) -> web.StreamResponse:
        """An SSE stream, refused (503) past the caps on open streams, ended when `token`
        (the caller's, or a dashboard session's) is revoked or expires, or at `until`."""
        typed = tenant = None
        if token is None and caller.via == "http":
            token = caller.token
        if res.method == EventsFollow.declared.name:
            caller = self.dispatcher.bind(caller)  # (a tenant's caller sees its agents)
            _, typed, _ = self.dispatcher.check(caller, res.method, params)
            # the ring is every tenant's: a reader is sent the events of the tenant a
            # follower of its own would be in
            tenant = event_tenant(self.ctx.services.quotas, typed.tenant, caller)
        refused = self.streams.refusal(caller.who)
        if refused is not None:
            return refused
        with self.streams.held(caller.who), \
                self.by_token.lasting(request, token, until) as stop:
            if typed is not None:
                return await sse.events(request, self.ring, caller, typed, tenant, stop,
                                        self.ctx.settings.stream_write_timeout)
            return await sse.follow(request, self.dispatcher, caller, res.method, params,
                                    stop, self.ctx.settings.stream_write_timeout)

    async def answer(self, request: web.Request, caller: Caller, res: Resource,
                     params: Any) -> web.Response:
        result = await self.dispatcher.call(caller, res.method, params)
        headers = {}
        following = getattr(result, "next", None)
        if res.cursor is not None and isinstance(following, str):
            # the same request with the cursor of the next page (RFC 8288; relative to
            # the request's URL)
            url = request.rel_url.update_query({res.cursor: following})
            headers["Link"] = f'<{url}>; rel="next"'
        if res.location is not None:
            headers["Location"] = PREFIX + res.location.format_map(
                {k: getattr(result, k) for k in result.__struct_fields__})
        if getattr(result, "replayed", None) is True:
            headers["Idempotent-Replayed"] = "true"
        running = (res.done_when is not None
                   and getattr(result, res.done_when) is msgspec.UNSET)
        return web.Response(status=202 if running else 200,
                            body=msgspec.json.encode(result), content_type=JSON,
                            headers=headers or None)

    async def idempotent(self, request: web.Request, caller: Caller, res: Resource,
                         body: bytes, run: Callable[[], Any]) -> web.Response:
        """`run()`'s answer, or with an Idempotency-Key seen before, the first one's."""
        key = request.headers.get(IDEMPOTENCY_KEY)
        if key is None or not res.idempotent or _keeps_key(res):
            response: web.Response = await run()
            return response
        if not key or len(key) > MAX_KEY_LENGTH:
            return route.problem(400, "an Idempotency-Key is 1 to "
                                 f"{MAX_KEY_LENGTH} characters", jsonrpc.INVALID_REQUEST)
        who = caller.holder  # (a token's identity: a later one of its name is another)
        fingerprint = IdempotencyKeys.fingerprint(request.method, request.path,
                                                  request.query_string, body)
        try:
            first = self.keys.begin(who, key, fingerprint)
        except ValueError as exc:
            # a conflict with what the key was first sent with, not a request of the
            # wrong shape: the same request with a new key is answered
            return route.problem(409, f"{exc}: send a new key", jsonrpc.CONFLICT)
        if isinstance(first, Pending):
            return route.problem(409, "a request with this Idempotency-Key is "
                                 "still being answered: try again when it is",
                                 jsonrpc.CONFLICT)
        if first is not None:
            headers = {"Idempotent-Replayed": "true"}
            if first.location:
                headers["Location"] = first.location
            return web.Response(status=first.status, body=first.body,
                                content_type=first.content_type, headers=headers)
        kept: Answer | None = None
        try:
            try:
                response = await run()
            except RpcError as exc:
                response = route.rpc_problem(exc)
            # an answer that says "not now" is not the request's answer: it may be tried
            # again as new
            if response.status not in (429, 503) and response.status < 500:
                assert isinstance(response.body, bytes)
                kept = Answer(response.status, response.body, response.content_type,
                              response.headers.get("Location"))
            return response
        finally:
            self.keys.keep_answer(who, key, kept)


@web.middleware
async def problems(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own refusals under the API (no such path, a method the path does not
    take, a body over the limit) as problem+json too."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if not request.path.startswith(PREFIX + "/") or exc.status < 400:
            raise
        detail = {404: f"no such resource: {request.path}",
                  405: f"{request.path} does not take {request.method}"}.get(
                      exc.status, exc.text or exc.reason)
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return route.problem(exc.status, detail, headers=headers, reason=exc.reason)


def setup(app: web.Application, ctx: HttpContext) -> None:
    app.middlewares.append(problems)
    ctx.authenticators.append(bearer(tokens_of(ctx.services.store)))
    api = Api(ctx)
    app[API_KEY] = api

    async def close(app: web.Application) -> None:
        await api.ring.close()

    app.on_cleanup.append(close)
    app[sse.STREAMS] = set()
    app.on_shutdown.append(sse.close_streams)
    app.add_routes([web.route(res.verb, PREFIX + res.path, api.handler(res),
                              expect_handler=_expect) for res in RESOURCES])
    app.add_routes([web.get(PREFIX + "/openapi.json", openapi.handler()), *index.routes()])


@cache
def _body_types(params: type[msgspec.Struct], body: tuple[str, ...]) -> tuple[Any, ...]:
    """The types of a route's body fields, found at its first request with a body, not
    every route's at the mount: most routes of a daemon are never asked."""
    return tuple(bodies.field_types(params, body))


async def _expect(request: web.Request) -> None:
    """`Expect: 100-continue` answered as aiohttp does; any other expectation ignored (RFC
    9110 allows it): aiohttp's 417 in text/plain is a status the API documents nowhere."""
    if request.headers.get("Expect", "").lower() == "100-continue":
        await web_urldispatcher._default_expect_handler(request)


API_KEY: web.AppKey[Api] = web.AppKey("corral.rest", Api)
