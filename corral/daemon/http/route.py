"""An HTTP route for any control method: the request becomes a `Caller` and a call on the
one Dispatcher, so a method served over HTTP needs no handler code of its own; errors are
problem+json (RFC 9457)."""

from __future__ import annotations

import math
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import msgspec
from aiohttp import web

from ... import jsonrpc
from ...jsonrpc import RpcError
from ..api import Dispatcher, http_status
from ..caller import Caller

# who the request is: a transport's authentication (a bearer token, a unix peer)
Authenticate = Callable[[web.Request], Caller]
Route = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_BODY = 16 * 1024 * 1024 + 64 * 1024  # as the control socket's request line
# what a call whose params are all scalars is sent, at most: a few names and numbers
SMALL_BODY = 64 * 1024
# what a client told to come back later waits, unless something knows better
RETRY_AFTER = 1

PROBLEM = "application/problem+json"

# A problem's title is its status's name, whatever raised it: its `type` is
# about:blank, and RFC 9457 has such a title read as the status does. Which JSON-RPC
# error it was is the body's `code`; what happened is its `detail`.
TITLES = {
    400: "bad request", 401: "unauthorized", 403: "forbidden", 404: "not found",
    405: "method not allowed", 409: "conflict", 413: "request too large",
    415: "unsupported media type", 421: "misdirected request", 422: "unprocessable",
    429: "too many requests", 500: "internal server error", 503: "service unavailable",
    504: "gateway timeout",
}


def problem(status: int, detail: str, code: int | None = None,
            headers: Mapping[str, str] | None = None, *, reason: str = "error"
            ) -> web.Response:
    """A problem document (RFC 9457) titled by its status (`reason`, aiohttp's, for a
    status TITLES does not name)."""
    body: dict[str, Any] = {"type": "about:blank", "title": TITLES.get(status, reason.lower()),
                            "status": status, "detail": detail}
    if code is not None:
        body["code"] = code
    extra = dict(headers or {})
    if status in (429, 503):
        extra.setdefault("Retry-After", str(RETRY_AFTER))
    return web.Response(status=status, body=msgspec.json.encode(body),
                        content_type=PROBLEM, headers=extra)


def rpc_problem(exc: RpcError, headers: Mapping[str, str] | None = None) -> web.Response:
    """The one way an RpcError is answered over HTTP: its code's status, titled so."""
    status = http_status(exc.code)
    extra = dict(headers or {})
    if status in (429, 503) and isinstance(exc.data, dict) and exc.data.get("retry_after"):
        # a rate's refusal knows when the next is admitted; others take RETRY_AFTER
        extra["Retry-After"] = str(max(1, math.ceil(exc.data["retry_after"])))
    return problem(status, exc.message, exc.code, extra)


# what a 401 of a route that takes bearer tokens says of how to authenticate (RFC 9110)
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="corral"'}


def bearer_refusal(exc: RpcError) -> web.Response:
    """A failed authentication where a bearer token is asked for: a 401 names the
    scheme; a 403 (a dashboard cookie's write breaking a rule) does not."""
    return rpc_problem(exc, CHALLENGE if exc.code == jsonrpc.UNAUTHORIZED else None)


def _carries_document(tp: Any) -> bool:
    """Whether a field's type takes arbitrary JSON (Any, Raw, a dict of them) anywhere."""
    if tp is Any or tp is msgspec.Raw:
        return True
    return any(_carries_document(arg) for arg in typing.get_args(tp)
               if not isinstance(arg, msgspec.Meta))


def limit_of(types: Iterable[Any]) -> int:
    """The body a call whose fields have these types may send: read at request time, so
    that a test may change MAX_BODY."""
    return MAX_BODY if any(_carries_document(t) for t in types) else SMALL_BODY


def too_large(size: int | None, limit: int) -> web.Response:
    said = f"{size} bytes is" if size is not None else "the body is"
    return problem(413, f"{said} over the {limit}-byte limit")


async def body_of(request: web.Request, limit: int | None = None) -> bytes | web.Response:
    """The request's body, or the 413 that answers one over `limit` (MAX_BODY when not
    given): refused by its Content-Length before any of it is read, else as soon as
    what came passes the limit."""
    limit = MAX_BODY if limit is None else limit
    if request.content_length is not None and request.content_length > limit:
        return too_large(request.content_length, limit)
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            return too_large(None, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def route(dispatcher: Dispatcher[Any], method: str, authenticate: Authenticate) -> Route:
    """The aiohttp handler serving `method`: params are the JSON body (POST) or the
    query string (GET, each value a string as given)."""
    spec = Dispatcher.method(method)  # an unknown method is a programming error: raise now
    types = [info.type for info in msgspec.structs.fields(spec.params)]

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            caller = authenticate(request)
            # the scope before the body
            dispatcher.admit(caller, method)
        except RpcError as exc:  # 401 without a caller, 403 a write breaking a rule
            return rpc_problem(exc)
        if request.method == "GET":
            params: Any = dict(request.query)
        else:
            body = await body_of(request, limit_of(types))
            if isinstance(body, web.Response):
                return body
            params = body or None
        try:
            result = await dispatcher.call(caller, method, params)
        except RpcError as exc:
            return rpc_problem(exc)
        except Exception as exc:  # a defect: answered as one, as the socket does
            return rpc_problem(RpcError(jsonrpc.INTERNAL_ERROR,
                                        f"internal error: {jsonrpc.describe(exc)}"))
        return web.Response(body=msgspec.json.encode(result),
                            content_type="application/json")

    return handle
