"""A stand-in model provider speaking OpenAI's Chat Completions and Responses and
Anthropic's Messages, whole and streamed (SSE), for the model gateway's tests and bench
(this machine reaches no provider). It answers `echo: TEXT` for the last user message,
with usage 10 tokens in and 5 out, and keeps every request it had (path, the key it was
sent, the body) so that a test can count the calls that really reached it.

What the last user message says steers it:
- `cut`: a stream cut after its first events (the connection closed mid-body);
- `endcut`: a stream's every event but its usage in one write, then its connection closed
  before the chunked end;
- `stall`: a stream that stops after its first three events, its connection kept open
  (a caller's timeout ends it);
- `slow`: no answer at all, its connection kept open (a caller's timeout ends it);
- `hold`: the echo once the test sets `release` (its request taken meanwhile);
- `half`: a whole answer cut mid-body (its Content-Length not reached);
- `status NNN`: answered with that status and an error quoting the key it was sent (as a
  provider's 401 does), in the endpoint's format;
- `flaky N`: a 503 (as `status 503`) for the first N requests of this text, then the echo.

    model_upstream.py PORT    (the bench's: serves until killed)
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

from aiohttp import web

USAGE_IN, USAGE_OUT = 10, 5


def last_text(body: dict[str, Any]) -> str:
    """The last user message's text, in any of the three request shapes."""
    items = body.get("messages") or body.get("input") or []
    if isinstance(items, str):
        return items
    for item in reversed(items):
        if item.get("role") not in (None, "user"):
            continue
        content = item.get("content")
        if isinstance(content, str):
            return content
        for part in content or []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                return str(part["text"])
    return ""


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    text = data if isinstance(data, str) else json.dumps(data)
    return f"{head}data: {text}\n\n".encode()


def chat_events(model: str, text: str, usage: bool) -> list[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
                    "model": model, "choices": [{"index": 0, "delta": delta,
                                                 "finish_reason": finish}]})
    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": word}) for word in _words(text)]
    out.append(chunk({}, "stop"))
    if usage:
        out.append(sse({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
                        "model": model, "choices": [], "usage": _openai_usage()}))
    return [*out, sse("[DONE]")]


def responses_events(model: str, text: str) -> list[bytes]:
    done = responses_body(model, text)
    out = [sse({"type": "response.created", "sequence_number": 0,
                "response": {**done, "status": "in_progress", "output": [],
                             "usage": None}}, "response.created")]
    out += [sse({"type": "response.output_text.delta", "sequence_number": i + 1,
                 "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": w,
                 "logprobs": []}, "response.output_text.delta")
            for i, w in enumerate(_words(text))]
    return [*out, sse({"type": "response.completed", "sequence_number": len(out) + 1,
                       "response": done}, "response.completed")]


def messages_events(model: str, text: str) -> list[bytes]:
    start = {**messages_body(model, ""), "content": [],
             "usage": {"input_tokens": USAGE_IN, "output_tokens": 1}}
    out = [sse({"type": "message_start", "message": start}, "message_start"),
           sse({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}, "content_block_start")]
    out += [sse({"type": "content_block_delta", "index": 0,
                 "delta": {"type": "text_delta", "text": w}}, "content_block_delta")
            for w in _words(text)]
    out += [sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            sse({"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                    "stop_sequence": None},
                 "usage": {"output_tokens": USAGE_OUT}}, "message_delta"),
            sse({"type": "message_stop"}, "message_stop")]
    return out


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


def _openai_usage() -> dict[str, int]:
    return {"prompt_tokens": USAGE_IN, "completion_tokens": USAGE_OUT,
            "total_tokens": USAGE_IN + USAGE_OUT}


def chat_body(model: str, text: str) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": text}}],
            "usage": _openai_usage()}


def responses_body(model: str, text: str) -> dict[str, Any]:
    return {"id": "resp_1", "object": "response", "created_at": 0, "status": "completed",
            "model": model, "output": [{"type": "message", "id": "msg_1",
                                        "status": "completed", "role": "assistant",
                                        "content": [{"type": "output_text", "text": text,
                                                     "annotations": []}]}],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "usage": {"input_tokens": USAGE_IN, "output_tokens": USAGE_OUT,
                      "total_tokens": USAGE_IN + USAGE_OUT,
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}}}


