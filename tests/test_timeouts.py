"""corral.timeouts.within: a bounded wait that never loses its caller's cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from corral.timeouts import within

RUNNERS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {
    "asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_cancel_in_the_turn_the_awaited_finishes_is_kept(runner: str) -> None:
    """The window asyncio.wait_for (3.11) loses a cancellation in: what it awaits ends
    in the very turn its caller is cancelled. A loop cancelled there would go on."""

    async def main() -> list[str]:
        seen: list[str] = []
        inner: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def loop() -> None:
            while True:
                seen.append(f"got {await within(inner, 5)}")
                await asyncio.sleep(3600)

        t = asyncio.ensure_future(loop())
        await asyncio.sleep(0)  # the loop awaits `inner`
        inner.set_result(1)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await within(t, 5)
        return seen

    assert RUNNERS[runner](main()) == []


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_wait_past_its_bound_is_a_timeout_and_what_it_awaited_is_cancelled(
        runner: str) -> None:
    async def main() -> tuple[bool, float]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(TimeoutError):
            await within(fut, 0.05)
        return fut.cancelled(), loop.time() - began

    cancelled, took = RUNNERS[runner](main())
    assert cancelled and 0.05 <= took < 5


def test_no_bound_waits_for_the_result() -> None:
    async def main() -> int:
        async def answer() -> int:
            await asyncio.sleep(0.01)
            return 42
        return await within(answer(), None)

    assert asyncio.run(main()) == 42
