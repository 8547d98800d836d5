"""The tasks that a read of a worker's answers frees slots for start once the read is
handled, in one pump (TaskDispatch.answers_read, decision 790): in priority order, each
slot taken once, none left free while a task waits; and the line reader's end of a read
(LineProtocol's `on_lines_end`) that tells it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from corral.jsonrpc import LineProtocol
from corral.supervisor import Supervisor
from corral.supervisor.tasks import Task, TaskFinished
from corral.supervisor.tasks.interceptors import TaskInterceptor
from corral.taskoptions import TaskOptions

from .conftest import PY, ROOT, SPARED, agent, all_ready


def batch_agent(name: str, slots: int, **kw: Any) -> Any:
    return agent(name, command=[PY, str(ROOT / "tests" / "batch_worker.py")],
                 max_concurrent_tasks=slots, **kw)


def put(sup: Supervisor, n: str, together: int, priority: int = 0) -> Task:
    return sup.tasks.submit("b", {"n": n, "together": together},
                            TaskOptions(priority=priority))


async def test_a_reads_answers_start_the_waiting_tasks_at_its_end_by_priority(
        sup: Supervisor) -> None:
    sup.add(batch_agent("b", 3))
    await all_ready(sup, "b")
    first = [put(sup, f"t{i}", 3) for i in range(3)]  # answered in one write
    low = put(sup, "low", 1, priority=0)
    high_a, mid, high_b = (put(sup, "high_a", 3, 5), put(sup, "mid", 3, 1),
                           put(sup, "high_b", 3, 5))
    waiting = [low, high_a, mid, high_b]
    seen: list[list[str]] = []

    def on_end(e: TaskFinished) -> None:
        if e.task in first:  # what a synchronous observer of each end finds started
            seen.append([t.status for t in waiting])

    sup.stream.subscribe(on_end, TaskFinished)
    for task in [*first, *waiting]:
        await asyncio.wait_for(asyncio.shield(task.done), 20)
    # the three ends came in one read: the next tasks started at its end, not between
    assert seen == [["queued"] * 4] * 3
    assert all(t.status == "succeeded" for t in [*first, *waiting])
    # by priority, in arrival order within one; the last waited for the next free slot
    held = {t.result(decode=True).output["n"]: t.result(decode=True).output["held"]
            for t in [*first, *waiting]}
    assert (held["high_a"], held["high_b"], held["mid"], held["low"]) == (1, 2, 3, 1)
    assert max(held.values()) <= 3  # no slot taken twice
    assert not sup.tasks.dispatch.freed
    assert sup.agent("b").replicas[0].tasks_running == 0


async def test_a_slot_taken_within_the_read_is_not_taken_again_at_its_end(
        sup: Supervisor) -> None:
    """A task submitted by an observer of a task's end starts at once in the slot that
    end freed (submit pumps); the read's end fills what is still free, once."""
    sup.add(batch_agent("b", 2))
    await all_ready(sup, "b")
    first = [put(sup, f"t{i}", 2) for i in range(2)]
    later = put(sup, "later", 2)
    followed: list[Task] = []

    def on_end(e: TaskFinished) -> None:
        if e.task is first[0]:
            followed.append(put(sup, "follow", 2, priority=9))
            assert followed[0].status == "running"

    sup.stream.subscribe(on_end, TaskFinished)
    for task in [*first, later]:
        await asyncio.wait_for(asyncio.shield(task.done), 20)
    await asyncio.wait_for(asyncio.shield(followed[0].done), 20)
    outputs = {t.result(decode=True).output["n"]: t.result(decode=True).output["held"]
               for t in [*first, later, *followed]}
    assert (outputs["follow"], outputs["later"]) == (1, 2)
    assert max(outputs.values()) <= 2
    assert sup.tasks.waiting() == 0 and not sup.tasks.running_tasks()


async def test_a_map_over_answers_read_together_leaves_no_slot_idle(
        sup: Supervisor) -> None:
    """Every read that frees a slot while tasks wait starts them: a map whose worker
    answers its tasks three at a time ends (none waits for a start that never comes)."""
    sup.add(batch_agent("b", 3))
    await all_ready(sup, "b")
    out = await asyncio.wait_for(sup.tasks.map(
        "b", [{"n": i, "together": 3} for i in range(30)], concurrency=9), 30)
    assert [r.output["n"] for r in out] == list(range(30))
    assert max(r.output["held"] for r in out) == 3


def test_the_end_of_a_read_is_told_after_its_lines() -> None:
    said: list[Any] = []
    reader = LineProtocol(said.append, lambda exc: said.append("eof"),
                          on_lines_end=lambda: said.append("end"))
    reader.data_received(b"a\nb\n")
    reader.data_received(b"c")  # no line ended: no end of one told
    reader.data_received(b"\nd")
    reader.connection_lost(None)  # the last line without its newline is one too
    assert said == [b"a", b"b", "end", b"c", "end", b"d", "end", "eof"]


