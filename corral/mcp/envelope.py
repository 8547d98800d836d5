"""A 2026-07-28 request's envelope, checked before any handler sees it (SEP-2575, SEP-2243).

The stateless revision has no handshake: every request carries, in `params._meta`, the
version it speaks and the client's capabilities, and over Streamable HTTP says its
version, method and target again in headers. A request that breaks this is refused here,
with its own id and an HTTP status: docs/gateway.md's table has each refusal (a method
the revision removed is one a 2025-11-25 session still has).

Which requests are of the revision: over HTTP, one without a session that names a version
corral's sessions do not speak (in the header or `_meta`), or any request but `initialize`
and `ping` that names none (a 2025-11-25 client begins with `initialize`, and may ping
before it); over stdio, the same of a client that has not initialized, and any request
that names a version in `_meta`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, NamedTuple

import msgspec
from msgspec import UNSET

from .. import jsonrpc
from ..jsonrpc import Envelope, ErrorResponse, RpcError
from .client import LEGACY, META_CAPABILITIES, META_VERSION, STATELESS, SUPPORTED

HEADER_MISMATCH = -32020
UNSUPPORTED_PROTOCOL_VERSION = -32022  # with data.supported and data.requested
REMOVED = frozenset({"initialize", "ping", "logging/setLevel", "resources/subscribe",
                     "resources/unsubscribe"})
# what a 2025-11-25 client may send before it has a session
LEGACY_FIRST = frozenset({"initialize", "ping"})
# the body's field each method's Mcp-Name mirrors
NAMED = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri",
         # the tasks extension's (SEP-2663: Mcp-Name is the taskId)
         "tasks/get": "taskId", "tasks/update": "taskId", "tasks/cancel": "taskId"}
_B64 = ("=?base64?", "?=")  # SEP-2243's form of a value that is not printable ASCII
_one = msgspec.json.Decoder(Envelope)
_batch = msgspec.json.Decoder(list[Envelope])


class Mirror(NamedTuple):
    """What a Streamable HTTP request's headers say of its body (None: absent)."""

    version: str | None
    method: str | None
    name: str | None


class Refusal(NamedTuple):
    """A request refused for its envelope: the error, and its Streamable HTTP status."""

    error: RpcError
    status: int


def parse(body: bytes) -> list[Envelope] | ErrorResponse:
    """A message's envelopes (a batch's, or its one), or the error that answers it."""
    try:
        if (why := jsonrpc.not_utf8(body)) is not None:  # (msgspec keeps params Raw)
            raise msgspec.DecodeError(f"JSON is malformed: {why}")
        return _batch.decode(body) if body[:1] == b"[" else [_one.decode(body)]
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        code = jsonrpc.INVALID_REQUEST if isinstance(exc, msgspec.ValidationError) \
            else jsonrpc.PARSE_ERROR
        said = jsonrpc.TOO_DEEP if isinstance(exc, RecursionError) else str(exc)
        return ErrorResponse(None, RpcError(code, f"{jsonrpc.ERROR_NAMES[code]}: {said}"
                                            ).to_object())


def meta_of(env: Envelope) -> dict[str, Any] | None:
    raw = b"" if env.params is UNSET else bytes(env.params)
    if b"_meta" not in raw and b"\\" not in raw:  # (none, not even escaped: not decoded)
        return None
    try:
        params = msgspec.json.decode(raw)
    except msgspec.DecodeError:  # valid JSON, not Python's (a number out of range)
        return None
    meta = params.get("_meta") if isinstance(params, dict) else None
    return meta if isinstance(meta, dict) else None


def is_request(env: Envelope) -> bool:
    return env.method is not UNSET and env.id is not UNSET and env.id is not None


def stateless(env: Envelope, mirror: Mirror | None) -> bool:
    """Whether a request that belongs to no session is of the 2026-07-28 revision."""
    if not is_request(env):
        return False
    said = mirror.version if mirror is not None else None
    if said is not None and said not in LEGACY:
        return True
    meta = meta_of(env)
    if meta is not None and META_VERSION in meta:
        return True
    return env.method not in LEGACY_FIRST and said is None


def check(env: Envelope, mirror: Mirror | None) -> Refusal | None:
    assert isinstance(env.method, str)
    try:
        params = msgspec.json.decode(env.params) if env.params is not UNSET else {}
    except msgspec.DecodeError:  # valid JSON, not Python's (a number out of range)
        return None
    if not isinstance(params, dict):
        return None  # the handler says "must be an object"
    meta = params.get("_meta")
    if not isinstance(meta, dict):
        return _invalid("a 2026-07-28 request carries _meta with "
                        f"{META_VERSION} and {META_CAPABILITIES} (a 2025-11-25 client "
                        "sends initialize first)")
    version = meta.get(META_VERSION)
    if not isinstance(version, str):
        return _invalid(f"_meta has no {META_VERSION}")
    if not isinstance(meta.get(META_CAPABILITIES), dict):
        return _invalid(f"_meta has no {META_CAPABILITIES} object")
    if mirror is not None:
        mismatch = _mismatch(env.method, params, version, mirror)
        if mismatch is not None:
            return Refusal(RpcError(HEADER_MISMATCH, f"header mismatch: {mismatch}"), 400)
    if version != STATELESS:
        return Refusal(RpcError(UNSUPPORTED_PROTOCOL_VERSION,
                                f"unsupported protocol version: {version!r}",
                                {"supported": list(SUPPORTED), "requested": version}), 400)
    if env.method in REMOVED:
        return Refusal(RpcError(jsonrpc.METHOD_NOT_FOUND,
                                f"method not found: {env.method} (not in 2026-07-28)"), 404)
    return None


def _invalid(why: str) -> Refusal:
    return Refusal(RpcError(jsonrpc.INVALID_PARAMS, f"invalid params: {why}"), 400)


def _mismatch(method: str, params: dict[str, Any], version: str, mirror: Mirror
              ) -> str | None:
    """What the headers say otherwise than the body, in words, or None."""
    if mirror.version is not None and mirror.version.strip() != version:
        return f"MCP-Protocol-Version is {mirror.version!r}, _meta says {version!r}"
    if mirror.method is None:
        return "no Mcp-Method header"
    if mirror.method.strip() != method:
        return f"Mcp-Method is {mirror.method!r}, the body's method {method!r}"
    field = NAMED.get(method)
    named = params.get(field) if field else None
    if not isinstance(named, str):
        return None
    if mirror.name is None:
        return f"no Mcp-Name header for {method} of {field} {named!r}"
    said = _decoded(mirror.name.strip())
    if said != named:
        return f"Mcp-Name is {mirror.name!r}, the body's {field} {named!r}"
    return None


def _decoded(value: str) -> str | None:
    if not (value.startswith(_B64[0]) and value.endswith(_B64[1])):
        return value
    try:
        return base64.b64decode(value[len(_B64[0]):-len(_B64[1])], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
