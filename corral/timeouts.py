"""Waits bounded in time that keep a cancellation.

`asyncio.wait_for` on Python 3.11 returns the result of an awaitable that finished in
the same turn as its caller was cancelled, and the cancellation is lost: a loop that is
cancelled at that moment goes on for ever, and whoever awaits it after cancelling it
hangs (a cluster node's shutdown did, under load: its membership loop's renewal
answered as it was cancelled). `asyncio.timeout` counts cancellations and has no such
window, so every bounded wait in corral goes through `within` (ruff bans
`asyncio.wait_for` in the package)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(aw: Awaitable[T], timeout: float | None) -> T:
    """`await aw`, or TimeoutError once `timeout` seconds have passed (None: no bound).
    A coroutine runs in the caller's task (not a task of its own, as with wait_for)."""
    async with asyncio.timeout(timeout):
        return await aw
