"""The upstreams, reached through one HTTP/1.1 client (http1.py: its connections kept
alive between calls). A 429, a 5xx or a failed connection is tried again as the model's
`retries` says, before any of the answer was passed on; then it is passed on as it came
(or, unreachable, a 502 naming the upstream), never dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ... import redact
from .http1 import UpstreamAnswer, UpstreamClient, UpstreamFailed, UpstreamUnanswered

if TYPE_CHECKING:
    from ...supervisor.config import ModelSpec

BACKOFF = 0.5  # seconds before the first try again, doubled for each next one
MAX_WAIT = 30.0  # the longest an upstream's Retry-After is waited for
RETRIED = frozenset({429, 500, 502, 503, 504, 529})  # 529: Anthropic's overloaded


class UpstreamDown(Exception):
    """The upstream could not be reached (or did not answer in time), every try;
    `unanswered`: the tries it took and did not answer in time (each may be billed)."""

    def __init__(self, message: str, unanswered: int = 0) -> None:
        super().__init__(message)
        self.unanswered = unanswered


class Upstream:
    """The client of every model's upstream."""

    def __init__(self) -> None:
        # no cookies kept (one agent's would be the next one's), no proxy from the
        # environment (the daemon's upstreams are the config's)
        self.client = UpstreamClient()
        self.retried = 0  # tries made again after a 429, 5xx or failed connection

    async def send(self, spec: ModelSpec, url: str, body: bytes,
                   headers: Mapping[str, str] | bytes,
                   extra: Mapping[str, str] | None = None) -> UpstreamAnswer:
        """The upstream's answer, its status and headers read (its body not yet): the
        caller reads or streams it, and releases it. Its `unanswered` (and UpstreamDown's):
        the tries before it that the upstream took and did not answer in time. `headers`
        and `extra`: as UpstreamClient.post takes them."""
        wait = BACKOFF
        unanswered = 0
        for left in range(spec.retries, -1, -1):
            try:
                answer = await self.client.post(url, body, headers, spec.timeout, extra)
            except UpstreamFailed as exc:
                unanswered += isinstance(exc, UpstreamUnanswered)
                if not left:
                    raise UpstreamDown(f"upstream {redact.url(url)} did not answer: "
                                       f"{exc}", unanswered) from None
            else:
                if not left or answer.status not in RETRIED:
                    answer.unanswered = unanswered
                    return answer
                wait = max(wait, _retry_after(answer.headers.get("retry-after")))
                answer.release()
            self.retried += 1
            await asyncio.sleep(wait)
            wait *= 2
        raise AssertionError("unreachable")  # the loop's last try returns or raises

    async def close(self) -> None:
        self.client.close()


def _retry_after(value: str | None) -> float:
    """An upstream's Retry-After in seconds (its HTTP-date form is not waited for)."""
    try:
        return min(MAX_WAIT, max(0.0, float(value))) if value else 0.0
    except ValueError:
        return 0.0
