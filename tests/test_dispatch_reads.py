"""The tasks that a read of a worker's answers frees slots for start once the read is
handled, in one pump (TaskDispatch.answers_read, decision 790): in priority order, each
slot taken once, none left free while a task waits; and the line reader's end of a read
(LineProtocol's `on_lines_end`) that tells it, also when a line's handler raises (the
reader goes on: decision 840)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from corral import jsonrpc
from corral.jsonrpc import OVERSIZE_ENDS, LineProtocol
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


async def test_a_line_handler_that_raises_is_logged_and_the_worker_read_on(
        caplog: pytest.LogCaptureFixture) -> None:
    """The read's answers before the one whose handling raised freed slots: the waiting
    tasks start at that read's end, on that worker, and its stdout is read on (decision
    840): their answers end them, none lost, and the error is logged with its line."""
    failing = FailingEnd()
    sup = Supervisor(heartbeat_interval=0.1, heartbeat_timeout=2.0, spared=SPARED,
                     interceptors=[failing])
    sup.open()
    told: list[Any] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: told.append(context))
    try:
        sup.add(batch_agent("b", 3))
        await all_ready(sup, "b")
        pid = sup.agent("b").replicas[0].pid
        first = [put(sup, f"t{i}", 3) for i in range(3)]  # answered in one write
        failing.failing.add(first[2].id)  # the read's last line's handler raises
        waiting = [put(sup, f"w{i}", 2) for i in range(2)]
        seen: list[Any] = []

        def on_end(e: TaskFinished) -> None:
            if e.task in first:  # (the last one's interceptor raises before it is told)
                seen.append([t.status for t in waiting])

        sup.stream.subscribe(on_end, TaskFinished)
        with caplog.at_level(logging.ERROR, "corral.jsonrpc"):
            for task in [*first, *waiting]:
                await asyncio.wait_for(asyncio.shield(task.done), 20)
            later = put(sup, "later", 1)  # and the worker still takes tasks
            await asyncio.wait_for(asyncio.shield(later.done), 20)
        assert seen == [["queued", "queued"]] * 2  # started at the read's end, not within
        assert [t.status for t in [*first, *waiting, later]] == ["succeeded"] * 6
        assert [[a.pid for a in t.attempts] for t in [*waiting, later]] == [[pid]] * 3
        r = sup.agent("b").replicas[0]
        assert (r.pid, r.restarts, r.tasks_running) == (pid, 0, 0)
        line = (b'{"jsonrpc": "2.0", "id": 4, "result": {"output": {"n": "t2", '
                b'"held": 3}}}')
        # (the read's own logger: a loaded host's stalled loop is the heartbeat's warning)
        read = [rec for rec in caplog.records if rec.name == "corral.jsonrpc"]
        assert [(rec.levelname, rec.getMessage()) for rec in read] == [
            ("ERROR", f"stdout of pid {pid}: the handler of a {len(line)}-byte line "
                      f"failed, the line skipped: the interceptor failed on {first[2].id} "
                      f"(the line: {line.decode()!r})")]
        assert str(read[0].exc_info[1]) == f"the interceptor failed on {first[2].id}"
        assert told == []  # nothing let out of the read: the loop was told of no error
    finally:
        loop.set_exception_handler(None)
        await sup.close(graceful=False)


def test_a_lines_handler_that_raises_is_logged_and_the_next_lines_read(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader goes on with the lines after the one whose handler raised, in the same
    read; the end of the read is told after them; an oversized line's handler that raises
    is contained too (decision 840). (Each failure logged: no rate bound here, below.)"""
    monkeypatch.setattr(jsonrpc, "HANDLER_LOG_EVERY", 0.0)
    said: list[Any] = []

    def on_line(line: bytes) -> None:
        said.append(line)
        if line.startswith(b"!"):
            raise ValueError(f"a handler failed on {line!r}")

    def on_oversize(size: int, head: bytes, tail: bytes) -> None:
        said.append(("oversize", size, head))
        raise ValueError("an oversize handler failed")

    reader = LineProtocol(on_line, lambda exc: said.append("eof"), max_line=8,
                          on_oversize=on_oversize, on_lines_end=lambda: said.append("end"),
                          name="the test's reader")
    with caplog.at_level(logging.ERROR, "corral.jsonrpc"):
        reader.data_received(b"a\n!b\nc\n0123456789\nd\n")
        assert said == [b"a", b"!b", b"c", ("oversize", 10, b"0123456789"), b"d", "end"]
        reader.data_received(b"e\n!\xff")
        reader.connection_lost(None)  # the last line, unterminated, raising too
    assert said[6:] == [b"e", "end", b"!\xff", "end", "eof"]
    assert [(rec.levelname, rec.getMessage()) for rec in caplog.records] == [
        ("ERROR", "the test's reader: the handler of a 2-byte line failed, the line "
                  "skipped: a handler failed on b'!b' (the line: '!b')"),
        ("ERROR", "the test's reader: the handler of a discarded 10-byte line failed, the "
                  "line skipped: an oversize handler failed (the line: '0123456789')"),
        ("ERROR", "the test's reader: the handler of a 2-byte line failed, the line "
                  "skipped: a handler failed on b'!\\xff' (the line: '!\ufffd')"),
    ]


