"""The providers' wire formats as the model gateway passes them through: which format
each endpoint is, where it goes upstream, how the upstream is given the key, how a
refusal is worded in each, and the last event of a streamed answer (held back until the
answer is journaled: docs/models.md)."""

from __future__ import annotations

from typing import Literal, NamedTuple

import msgspec

Format = Literal["openai", "anthropic"]


class Endpoint(NamedTuple):
    """An endpoint the gateway serves: its path, its format, and its path under the
    upstream's base URL (as that format's own SDK joins them)."""

    path: str
    format: Format
    upstream: str


ENDPOINTS = (
    Endpoint("/v1/chat/completions", "openai", "/chat/completions"),
    Endpoint("/v1/responses", "openai", "/responses"),
    Endpoint("/v1/messages", "anthropic", "/v1/messages"),
)

# the request headers a client's SDK sets that the upstream is to see too (its own
# credential, the host, cookies and the hop-by-hop ones never are)
PASSED_ON = ("accept", "anthropic-version", "anthropic-beta", "openai-beta",
             "idempotency-key")
# the answer's headers passed back besides its content type: the upstream's request id
# and what it says of its limits
PASSED_BACK_PREFIXES = ("x-request-id", "request-id", "retry-after", "x-ratelimit-",
                        "anthropic-ratelimit-", "openai-processing-ms")


def upstream_auth(fmt: Format, key: str) -> dict[str, str]:
    if fmt == "anthropic":
        return {"x-api-key": key}
    return {"authorization": f"Bearer {key}"}


def credential(authorization: str | None, api_key: str | None) -> str | None:
    """The corral token a client sent: OpenAI's SDKs send `Authorization: Bearer`,
    Anthropic's `x-api-key` (or Bearer, from an auth token)."""
    if api_key:
        return api_key
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


# an HTTP status -> the error type each format names it by
_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("invalid_api_key", "authentication_error"),
    403: ("permission_denied", "permission_error"),
    404: ("model_not_found", "not_found_error"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_exceeded", "rate_limit_error"),
    502: ("upstream_error", "api_error"),
}


def refusal(fmt: Format, status: int, message: str, param: str | None = None,
            code: str | None = None) -> bytes:
    """A refusal of corral's, in the body a client of the format parses (`param`: the
    member of the request at fault; `code`, when not its type)."""
    openai_type, anthropic_type = _TYPES.get(status, ("api_error", "api_error"))
    if fmt == "anthropic":
        return msgspec.json.encode({"type": "error", "error": {"type": anthropic_type,
                                                               "message": message}})
    return msgspec.json.encode({"error": {"message": message, "type": openai_type,
                                          "param": param, "code": code or openai_type}})


# the events that end a stream, by format: their `event:` kinds, and their `data:` (Chat
# Completions' `[DONE]`; None: none)
LAST: dict[str, tuple[tuple[bytes, ...], bytes | None]] = {
    "openai": ((b"response.completed", b"response.failed", b"response.incomplete"),
               b"[DONE]"),
    "anthropic": ((b"message_stop",), None)}


def event_read(event: bytes, last: tuple[tuple[bytes, ...], bytes | None]
               ) -> tuple[bytes | None, bool]:
    """An SSE event's first `data:` line's value (None where it has none), and whether
    the event ends its stream (`last`: its format's LAST; Chat Completions' `data: [DONE]`,
    Responses' `response.completed`, failed or incomplete, Messages' `message_stop`), read
    in one pass."""
    if event.startswith(b"data:") and b"\n" not in event:  # (one line: most events)
        line = event[5:].strip()
        return line, line == last[1]
    kind: bytes | None = None
    data: bytes | None = None
    for line in event.split(b"\n"):
        if data is None and line.startswith(b"data:"):
            data = line[5:].strip()
        elif kind is None and line.startswith(b"event:"):
            kind = line[6:].strip()
    return data, kind in last[0] or (data is not None and data == last[1])
