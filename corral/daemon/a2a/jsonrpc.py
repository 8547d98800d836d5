"""The JSON-RPC 2.0 binding (spec 9): one POST to `/a2a/AGENT`, the operation its method;
streams as SSE, each event a JSON-RPC response of the request's id."""

from __future__ import annotations

import functools
from typing import Any

import msgspec
from aiohttp import web

from ...jsonrpc import TOO_DEEP
from ..caller import Caller
from ..models.lean import answer_json
from . import sse
from . import wire as w
from .operations import STREAMING, Card, Operations


def error(req_id: Any, exc: w.A2aError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": exc.kind.jsonrpc, "message": exc.message}
    info = exc.info()
    if info:
        body["data"] = info
    return {"jsonrpc": "2.0", "id": req_id, "error": body}


def answer(request: web.Request, body: dict[str, Any], status: int = 200
           ) -> web.StreamResponse:
    return answer_json(request, msgspec.json.encode(body), status)


class _Envelope(msgspec.Struct):
    """A request's members as sent (checked by `read`), its params left undecoded."""

    jsonrpc: Any = None
    id: Any = None
    method: Any = None
    params: msgspec.Raw = msgspec.Raw(b"{}")


_envelope = msgspec.json.Decoder(_Envelope)
_ID_TYPES = (str, int, type(None))  # a request's id's (a union made once, not per request)


def streams(body: bytes) -> bool:
    """Whether a request's method is a stream's (one not read: no). A body that names
    neither stream, nor escapes a letter, is not read for it."""
    if b"Stream" not in body and b"Subscribe" not in body and b"\\u" not in body:
        return False
    try:
        method = _envelope.decode(body).method
    except (msgspec.DecodeError, RecursionError):
        return False
    return isinstance(method, str) and method in STREAMING


def read(body: bytes) -> tuple[Any, str, Any]:
    """(id, method, params) of a request; A2aError (with the id, when read) if none. Its
    params are decoded by the operation (wire.decode) from their bytes when no name in
    the body is snake_case, else given as decoded JSON."""
    try:
        msg = _envelope.decode(body)
    except msgspec.ValidationError:  # not an object
        msg = None
    except msgspec.DecodeError as exc:
        raise w.A2aError(w.PARSE, f"parse error: {exc}") from None
    except RecursionError:  # msgspec's depth limit: a 500 before (issue 88's attacks)
        raise w.A2aError(w.PARSE, f"parse error: {TOO_DEEP}") from None
    if msg is None or msg.jsonrpc != "2.0" or not isinstance(msg.method, str) \
            or not isinstance(msg.id, _ID_TYPES) or isinstance(msg.id, bool):
        raise w.A2aError(w.INVALID_REQUEST, "invalid request: a JSON-RPC 2.0 request "
                         "is an object with jsonrpc \"2.0\", a method and an id")
    params: Any = msg.params
    if bytes(memoryview(params)[:1]) != b"{":
        raise w.A2aError(w.INVALID_PARAMS, "invalid params: params is not an object")
    if w.snake_named(body):
        params = msgspec.json.decode(params)
    return msg.id, msg.method, params


async def serve(request: web.Request, body: bytes, ops: Operations, caller: Caller,
                agent: str, card: Card) -> web.StreamResponse:
    req_id: Any = None
    try:
        req_id, method, params = read(body)
        if method in STREAMING:
            events = await ops.stream(method, caller, agent, params, request)
            return await sse.write(
                request, events,
                (b'{"jsonrpc":"2.0","id":%b,"result":' % msgspec.json.encode(req_id), b"}"),
                functools.partial(error, req_id))  # (no closure: req_id no cell)
        result = await ops.call(method, caller, agent, params, card)
    except w.A2aError as exc:
        return answer(request, error(req_id, exc))
    return answer(request, {"jsonrpc": "2.0", "id": req_id, "result": result})
