"""The daemon's extras: parts it runs without needing them (the HTTP server, the
gateway's own site).

A failure to bind one must not keep the agents from starting: each is tried once in line
(one that can serves before the agents start, as they are given its address), and one
that fails is reported and retried with backoff. A config an extra refuses (a remote
address without TLS) fails the start: that is a rule, not a fault.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import msgspec

from ..methods import ExtraStatus
from ..supervisor.config import ConfigError
from ..timeouts import cancel_all

RETRY_FIRST = 1.0
RETRY_MAX = 30.0

Report = Callable[[str, int], None]  # (text, syslog priority): the daemon's log


def reason(exc: BaseException) -> str:
    """The OS's reason without errno's prefix, a config's, else the exception's."""
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, ConfigError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class Extra(msgspec.Struct):
    name: str
    address: str
    attempt: Callable[[], Awaitable[None]]  # starts it, or raises why not (cleaned up)
    serving: bool = False
    error: str | None = None
    attempts: int = 0  # failed, since it last served
    next_at: float | None = None  # loop time of the next attempt
    retrying: asyncio.Task[None] | None = None

    @property
    def title(self) -> str:
        return f"{self.name} on {self.address}"

    def status(self, now: float) -> ExtraStatus:
        return ExtraStatus(name=self.name, address=self.address, serving=self.serving,
                           error=self.error, attempts=self.attempts,
                           retry_in=None if self.next_at is None
                           else round(max(0.0, self.next_at - now), 1))

    def problem(self, now: float) -> str | None:
        if self.serving:
            return None
        wait = "" if self.next_at is None else f" in {max(0.0, self.next_at - now):.0f} s"
        return (f"{self.title}: not serving ({self.error}); retrying{wait} "
                f"(attempt {self.attempts + 1})")


class Extras:
    def __init__(self, report: Report, changed: Callable[[], None]) -> None:
        self.report = report
        self.changed = changed  # the status line is stale
        self.extras: list[Extra] = []
        self._closed = False

    async def start(self, name: str, address: str,
                    attempt: Callable[[], Awaitable[None]]) -> None:
        """Try `attempt` now (a failure reported and retried in the background). A
        ConfigError is raised: the daemon does not start."""
        extra = Extra(name, address, attempt)
        served = await self._try(extra, first=True)
        self.extras.append(extra)
        if not served:
            extra.retrying = asyncio.ensure_future(self._retry(extra))

    async def _try(self, extra: Extra, first: bool = False) -> bool:
        try:
            await extra.attempt()
        except Exception as exc:
            if first and isinstance(exc, ConfigError):
                raise  # a rule the config breaks; later (a certificate gone bad): a fault
            extra.attempts += 1
            why = reason(exc)
            # said once, and again when the reason changes
            if extra.attempts == 1 or why != extra.error:
                self.report(f"cannot start the {extra.title}: {why}; the agents run "
                            "without it, and it is retried with backoff", 3)
            extra.error = why
            self.changed()
            return False
        if extra.attempts:
            self.report(f"the {extra.title} serves, after {extra.attempts} failed "
                        f"attempt{'s' if extra.attempts != 1 else ''}", 5)
        extra.serving, extra.error, extra.attempts, extra.next_at = True, None, 0, None
        self.changed()
        return True

    async def _retry(self, extra: Extra) -> None:
        loop = asyncio.get_running_loop()
        delay = RETRY_FIRST
        while not self._closed:
            extra.next_at = loop.time() + delay
            await asyncio.sleep(delay)
            extra.next_at = None
            if await self._try(extra):
                return
            delay = min(RETRY_MAX, delay * 2)

    def problems(self) -> list[str]:
        now = asyncio.get_running_loop().time()
        return [p for e in self.extras if (p := e.problem(now)) is not None]

    def failing(self) -> int:
        return sum(1 for e in self.extras if not e.serving)

    def status(self) -> list[ExtraStatus]:
        now = asyncio.get_running_loop().time()
        return [e.status(now) for e in self.extras]

    async def close(self) -> None:
        """No more attempts (before the extras' own teardown)."""
        self._closed = True
        for e in self.extras:
            if e.retrying is not None:
                await cancel_all([e.retrying])
                e.retrying = None
