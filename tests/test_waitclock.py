"""The clock a person's waits are measured by (supervisor/tasks/waitclock.py): its timers
fire in the order of their time (those of one time in the order made), a cancelled one
never, a manual clock's move fires every one it passed; one that raises is the loop's
exception handler's and the others fire on. Thousands wait at once (issue 55: 10,000
tasks' suspend_after and their asks' deadlines), each kept in a few hundred bytes."""

from __future__ import annotations

import asyncio
import tracemalloc
from typing import Any

from corral.supervisor.tasks.waitclock import WaitClock


async def test_timers_fire_in_their_order_a_cancelled_one_never_a_raising_one_is_reported(
        ) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    clock = WaitClock(manual=True)
    fired: list[str] = []
    clock.call_later(600, lambda: fired.append("c"))
    clock.call_later(300, lambda: fired.append("a"))
    clock.call_later(300, lambda: 1 / 0)
    clock.call_later(300, lambda: fired.append("b"))
    gone = clock.call_later(300, lambda: fired.append("cancelled"))
    later = clock.call_later(7200, lambda: fired.append("later"))
    gone.cancel()
    assert len(clock.timers) == 5
    clock.advance(301)
    while len(fired) < 2:
        await asyncio.sleep(0.001)
    assert fired == ["a", "b"]
    assert [type(c["exception"]) for c in reported] == [ZeroDivisionError]
    assert reported[0]["message"] == "a clock's timer failed"
    clock.advance(300)
    while len(fired) < 3:
        await asyncio.sleep(0.001)
    assert fired == ["a", "b", "c"]
    assert clock.timers == {later}
    later.cancel()
    assert clock.timers == set()


async def test_timers_cancelled_by_the_thousand_are_let_go_and_the_rest_fire() -> None:
    clock = WaitClock(manual=True)
    fired: list[int] = []
    timers = [clock.call_later(60 + i, lambda i=i: fired.append(i)) for i in range(1000)]
    for t in timers[:900]:
        t.cancel()
    assert len(clock.timers) == 100
    clock.advance(2000)
    while len(fired) < 100:
        await asyncio.sleep(0.001)
    assert fired == list(range(900, 1000))
    assert clock.timers == set()


async def test_a_thousand_waiting_timers_cost_a_few_hundred_bytes_each() -> None:
    """One timer of the loop behind them all: a loop timer each (uvloop's handle, its
    libuv timer, a copy of the context) cost some 600 bytes a waiting task."""
    clock = WaitClock()
    callbacks = [(lambda: None) for _ in range(1000)]  # (the callers' own, not the clock's)
    tracemalloc.start()
    try:
        start = tracemalloc.take_snapshot()
        timers = [clock.call_later(300 + i, cb) for i, cb in enumerate(callbacks)]
        grown = tracemalloc.take_snapshot().compare_to(start, "filename")
    finally:
        tracemalloc.stop()
    held = sum(s.size_diff for s in grown)
    assert held / len(timers) < 300, held / len(timers)  # (before: 661)
    for t in timers:
        t.cancel()


async def test_a_manual_clock_stands_still_between_moves() -> None:
    """The wall's seconds do not move it (an ask's deadline under it is due only by
    `advance`, issue 72); a timer due now fires all the same."""
    loop = asyncio.get_running_loop()
    clock = WaitClock(manual=True)
    fired: list[str] = []
    clock.call_later(0.05, lambda: fired.append("due"))
    stood = clock.time()
    walled: asyncio.Future[None] = loop.create_future()
    # a loop timer past the clock's: the loop's timers fire in their order
    loop.call_later(0.1, walled.set_result, None)
    await walled
    assert (fired, clock.time()) == ([], stood)
    now: asyncio.Future[None] = loop.create_future()
    clock.call_later(0, lambda: now.set_result(None))
    await now
    assert fired == []
    clock.advance(0.05)
    while not fired:
        await asyncio.sleep(0.001)
    assert (fired, clock.time(), clock.timers) == (["due"], stood + 0.05, set())
