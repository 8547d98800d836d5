"""The text a streamed model answer adds, event by event, in each wire format: what the
model gateway feeds a task's live output with (docs/streams.md) as the answer passes
through — Chat Completions' `choices[].delta.content`, Responses'
`response.output_text.delta`, Messages' `content_block_delta` of type `text_delta`.
Anything else (a role, a tool call's arguments, usage, the end) adds no text."""

from __future__ import annotations

from typing import Any


def text_in(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    kind = body.get("type")
    if kind == "response.output_text.delta":
        return _text(body.get("delta"))
    if kind == "content_block_delta":
        delta = body.get("delta")
        return _text(delta.get("text")) if isinstance(delta, dict) and delta.get(
            "type") == "text_delta" else None
    choices = body.get("choices")
    if isinstance(choices, list):
        texts = [_text(c.get("delta", {}).get("content")) for c in choices
                 if isinstance(c, dict) and isinstance(c.get("delta"), dict)]
        return "".join(t for t in texts if t) or None
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
