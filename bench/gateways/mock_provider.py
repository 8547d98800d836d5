"""The instant mock OpenAI provider of bench/gateways, a process of its own: Chat
Completions, whole and streamed, answered from tests/servers/model_upstream.py's shapes
(`echo: TEXT`, usage 10 in and 5 out), each distinct answer built once and then served
from memory. Unlike that stand-in it keeps nothing of the requests it had: a run of
tens of thousands of them must not grow it, nor slow its answers.

    mock_provider.py PORT    (prints its address once it listens; serves until killed)
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.servers.model_upstream import APIS, last_text

CHAT = APIS["/v1/chat/completions"]
_made: dict[tuple[str, str, bool, bool], bytes] = {}


def answer_bytes(body: dict[str, Any]) -> tuple[bytes, bool]:
    """The answer to `body`, and whether it is a stream."""
    model, text = str(body.get("model", "")), f"echo: {last_text(body)}"
    stream = body.get("stream") is True
    usage = bool((body.get("stream_options") or {}).get("include_usage"))
    key = (model, text, stream, usage)
    if key not in _made:
        _made[key] = b"".join(CHAT.events(model, text, body)) if stream \
            else json.dumps(CHAT.body(model, text)).encode()
    return _made[key], stream


async def chat(request: web.Request) -> web.StreamResponse:
    raw, stream = answer_bytes(await request.json())
    if not stream:
        return web.Response(body=raw, content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(raw)
    await response.write_eof()
    return response


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(f"http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve(int(sys.argv[1])))
