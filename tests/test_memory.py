"""Finished tasks' payloads go back to the system (memory.py): after enough bytes are let
go, the heap is trimmed once, a moment later, and not before."""

from __future__ import annotations

import asyncio

from corral.supervisor import Supervisor
from corral.supervisor.memory import TRIM_AFTER, TRIM_DELAY, Releaser, _malloc_trim

from .conftest import agent
from .test_gateway_stdio import wait_until_async


def test_this_machines_malloc_can_be_trimmed() -> None:
    # glibc: the call exists; where it does not (musl), trim() does nothing, quietly
    assert _malloc_trim() is not None


async def test_a_trim_comes_once_enough_was_let_go_and_a_delay_later() -> None:
    r = Releaser()
    loop = asyncio.get_running_loop()
    r.let_go(TRIM_AFTER - 1)
    # not enough yet: a trim armed here would come TRIM_DELAY after it, too early below
    await asyncio.sleep(TRIM_DELAY / 4)
    r.let_go(1)
    armed = loop.time()
    r.let_go(TRIM_AFTER)  # more while one is due: the same one (a second would count 2)
    assert r.trims == 0 and r.released == 2 * TRIM_AFTER
    await wait_until_async(lambda: r.trims, 10)
    # (less a millisecond: the loop's clock counts in them)
    assert TRIM_DELAY - 0.001 <= loop.time() - armed < TRIM_DELAY + 5  # (a busy machine)
    assert r.trims == 1 and r.released == 0


async def test_finished_tasks_payloads_are_let_go_and_trimmed(sup: Supervisor) -> None:
    sup.add(agent("echo", "hello.py", max_concurrent_tasks=4))
    await sup.wait_all_serving(timeout=30)
    pad = "x" * 200_000
    n = TRIM_AFTER // 200_000 + 2
    for i in range(n):
        result = await sup.tasks.run("echo", {"name": pad, "i": i})
        assert result.status == "succeeded"
    memory = sup.tasks.memory
    # each task's input (and any output dropped past keep_tasks_mb) was counted
    assert memory.total >= n * 200_000
    # not yet trimmed (a fast machine): a trim is due within TRIM_DELAY
    await wait_until_async(lambda: memory.trims >= 1, TRIM_DELAY + 10)
    assert memory.trims >= 1 and memory.released < TRIM_AFTER