def test_a_flood_of_lines_whose_handler_raises_is_one_log_line_and_a_count(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent (or a client) whose every line makes its handler raise does not write a
    log line with a traceback per line: one a reader every HANDLER_LOG_EVERY seconds, the
    next one counting those since, and the rest counted as the reading ends (decision
    870). The lines between are handled, none lost."""
    monkeypatch.setattr(jsonrpc, "HANDLER_LOG_EVERY", 3600.0)  # (a slow machine's stall)
    handled: list[bytes] = []

    def on_line(line: bytes) -> None:
        if line.startswith(b"!"):
            raise ValueError(f"no handler takes {line!r}")
        handled.append(line)

    ended: list[Exception | None] = []
    reader = LineProtocol(on_line, ended.append, name="stdout of the flood")
    with caplog.at_level(logging.ERROR, "corral.jsonrpc"):
        for i in range(100):  # 100 reads of 100 failing lines and one handled
            reader.data_received(b"".join(b"!%d\n" % (i * 100 + j) for j in range(100))
                                 + b"ok %d\n" % i)
        first = [(rec.getMessage(), rec.exc_info is not None) for rec in caplog.records]
        monkeypatch.setattr(jsonrpc, "HANDLER_LOG_EVERY", 0.0)  # the window has passed
        reader.data_received(b"!last\n" + b"!" * 300 + b"\n")
        reader.connection_lost(None)
    assert handled == [b"ok %d" % i for i in range(100)] and ended == [None]
    assert first == [("stdout of the flood: the handler of a 2-byte line failed, the line "
                      "skipped: no handler takes b'!0' (the line: '!0')", True)]
    long = "!" * OVERSIZE_ENDS
    assert [(rec.getMessage(), rec.exc_info is not None) for rec in caplog.records] == [
        *first,
        ("stdout of the flood: the handler of a 5-byte line failed, the line skipped: no "
         "handler takes b'!last' (the line: '!last') (9999 more since the last report)",
         True),
        (f"stdout of the flood: the handler of a 300-byte line failed, the line skipped: "
         f"no handler takes b'{'!' * 300}' (the line: '{long}')", True),
    ]
    assert reader.handler_failures == 10_002


def test_the_failures_not_logged_are_counted_when_the_reading_ends(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonrpc, "HANDLER_LOG_EVERY", 3600.0)
    reader = LineProtocol(lambda line: int(line), lambda exc: None, name="a client")
    with caplog.at_level(logging.ERROR, "corral.jsonrpc"):
        reader.data_received(b"1\nx\n2\ny\nz\n3\nw")
        reader.connection_lost(None)  # its last line, unterminated, failing too
    assert [rec.getMessage() for rec in caplog.records] == [
        "a client: the handler of a 1-byte line failed, the line skipped: invalid literal "
        "for int() with base 10: b'x' (the line: 'x')",
        "a client: the handlers of 3 more lines failed, the lines skipped (not logged one "
        "by one)"]
    assert caplog.records[1].exc_info is None and reader.handler_failures == 4


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