class FailingEnd(TaskInterceptor):
    """An interceptor whose notification of the tasks in `failing` raises (a bug of its
    own): within the read of the worker's answers that ends them."""

    def __init__(self) -> None:
        self.failing: set[str] = set()

    def intercept_task_end(self, task: Task, next: Callable[[Task], None]) -> None:
        next(task)
        if task.id in self.failing:
            raise RuntimeError(f"the interceptor failed on {task.id}")


async def test_a_read_whose_last_handler_raises_still_starts_the_freed_slots_tasks(
        ) -> None:
    """The read's answers before the one whose handling raised freed slots: the waiting
    tasks start at that read's end all the same, on that worker (not when some later
    read of any worker ends, or a restart pumps)."""
    failing = FailingEnd()
    sup = Supervisor(heartbeat_interval=0.1, heartbeat_timeout=2.0, spared=SPARED,
                     interceptors=[failing])
    sup.open()
    try:
        sup.add(batch_agent("b", 3))
        await all_ready(sup, "b")
        pid = sup.agent("b").replicas[0].pid
        first = [put(sup, f"t{i}", 3) for i in range(3)]  # answered in one write
        failing.failing.add(first[2].id)  # the read's last line's handler raises
        waiting = [put(sup, f"w{i}", 2) for i in range(2)]
        seen: list[Any] = []
        told = asyncio.Event()

        def on_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            # the loop is told of the handler's error as the read returns: the state then
            seen.append((str(context.get("exception")), [t.status for t in waiting],
                         [[a.pid for a in t.attempts] for t in waiting],
                         sup.agent("b").replicas[0].tasks_running,
                         dict(sup.tasks.dispatch.freed)))
            told.set()

        loop = asyncio.get_running_loop()
        loop.set_exception_handler(on_error)
        try:
            await asyncio.wait_for(told.wait(), 20)
        finally:
            loop.set_exception_handler(None)
        assert [t.status for t in first] == ["succeeded"] * 3
        # its two waiting tasks started at the end of the read that freed their slots,
        # on its worker, before the error was told
        assert seen[0] == (f"the interceptor failed on {first[2].id}",
                           ["running", "running"], [[pid], [pid]], 2, {})
    finally:
        await sup.close(graceful=False)


def test_the_end_of_a_read_is_told_when_a_lines_handler_raises() -> None:
    """What the lines before the raising one began is finished at the read's end all the
    same; the lines after it wait in the reader for its next read."""
    said: list[Any] = []

    def on_line(line: bytes) -> None:
        said.append(line)
        if line.startswith(b"!"):
            raise ValueError(f"a handler failed on {line!r}")

    reader = LineProtocol(on_line, lambda exc: said.append("eof"),
                          on_lines_end=lambda: said.append("end"))
    with pytest.raises(ValueError, match="a handler failed on b'!b'"):
        reader.data_received(b"a\n!b\nc\n")
    assert said == [b"a", b"!b", "end"]
    reader.data_received(b"d\n!e")
    assert said == [b"a", b"!b", "end", b"c", b"d", "end"]
    with pytest.raises(ValueError, match="a handler failed on b'!e'"):
        reader.connection_lost(None)  # the last line, unterminated, raising too
    assert said[6:] == [b"!e", "end"]


async def test_a_pumps_starts_go_to_the_least_loaded_replica_each_in_turn(
        sup: Supervisor) -> None:
    """One pump's starts (a map's turn) go where one start at a time would: each to the
    replica running the fewest, the first of them on a tie, a replica taking as many at
    once as it stays the one with the fewest."""
    sup.add(batch_agent("b", 4, replicas=2))
    await all_ready(sup, "b")
    held = [put(sup, "h0", 2), put(sup, "h1", 2)]  # one on each, held
    ended = put(sup, "e0", 1)  # on replica 0 (a tie): it answers with h0
    for task in (held[0], ended):
        await asyncio.wait_for(asyncio.shield(task.done), 20)
    assert [t.attempts[0].replica for t in (*held, ended)] == [0, 1, 0]
    # running: 0 on replica 0, 1 on replica 1; a map's turn of five in one pump
    out = await asyncio.wait_for(sup.tasks.map(
        "b", [{"n": f"m{i}", "together": 3} for i in range(5)], concurrency=5), 20)
    assert [r.attempts[0].replica for r in out] == [0, 0, 1, 0, 1]
    assert [r.output["held"] for r in out] == [1, 2, 2, 3, 3]
    await asyncio.wait_for(asyncio.shield(held[1].done), 20)
    assert held[1].status == "succeeded"
