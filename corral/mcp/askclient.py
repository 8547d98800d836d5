"""A server's requests for input asked of a 2025-11-25 client as its own requests: such a
client reads no `input_required`, so each relayed `inputRequests` goes to it as a request
on the call's channel, and its responses are the `inputResponses` the call is sent again
with. At most MAX_ASKED wait on one session, each at most `wait` seconds; a response is
matched by its id on the session that asked.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import msgspec
from msgspec import UNSET

from .. import jsonrpc
from ..jsonrpc import Envelope, Id, Request, RpcError

MAX_ASKED = 16
WAIT = 600.0  # `[gateway] input_wait`'s default; the HTTP transport gives its own


class PendingAsks:
    """The requests one session sent its client for a server, until it answers."""

    def __init__(self, wait: float = WAIT) -> None:
        self.wait = wait
        self.pending: dict[Id, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)

    async def ask(self, requests: Any, send: Callable[[Any], None]) -> dict[str, Any]:
        """Each of a server's `inputRequests` sent to the client; its answers, by their keys."""
        if not isinstance(requests, dict) or not requests:
            raise RpcError(jsonrpc.INVALID_REQUEST,
                           "the server asked for input without inputRequests")
        if len(self.pending) + len(requests) > MAX_ASKED:
            raise RpcError(jsonrpc.REFUSED,
                           f"the server asked {len(requests)} input requests with "
                           f"{len(self.pending)} waiting on this session: past "
                           f"MAX_ASKED ({MAX_ASKED}), the requests a session's client "
                           "is asked at once")
        loop = asyncio.get_running_loop()
        asked: dict[str, tuple[Id, asyncio.Future[Any]]] = {}
        try:
            for key, req in requests.items():
                rid = f"corral-input-{next(self._ids)}"
                fut = self.pending[rid] = loop.create_future()
                asked[key] = (rid, fut)
                params = req.get("params", {}) if isinstance(req, dict) else {}
                send(Request(str(req.get("method") if isinstance(req, dict) else ""), rid,
                             params))
            async with asyncio.timeout(self.wait):
                return {key: _decoded(await fut) for key, (_, fut) in asked.items()}
        except TimeoutError:
            raise RpcError(jsonrpc.REQUEST_TIMEOUT,
                           f"the client did not answer the server's input requests within "
                           f"[gateway] input_wait {self.wait:g} s") from None
        finally:
            for sent, fut in asked.values():
                self.pending.pop(sent, None)
                fut.cancel()

    def answered(self, env: Envelope) -> None:
        """A response from the client: the request it answers gets it (one corral did
        not send, or sent and gave up on, is nothing to act on)."""
        fut = self.pending.get(env.id) if isinstance(env.id, int | str) else None
        if fut is None or fut.done():
            return
        if env.error is not UNSET:
            fut.set_exception(RpcError(env.error.code, f"the client answered the server's "
                                                       f"input request with an error: "
                                                       f"{env.error.message}"))
        else:
            fut.set_result(env.result)

    def close(self) -> None:
        for fut in self.pending.values():
            fut.cancel()
        self.pending.clear()


def _decoded(result: Any) -> Any:
    if isinstance(result, msgspec.Raw):
        return msgspec.json.decode(result)
    return None if result is UNSET else result
