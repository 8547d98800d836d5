"""Finished tasks' payloads go back to the system (memory.py): after enough bytes are let
go, the heap is trimmed once, a moment later, and not before."""

from __future__ import annotations

import asyncio

from corral.supervisor import Supervisor
from corral.supervisor.memory import TRIM_AFTER, TRIM_DELAY, Releaser, _malloc_trim

from .conftest import agent


def test_this_machines_malloc_can_be_trimmed() -> None:
    # glibc: the call exists; where it does not (musl), trim() does nothing, quietly
    assert _malloc_trim() is not None


async def test_a_trim_comes_once_enough_was_let_go_and_a_delay_later() -> None:
    r = Releaser()
    r.let_go(TRIM_AFTER - 1)
    assert r._timer is None and r.trims == 0  # not enough yet
    r.let_go(1)
    timer = r._timer
    assert timer is not None
    r.let_go(TRIM_AFTER)  # more while one is due: the same one
    assert r._timer is timer and r.released == 2 * TRIM_AFTER
    loop = asyncio.get_running_loop()
    assert abs(timer.when() - loop.time() - TRIM_DELAY) < 0.5
    done = loop.create_future()
    loop.call_at(timer.when() + 0.05, done.set_result, None)  # just after the trim
    await done
    assert r.trims == 1 and r.released == 0 and r._timer is None


async def test_finished_tasks_payloads_are_let_go_and_trimmed(sup: Supervisor) -> None:
    sup.add(agent("echo", "hello.py", max_concurrent_tasks=4))
    await sup.wait_all_serving(timeout=30)
    pad = "x" * 200_000
    n = TRIM_AFTER // 200_000 + 2
    for i in range(n):
        result = await sup.tasks.run("echo", {"name": pad, "i": i})
        assert result.status == "succeeded"
    memory = sup.tasks.memory
    # each task's input (and any output dropped past tasks_kept_mb) was counted
    assert memory.total >= n * 200_000
    if memory._timer is not None:  # not yet trimmed (a fast machine): just after it is
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_at(memory._timer.when() + 0.05, done.set_result, None)
        await done
    assert memory.trims >= 1 and memory.released < TRIM_AFTER
