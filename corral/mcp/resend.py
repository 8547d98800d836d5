"""A POST that a server's idle close crossed, sent again once where repeating it cannot do a
thing twice (decision 1865). A server closes a keep-alive connection that sat idle past
its limit; a request sent on it as it closes is reset unread, before any answer. HTTP lets a
client send such a request again only when it knows the request's effect is none or the
same twice (RFC 9112 section 9.3.1), which the MCP method says: a read, a listing, a ping,
the handshake, a notification. A `tools/call`, or anything else that may act, is not sent
again: its failure is the caller's to see, as a reset does not prove the server never read
it (it may have failed mid-call).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import aiohttp

# MCP methods whose repetition does nothing more than their first sending
REPEATABLE = frozenset({
    "initialize", "server/discover", "ping", "tools/list", "prompts/list", "resources/list",
    "resources/templates/list", "resources/read", "prompts/get", "completion/complete"})


def repeatable(method: str | None, request_id: object) -> bool:
    """`method` with `request_id` (None: a notification) is safe to send twice."""
    if method is None:
        return False  # a response to the server's request: its sender acts on it
    return request_id is None or method in REPEATABLE


class _ConnectionNote:
    """What a POST's trace tells of its connection."""

    __slots__ = ("reused",)

    def __init__(self) -> None:
        self.reused = False


async def _reused(_session: aiohttp.ClientSession, ctx: SimpleNamespace, _params: Any
                  ) -> None:
    # (a request sent with no `_ConnectionNote`, the stream's GET or a DELETE, is told nothing)
    if isinstance(sent := ctx.trace_request_ctx, _ConnectionNote):
        sent.reused = True


def tracing() -> aiohttp.TraceConfig:
    """What a session's requests need to tell a kept connection from a new one."""
    trace = aiohttp.TraceConfig()
    trace.on_connection_reuseconn.append(_reused)
    return trace


async def posted(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession, url: str,
                 data: bytes, headers: dict[str, str], safe: bool,
                 fresh: Callable[[aiohttp.TCPConnector], aiohttp.ClientSession]
                 ) -> aiohttp.ClientResponse:
    """The response to `data` POSTed on `http` (made with `tracing()`), held open by
    `stack`. Failed on a kept connection before its response began, a `safe` request is
    sent once more on a connection of its own, made by `fresh` (a session as `http` is,
    on the connector given)."""
    sent = _ConnectionNote()
    try:
        return await stack.enter_async_context(
            http.post(url, data=data, headers=headers, trace_request_ctx=sent))
    except aiohttp.ClientConnectorError:
        raise  # no connection was made: nothing crossed a close
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
        if not (safe and sent.reused):
            raise
    alone = await stack.enter_async_context(fresh(aiohttp.TCPConnector(force_close=True)))
    return await stack.enter_async_context(alone.post(url, data=data, headers=headers))
