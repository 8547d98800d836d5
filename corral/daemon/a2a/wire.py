"""What an A2A request carries (ProtoJSON of a2a.proto, v1.0), decoded with msgspec, and
the protocol's errors with their code on each binding."""

from __future__ import annotations

import re
from typing import Any, Literal, NamedTuple, TypeVar

import msgspec
from msgspec import UNSET, UnsetType

VERSION = "1.0"
DOMAIN = "a2a-protocol.org"


class ErrorKind(NamedTuple):
    """An error of the protocol (spec 5.4): its JSON-RPC code, HTTP status, ErrorInfo
    reason (None: a JSON-RPC error of its own) and google.rpc status."""

    jsonrpc: int
    http: int
    reason: str | None
    status: str


PARSE = ErrorKind(-32700, 400, None, "INVALID_ARGUMENT")
INVALID_REQUEST = ErrorKind(-32600, 400, None, "INVALID_ARGUMENT")
METHOD_NOT_FOUND = ErrorKind(-32601, 404, None, "UNIMPLEMENTED")
INVALID_PARAMS = ErrorKind(-32602, 400, None, "INVALID_ARGUMENT")
INTERNAL = ErrorKind(-32603, 500, None, "INTERNAL")
TASK_NOT_FOUND = ErrorKind(-32001, 404, "TASK_NOT_FOUND", "NOT_FOUND")
NOT_CANCELABLE = ErrorKind(-32002, 409, "TASK_NOT_CANCELABLE", "FAILED_PRECONDITION")
UNSUPPORTED = ErrorKind(-32004, 400, "UNSUPPORTED_OPERATION", "UNIMPLEMENTED")
CONTENT_TYPE = ErrorKind(-32005, 415, "CONTENT_TYPE_NOT_SUPPORTED", "INVALID_ARGUMENT")
VERSION_NOT_SUPPORTED = ErrorKind(-32009, 400, "VERSION_NOT_SUPPORTED", "UNIMPLEMENTED")
# corral's own refusals, told in the binding's terms
UNAUTHENTICATED = ErrorKind(-32600, 401, None, "UNAUTHENTICATED")
FORBIDDEN = ErrorKind(-32600, 403, None, "PERMISSION_DENIED")
REFUSED = ErrorKind(-32600, 429, None, "RESOURCE_EXHAUSTED")
CONFLICT = ErrorKind(-32600, 409, None, "ALREADY_EXISTS")
UNAVAILABLE = ErrorKind(-32603, 503, None, "UNAVAILABLE")


class A2aError(Exception):
    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def info(self) -> list[dict[str, Any]]:
        """The google.rpc.ErrorInfo a protocol error carries (none for JSON-RPC's own)."""
        if self.kind.reason is None:
            return []
        return [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                 "reason": self.kind.reason, "domain": DOMAIN}]


class Wire(msgspec.Struct, rename="camel", omit_defaults=True):
    """A ProtoJSON message: camelCase names (snake_case ones taken too: `camel`)."""


class Part(Wire):
    text: str | UnsetType = UNSET
    raw: str | UnsetType = UNSET  # base64
    url: str | UnsetType = UNSET
    data: Any = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET
    filename: str | UnsetType = UNSET
    media_type: str | UnsetType = UNSET


class Message(Wire):
    message_id: str
    role: Literal["ROLE_USER", "ROLE_AGENT"]
    parts: list[Part]
    context_id: str | UnsetType = UNSET
    task_id: str | UnsetType = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET
    extensions: list[str] | UnsetType = UNSET
    reference_task_ids: list[str] | UnsetType = UNSET


class Authentication(Wire):
    scheme: str
    credentials: str | UnsetType = UNSET


class PushConfig(Wire):
    """A TaskPushNotificationConfig."""

    url: str
    id: str | UnsetType = UNSET
    task_id: str | UnsetType = UNSET
    token: str | UnsetType = UNSET
    authentication: Authentication | UnsetType = UNSET
    tenant: str | UnsetType = UNSET


class SendConfiguration(Wire):
    accepted_output_modes: list[str] | UnsetType = UNSET
    task_push_notification_config: PushConfig | UnsetType = UNSET
    history_length: int | UnsetType = UNSET
    return_immediately: bool = False


class SendRequest(Wire):
    message: Message
    configuration: SendConfiguration | UnsetType = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET
    tenant: str | UnsetType = UNSET


class TaskRequest(Wire):
    """GetTask's, CancelTask's and SubscribeToTask's."""

    id: str
    history_length: int | UnsetType = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET
    tenant: str | UnsetType = UNSET


