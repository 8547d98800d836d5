"""The inbox's outbound webhook ([approvals] webhook): each ask made and each ask ended is
POSTed, as JSON, to the operator's URL (signing, retries and the queue's bound:
docs/approvals.md). Deliveries go one at a time, in the order the asks changed, so a
receiver that never answers holds only its own queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from ..supervisor.config import ApprovalsSettings
from ..supervisor.stream import Stream
from ..supervisor.tasks.inbox import AskEnded
from ..timeouts import cancel_all

if TYPE_CHECKING:
    import aiohttp

RETRY_FIRST = 0.5  # seconds before the first retry, doubled after each
RETRY_MAX = 30.0


class HookDelivery(NamedTuple):
    name: str  # X-Corral-Delivery
    body: bytes


def signature(secret: str, body: bytes) -> str:
    """The X-Corral-Signature of a body: what a receiver computes to check it."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def post(http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str],
               retries: int, held: contextlib.AbstractAsyncContextManager[Any]) -> str | None:
    """POST `body` until its receiver takes it (2xx), at most `retries` times again, each
    after twice the wait of the one before (the A2A door's pushes too); `held` for each
    attempt (a bound of posts in flight). None once taken, else why the last failed."""
    from aiohttp import ClientError

    why = ""
    for attempt in range(retries + 1):
        if attempt:
            await asyncio.sleep(min(RETRY_MAX, RETRY_FIRST * 2 ** (attempt - 1)))
        try:
            async with held, http.post(url, data=body, headers=headers,
                                       allow_redirects=False) as r:
                if 200 <= r.status < 300:
                    return None
                why = f"HTTP {r.status}"
        except (ClientError, TimeoutError, OSError) as exc:
            why = str(exc) or type(exc).__name__
    return why


class AskWebhook:
    """Deliveries of the asks told on `stream` to the webhook `settings` names."""

    def __init__(self, settings: ApprovalsSettings, stream: Stream,
                 report: Callable[[str], None]) -> None:
        self.settings = settings
        self.report = report
        self.queue: deque[HookDelivery] = deque()
        self.delivered = 0
        self.dropped = 0
        self.given_up = 0
        self._wakeup = asyncio.Event()
        self._full_told = False
        self._sub = stream.subscribe(self._told, AskEnded)
        self._stream = stream
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _told(self, e: AskEnded) -> None:
        if len(self.queue) >= self.settings.webhook_queue:
            self.dropped += 1
            if not self._full_told:
                self._full_told = True
                self.report(f"approvals webhook: a delivery of ask {e.ask.id} dropped: "
                            f"{len(self.queue)} wait for {self.settings.webhook}, the bound "
                            f"(webhook_queue {self.settings.webhook_queue})")
            return
        name = f"{e.ask.id}:{e.ask.end or 'pending'}"
        self.queue.append(HookDelivery(name, msgspec.json.encode(
            {"event": "approvals.ask", "delivery": name, "ask": e.ask})))
        self._wakeup.set()

    async def _run(self) -> None:
        # imported here: a daemon with no webhook does not pay aiohttp's import (~0.1 s)
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self.queue:
                    await self._deliver(http, self.queue[0])
                    self.queue.popleft()
                    self._full_told = False

    async def _deliver(self, http: aiohttp.ClientSession, d: HookDelivery) -> None:
        s = self.settings
        headers = {"Content-Type": "application/json", "X-Corral-Delivery": d.name,
                   "X-Corral-Signature": signature(s.webhook_secret, d.body)}
        why = await post(http, s.webhook, d.body, headers, s.webhook_retries,
                         contextlib.nullcontext())
        if why is None:
            self.delivered += 1
            return
        self.given_up += 1
        self.report(f"approvals webhook: delivery {d.name} given up after "
                    f"{s.webhook_retries + 1} attempts to {s.webhook} ({why})")

    async def close(self) -> None:
        self._stream.unsubscribe(self._sub)
        await cancel_all([self._task])