def messages_body(model: str, text: str) -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": USAGE_IN, "output_tokens": USAGE_OUT}}


class Api(NamedTuple):
    """One provider API as the stand-in speaks it."""

    anthropic: bool  # its errors in Anthropic's shape
    events: Callable[[str, str, dict[str, Any]], list[bytes]]  # (model, text, request)
    body: Callable[[str, str], dict[str, Any]]  # (model, text)


APIS = {
    "/v1/chat/completions": Api(
        False, lambda model, text, asked: chat_events(
            model, text, bool((asked.get("stream_options") or {}).get("include_usage"))),
        chat_body),
    "/v1/responses": Api(False, lambda model, text, _: responses_events(model, text),
                         responses_body),
    "/v1/messages": Api(True, lambda model, text, _: messages_events(model, text),
                        messages_body),
}


class StandIn:
    """The provider: its routes, and every request it had."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.app = web.Application()
        for path, api in APIS.items():
            self.app.router.add_post(path, functools.partial(self.answer, api))
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.closing = asyncio.Event()  # what a stalled stream waits for
        self.release = asyncio.Event()  # what a held answer waits for

    def calls(self, path: str | None = None) -> int:
        return sum(1 for r in self.requests if path is None or r["path"] == path)

    async def start(self, port: int = 0) -> str:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        bound = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{bound}"
        return self.url

    async def close(self) -> None:
        self.closing.set()
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()

    async def _take(self, request: web.Request) -> tuple[dict[str, Any], str, str]:
        body = await request.json()
        key = request.headers.get("x-api-key") or \
            request.headers.get("authorization", "").removeprefix("Bearer ")
        self.requests.append({"path": request.path, "key": key, "body": body,
                              "headers": dict(request.headers)})
        return body, last_text(body), key

    def _failed(self, text: str, key: str, anthropic: bool) -> web.Response | None:
        if text.startswith("flaky "):  # a 503 for the first N requests of this text
            seen = sum(1 for r in self.requests if last_text(r["body"]) == text)
            if seen > int(text.split()[1]):
                return None
            text = "status 503"
        if not text.startswith("status "):
            return None
        status = int(text.split()[1])
        message = f"Incorrect API key provided: {key}. (stand-in {status})"
        body = ({"type": "error", "error": {"type": "api_error", "message": message}}
                if anthropic else {"error": {"message": message, "type": "server_error",
                                             "param": None, "code": None}})
        return web.json_response(body, status=status)

    async def _stream(self, request: web.Request, events: list[bytes], cut: bool,
                      stall: bool = False) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "x-request-id": "req_standin"})
        await response.prepare(request)
        for i, event in enumerate(events):
            if cut and i == 2:
                assert request.transport is not None
                request.transport.abort()  # mid-body: no chunked end, no last event
                return response
            if stall and i == 3:
                await self.closing.wait()
                return response
            await response.write(event)
        await response.write_eof()
        return response

    @staticmethod
    async def _half(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json",
                                               "Content-Length": "100"})
        await response.prepare(request)
        await response.write(b'{"id": "chatcmpl-1", "choi')
        assert request.transport is not None
        request.transport.abort()
        return response

    async def answer(self, api: Api, request: web.Request) -> web.StreamResponse:
        """A request to one API: failed as its text asks, else echoed, whole or streamed
        (cut after two events for the text "cut")."""
        body, text, key = await self._take(request)
        failed = self._failed(text, key, api.anthropic)
        if failed is not None:
            return failed
        model = body.get("model", "")
        if text == "slow":
            await self.closing.wait()
            return web.Response(status=503)
        if text == "half":
            return await self._half(request)
        if text == "hold":
            await self.release.wait()
        if body.get("stream") and text == "endcut":  # all but usage in one write, then
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)  # closed before the chunked end
            await response.write(b"".join(e for e in api.events(model, f"echo: {text}", body)
                                          if b'"usage"' not in e))
            assert request.transport is not None
            request.transport.close()
            return response
        if body.get("stream"):
            return await self._stream(request, api.events(model, f"echo: {text}", body),
                                      text == "cut", text == "stall")
        return web.json_response(api.body(model, f"echo: {text}"),
                                 headers={"x-request-id": "req_standin"})


async def _serve(port: int) -> None:
    stand_in = StandIn()
    print(await stand_in.start(port), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1])))