class ListTasksRequest(Wire):
    context_id: str | UnsetType = UNSET
    status: str | UnsetType = UNSET
    page_size: int | UnsetType = UNSET
    page_token: str | UnsetType = UNSET
    history_length: int | UnsetType = UNSET
    status_timestamp_after: str | UnsetType = UNSET
    include_artifacts: bool | UnsetType = UNSET
    tenant: str | UnsetType = UNSET


class PushConfigRequest(Wire):
    """Get- and DeleteTaskPushNotificationConfig's."""

    task_id: str
    id: str
    tenant: str | UnsetType = UNSET


class ListPushConfigsRequest(Wire):
    task_id: str
    page_size: int | UnsetType = UNSET
    page_token: str | UnsetType = UNSET
    tenant: str | UnsetType = UNSET


_SNAKE = re.compile(r"_([a-z0-9])")
# values the caller's own (a data part, metadata): their keys are left as sent
_OPAQUE = frozenset({"data", "metadata", "params"})


def camel(value: Any) -> Any:
    """A ProtoJSON value's field names as camelCase (parsers take either, spec 5.5),
    walked on a list of its own: a body the JSON decoder takes raised RecursionError out
    of a recursive walk, two frames a level (decision 2110)."""
    made = [value]
    todo: list[tuple[Any, Any, Any]] = [(value, made, 0)]  # (a value, its container, where)
    while todo:
        given, into, at = todo.pop()
        if into[at] is not given:
            continue  # (a name sent twice, snake_case and camelCase: its last value kept)
        if isinstance(given, dict):
            out: dict[str, Any] = {}
            into[at] = out
            for k, v in given.items():
                name = k if "_" not in k else _SNAKE.sub(_upper, k)
                out[name] = v
                if k not in _OPAQUE and isinstance(v, _WALKED):
                    todo.append((v, out, name))
        elif isinstance(given, list):
            into[at] = items = list(given)
            todo.extend((v, items, i) for i, v in enumerate(items) if isinstance(v, _WALKED))
    return made[0]


_WALKED = (dict, list)


def _upper(m: re.Match[str]) -> str:
    return m.group(1).upper()


# a member named in snake_case in a JSON text (a quote inside a string is escaped, so
# what matches is a name; one that is not, in a value, costs camel's walk alone)
_SNAKE_NAME = re.compile(rb'"[A-Za-z0-9]*_[A-Za-z0-9_]*"\s*:')


def snake_named(body: bytes) -> bool:
    """Whether some member of the JSON text may be named in snake_case (`camel`'s work)."""
    return _SNAKE_NAME.search(body) is not None


T = TypeVar("T")


def decode(value: Any, into: type[T]) -> T:
    """`value` (decoded JSON, or the bytes of an object whose names are all camelCase)
    as `into`, or InvalidParams saying what is wrong."""
    try:
        if isinstance(value, msgspec.Raw):
            typed = _decoder(into).decode(value)
        else:
            typed = msgspec.convert(camel(value if value is not None else {}), into)
    except msgspec.ValidationError as exc:
        raise A2aError(INVALID_PARAMS, f"invalid params: {exc}") from None
    if isinstance(typed, SendRequest):
        check_message(typed.message)
    return typed


_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}  # each type's, made at its first use


def _decoder(into: type[T]) -> msgspec.json.Decoder[T]:
    made = _decoders.get(into)
    if made is None:
        made = _decoders[into] = msgspec.json.Decoder(into)
    return made


def check_message(message: Message) -> None:
    if not message.message_id:
        raise A2aError(INVALID_PARAMS, "invalid params: message.messageId is empty")
    if not message.parts:
        raise A2aError(INVALID_PARAMS, "invalid params: message.parts is empty")
    for i, part in enumerate(message.parts):
        # (counted without a name each: the names are read for a refusal alone)
        if (part.text is not UNSET) + (part.raw is not UNSET) + (part.url is not UNSET) \
                + (part.data is not UNSET) != 1:
            _not_one(i, part)


def _not_one(i: int, part: Part) -> None:
    """The refusal of a part of no content or of several (a function of its own: the
    check's loop then reads its part as a local, not a closure's cell)."""
    given = [n for n in ("text", "raw", "url", "data") if getattr(part, n) is not UNSET]
    raise A2aError(INVALID_PARAMS, f"invalid params: message.parts[{i}] has "
                   f"{' and '.join(given) or 'no content'}: give one of text, raw, url, data")


def to_json(value: Any) -> Any:
    """A wire value as plain JSON (camelCase, unset fields left out)."""
    return msgspec.to_builtins(value)
