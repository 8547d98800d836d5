"""corral.timeouts: a bounded wait that never loses its caller's cancellation; a task kept."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from corral.timeouts import cancel_all, kept, waited, within

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
    assert cancelled and 0.04 <= took < 5  # (the loop clock may fire a hair early)


def test_no_bound_waits_for_the_result() -> None:
    async def main() -> int:
        async def answer() -> int:
            await asyncio.sleep(0.01)
            return 42
        return await within(answer(), None)

    assert asyncio.run(main()) == 42


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_shared_future_waited_for_past_the_bound_is_a_timeout_and_left_pending(
        runner: str) -> None:
    """`waited` is `within(asyncio.shield(fut))`: the shared future outlives the wait that
    timed out and the waiter that was cancelled."""

    async def main() -> tuple[bool, float, str, int]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        began = loop.time()
        with pytest.raises(TimeoutError):
            await waited(fut, 0.05)
        took = loop.time() - began
        waiter = asyncio.ensure_future(waited(fut, None))
        await asyncio.sleep(0)  # (it waits on `fut`)
        waiter.cancel()
        outcome = "cancelled"
        try:
            await waiter
        except asyncio.CancelledError:
            pass
        else:
            outcome = "returned"
        left = fut.cancelled()
        fut.set_result(7)
        return left, took, outcome, await waited(fut, 0)

    cancelled, took, outcome, seven = RUNNERS[runner](main())
    assert not cancelled and 0.04 <= took < 5
    assert outcome == "cancelled"
    assert seven == 7  # (done already: its result at once, even with no time left)


def test_a_shared_future_s_result_or_exception_is_the_wait_s() -> None:
    async def main() -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        ok: asyncio.Future[int] = loop.create_future()
        bad: asyncio.Future[int] = loop.create_future()
        loop.call_later(0.01, ok.set_result, 42)
        loop.call_later(0.01, bad.set_exception, ValueError("no"))
        got = await waited(ok, 5)
        with pytest.raises(ValueError) as exc:
            await waited(bad, 5)
        return got, str(exc.value)

    assert asyncio.run(main()) == (42, "no")


def test_cancel_all_asks_again_a_task_whose_cancellation_was_swallowed() -> None:
    """A library that swallows a cancellation (as asyncio.wait_for does on 3.11) leaves
    a loop running: it is cancelled again until it ends."""

    async def main() -> int:
        swallowed = 0

        async def stubborn() -> None:
            nonlocal swallowed
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    swallowed += 1
                    if swallowed == 3:
                        raise

        t = asyncio.ensure_future(stubborn())
        await asyncio.sleep(0)
        await within(cancel_all([t]), 5)
        assert t.cancelled()
        return swallowed

    assert asyncio.run(main()) == 3


def test_cancel_all_raises_what_a_task_failed_with() -> None:
    async def main() -> None:
        async def fails() -> None:
            raise ValueError("broken")

        async def waits() -> None:
            await asyncio.sleep(3600)

        a, b = asyncio.ensure_future(fails()), asyncio.ensure_future(waits())
        await asyncio.sleep(0)
        with pytest.raises(ValueError, match="broken"):
            await cancel_all([a, b])
        assert b.cancelled()

    asyncio.run(main())


def test_cancel_all_reads_every_tasks_failure_not_only_the_one_it_raises() -> None:
    """The failures after the one raised are read too: a task whose exception nobody read
    is logged as never retrieved when it is collected, which awaiting each did not do."""

    async def main() -> list[str]:
        said: list[str] = []
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: said.append(context["message"]))

        async def fails(why: str) -> None:
            raise ValueError(why)

        tasks = [asyncio.ensure_future(fails("first")), asyncio.ensure_future(fails("second"))]
        await asyncio.sleep(0)
        with pytest.raises(ValueError, match="first"):
            await cancel_all(tasks)
        del tasks
        gc.collect()
        return said

    assert asyncio.run(main()) == []


def test_kept_holds_a_task_until_it_ends_however_it_ends() -> None:
    """The loop holds a task only weakly: a kept one is in its set while it runs and gone
    from it once it has ended, returned, failed or cancelled."""

    async def main() -> None:
        tasks: set[asyncio.Task[None]] = set()
        release = asyncio.Event()

        async def waits() -> None:
            await release.wait()

        async def fails() -> None:
            await release.wait()
            raise ValueError("broken")

        made = [asyncio.ensure_future(w()) for w in (waits, fails, waits)]
        assert [kept(tasks, t) for t in made] == made
        assert tasks == set(made)
        made[2].cancel()
        release.set()
        await asyncio.wait(made)
        assert tasks == set()
        assert (made[0].result(), str(made[1].exception()), made[2].cancelled()) == (
            None, "broken", True)

    asyncio.run(main())
