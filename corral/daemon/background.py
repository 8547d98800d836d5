"""The daemon's long-running tasks (signal handling, the event pump): one that dies is
logged and restarted, never left dead in silence."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from ..jsonrpc import describe
from ..timeouts import cancel_all

log = logging.getLogger("corral.daemon")

RESTART_FIRST = 0.1  # seconds before a failed task runs again; doubles up to RESTART_MAX
RESTART_MAX = 10.0


class Background:
    def __init__(self, report: Callable[[str], None]) -> None:
        self.report = report  # where a failure is told besides stderr (corral's log)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.failures = 0

    def start(self, name: str, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.tasks[name] = asyncio.ensure_future(self._keep(name, body))

    async def _keep(self, name: str, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
        delay = RESTART_FIRST
        while True:
            try:
                await body()
                return
            except Exception as exc:
                self.failures += 1
                log.error("background task %s failed", name, exc_info=exc)
                with contextlib.suppress(Exception):  # the report itself may be what fails
                    self.report(f"background task {name} failed ({describe(exc)}); "
                                f"restarting it in {delay:g} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX)

    async def close(self) -> None:
        await cancel_all(self.tasks.values())
        self.tasks.clear()
