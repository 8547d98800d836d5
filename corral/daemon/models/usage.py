"""A model call's usage as its upstream said it, in either format, whole or streamed: what
the budgets count (supervisor/tasks/budget.py), never what the agent says.

- Chat Completions: `usage.prompt_tokens` and `completion_tokens` (a stream's last chunk
  before `[DONE]`, which the gateway asks for with `stream_options.include_usage`);
- Responses: `usage.input_tokens` and `output_tokens` (a stream's `response.completed`);
- Messages: `usage.input_tokens` (with the cache's creation and read tokens) and
  `output_tokens` (a stream's `message_start`, then each `message_delta`'s running count).
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec

from .wire import field

_decode = msgspec.json.Decoder()


class CallUsage:
    """Tokens in and out, and the model the upstream says answered."""

    __slots__ = ("input", "model", "output")

    def __init__(self) -> None:
        self.input = 0
        self.output = 0
        self.model: str | None = None

    def read(self, answer: Any) -> None:
        """Take what one JSON answer (or one streamed event's data) says."""
        if not isinstance(answer, dict):
            return
        if answer.get("type") == "message_start" and isinstance(answer.get("message"), dict):
            answer = answer["message"]  # Messages' stream: its first event holds the input
        elif isinstance(answer.get("response"), dict):
            answer = answer["response"]  # Responses' stream: response.completed
        model = answer.get("model")
        if isinstance(model, str):
            self.model = model
        usage = answer.get("usage")
        if not isinstance(usage, dict):
            return
        inp = _tokens(usage, "prompt_tokens") + _tokens(usage, "input_tokens") + \
            _tokens(usage, "cache_creation_input_tokens") + \
            _tokens(usage, "cache_read_input_tokens")
        if inp:
            self.input = inp  # a stream's later event restates it, never adds to it
        out = _tokens(usage, "completion_tokens") + _tokens(usage, "output_tokens")
        if out:
            self.output = out  # message_delta's count is the running total

    def read_body(self, body: bytes) -> None:
        with contextlib.suppress(msgspec.DecodeError):  # not JSON: no usage said (none)
            self.read(_decode.decode(body))

    def read_event(self, event: bytes) -> None:
        """An SSE event of a stream: read when its data may say usage."""
        if b'"usage"' not in event and b'"model"' not in event:
            return
        data = field(event, b"data")
        if data is not None and data != b"[DONE]":
            self.read_body(data)


def _tokens(usage: dict[str, Any], key: str) -> int:
    value = usage.get(key)
    return value if type(value) is int and 0 <= value <= 10**15 else 0
