"""The HTTP+JSON binding (spec 11): the operations as paths under `/a2a/AGENT`, errors as
AIP-193 documents with the protocol's ErrorInfo."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from aiohttp import web

from ...jsonrpc import TOO_DEEP
from ..caller import Caller
from ..models.lean import answer_json
from . import sse
from . import wire as w
from .operations import STREAMING, Card, Operations

# (HTTP method, path pattern) -> the operation; its groups are its params
ROUTES: list[tuple[str, re.Pattern[str], str, tuple[str, ...]]] = [
    (m, re.compile(p), op, names) for m, p, op, names in (
        ("POST", r"message:send", "SendMessage", ()),
        ("POST", r"message:stream", "SendStreamingMessage", ()),
        ("GET", r"tasks", "ListTasks", ()),
        ("GET", r"tasks/([^/:]+)", "GetTask", ("id",)),
        ("POST", r"tasks/([^/:]+):cancel", "CancelTask", ("id",)),
        ("POST", r"tasks/([^/:]+):subscribe", "SubscribeToTask", ("id",)),
        # (a2a.proto's binding is a GET; the TCK's client POSTs: both are served)
        ("GET", r"tasks/([^/:]+):subscribe", "SubscribeToTask", ("id",)),
        ("POST", r"tasks/([^/:]+)/pushNotificationConfigs",
         "CreateTaskPushNotificationConfig", ("taskId",)),
        ("GET", r"tasks/([^/:]+)/pushNotificationConfigs",
         "ListTaskPushNotificationConfigs", ("taskId",)),
        ("GET", r"tasks/([^/:]+)/pushNotificationConfigs/([^/:]+)",
         "GetTaskPushNotificationConfig", ("taskId", "id")),
        ("DELETE", r"tasks/([^/:]+)/pushNotificationConfigs/([^/:]+)",
         "DeleteTaskPushNotificationConfig", ("taskId", "id")),
        ("GET", r"extendedAgentCard", "GetExtendedAgentCard", ()),
    )]
INTEGERS = frozenset({"historyLength", "pageSize"})


def document(exc: w.A2aError) -> dict[str, Any]:
    """The error as AIP-193's document: an answer's body, or a stream's last event."""
    return {"error": {"code": exc.kind.http, "status": exc.kind.status,
                      "message": exc.message, "details": exc.info()}}


def error(request: web.Request, exc: w.A2aError) -> web.StreamResponse:
    return answer_json(request, msgspec.json.encode(document(exc)), exc.kind.http)


def query(request: web.Request) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in request.query.items():
        if key in INTEGERS:
            try:
                params[key] = int(value)
            except ValueError:
                raise w.A2aError(w.INVALID_PARAMS, f"invalid params: {key} {value!r} is "
                                 "not an integer") from None
        elif key == "includeArtifacts":
            params[key] = value.lower() == "true"
        else:
            params[key] = value
    return params


def route(method: str, path: str) -> tuple[str, dict[str, Any]]:
    allowed = False
    for verb, pattern, op, names in ROUTES:
        match = pattern.fullmatch(path)
        if match is None:
            continue
        if verb == method:
            return op, dict(zip(names, match.groups(), strict=True))
        allowed = True
    if allowed:
        raise w.A2aError(w.ErrorKind(-32601, 405, None, "UNIMPLEMENTED"),
                         f"{path} does not take {method}")
    raise w.A2aError(w.METHOD_NOT_FOUND, f"no such A2A operation: {method} {path}")


async def serve(request: web.Request, path: str, body: bytes, ops: Operations,
                caller: Caller, agent: str, card: Card) -> web.StreamResponse:
    try:
        op, params = route(request.method, path)
        if body:
            try:
                given = msgspec.json.decode(body)
            except msgspec.DecodeError as exc:
                raise w.A2aError(w.PARSE, f"the body is not JSON: {exc}") from None
            except RecursionError:  # msgspec's depth limit: a 500 before
                raise w.A2aError(w.PARSE, f"the body is not JSON: {TOO_DEEP}"
                                 ) from None
            if not isinstance(given, dict):
                raise w.A2aError(w.INVALID_PARAMS, "invalid params: the body is not an "
                                 "object")
            params = {**given, **params}
        params = {**query(request), **params}
        if op in STREAMING:
            events = await ops.stream(op, caller, agent, params, request)
            return await sse.write(request, events, (b"", b""), document)
        result = await ops.call(op, caller, agent, params, card)
    except w.A2aError as exc:
        return error(request, exc)
    return answer_json(request, msgspec.json.encode(result))
