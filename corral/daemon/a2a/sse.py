"""A stream's events as Server-Sent Events: each with the id of the chunk it tells, when
it tells one, so that a client resumes after it (Last-Event-ID)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web

from ..http import sse
from . import wire as w
from .operations import Events

WRITE_DEADLINE = 60.0


async def write(request: web.Request, events: Events, framed: tuple[bytes, bytes],
                failed: Callable[[w.A2aError], Any]) -> web.StreamResponse:
    """`framed`: the bytes before and after an event's JSON in its frame's data (JSON-RPC
    wraps it: one encoding of the event alone, not of a wrapper made each event);
    `failed`: an error after the stream opened, as its last frame."""
    head, tail = b"data: " + framed[0], framed[1] + b"\n\n"
    response = await sse.open_stream(request)
    try:
        async for batch in events:  # (a write a batch, BATCH_BYTES at most: a replay's
            parts, size = [], 0    # 1,000 events were 1,000 writes)
            for event_id, event in batch:
                data = (b"id: %b\n" % event_id.encode() if event_id is not None else b"") + \
                    head + msgspec.json.encode(event) + tail
                parts.append(data)
                size += len(data)
                if size >= sse.BATCH_BYTES:
                    await sse.send(request, response, b"".join(parts), WRITE_DEADLINE)
                    parts, size = [], 0
            if parts:
                await sse.send(request, response, b"".join(parts), WRITE_DEADLINE)
    except w.A2aError as exc:
        with contextlib.suppress(ConnectionResetError):
            await sse.send(request, response, b"data: " + msgspec.json.encode(
                failed(exc)) + b"\n\n", WRITE_DEADLINE)
    except ConnectionResetError:
        return response
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response
