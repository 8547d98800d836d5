"""The task package's seams: ids (UUIDv7), running attempts' deadlines, the Queue
protocol's local heap, the journal keyed by task id, and no import cycle between the
package's files."""

from __future__ import annotations

import ast
import asyncio
import os
import random
import time
import uuid
from pathlib import Path

import msgspec
import pytest

from corral.daemon.taskjournal import TaskJournalDB
from corral.supervisor import Supervisor
from corral.supervisor.tasks import LocalQueue, Queue, Task, TaskRecord, TaskStatus, new_id
from corral.supervisor.tasks.deadlines import RESOLUTION, Deadlines
from corral.supervisor.tasks.ids import FORMAT, IdClock
from corral.taskoptions import TaskOptions

from .conftest import ROOT, agent, all_ready


# -- ids --------------------------------------------------------------------------------------
def test_ids_are_uuidv7_unique_and_sorted_in_creation_order() -> None:
    before = time.time()
    ids = [new_id() for _ in range(20_000)]  # many share a millisecond
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    for i in (ids[0], ids[-1]):
        assert FORMAT.fullmatch(i), i
        u = uuid.UUID(i)
        assert (u.version, u.variant) == (7, uuid.RFC_4122)
    made = (uuid.UUID(ids[0]).int >> 80) / 1000  # (a UUIDv7 leads with its milliseconds)
    assert before - 0.002 <= made <= time.time()


def test_ids_keep_increasing_when_the_clock_steps_back_or_a_millisecond_runs_out() -> None:
    clock = IdClock()
    now = 1_700_000_000_000 * 1_000_000
    ids = [clock.make(now) for _ in range(10_000)]  # past the 4,096 of one millisecond
    ids += [clock.make(now - 5_000_000_000) for _ in range(10)]  # 5 s back
    ids.append(clock.make(now + 60_000_000_000))
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(FORMAT.fullmatch(i) for i in ids)


def test_ids_made_many_at_once_are_those_made_one_at_a_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`make_many` (a map's turn of ids) cuts the same ids as `make`, across a new
    millisecond, the clock stepping back, a counter run out and the random digits
    asked for again."""

    def made(many: bool) -> list[str]:
        rng = random.Random(5)
        monkeypatch.setattr(os, "urandom", lambda n: rng.randbytes(n))
        clock, out, t = IdClock(), [], 1_700_000_000_000_000_000
        steps = random.Random(9)
        for _ in range(300):
            n = steps.choice([1, 3, 256, 700, 5000])
            t += steps.choice([0, 0, 1_000_000, -5_000_000, 300])
            out += clock.make_many(n, t) if many else [clock.make(t) for _ in range(n)]
        return out

    one, many = made(False), made(True)
    assert many == one and len(set(many)) == len(many)


def test_a_forked_child_makes_ids_of_its_own() -> None:
    """Random bits are taken from the kernel in batches: a child forked from a process
    that holds some must not make the ids (the random tail) its parent makes next."""
    new_id()  # the parent holds a batch now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one id, then out, whatever happens
        try:
            os.write(w, new_id().encode())
        finally:
            os._exit(0)
    try:
        os.close(w)
        child = os.read(r, 100).decode()
        os.close(r)
    finally:
        os.waitpid(pid, 0)
    mine = new_id()
    assert FORMAT.fullmatch(child) and child[-12:] != mine[-12:]


async def test_deadlines_expire_in_order_each_at_its_own_time() -> None:
    """One timer behind every running attempt's deadline: each expires at its deadline
    (not before), in deadline order across timeouts; one discarded never expires; a
    deadline whose attempt ended only moves the timer on to the next."""
    loop = asyncio.get_running_loop()
    expired: list[tuple[str, float]] = []
    deadline: dict[str, float] = {}
    heard: dict[str, asyncio.Future[None]] = {
        k: loop.create_future() for k in ("last", "again")}

    def expire(key: str) -> None:
        expired.append((key, loop.time()))
        assert loop.time() >= deadline[key] - RESOLUTION, (key, loop.time(), deadline[key])
        if key in heard:
            heard[key].set_result(None)

    def add(key: str, timeout: float) -> None:
        deadline[key] = loop.time() + timeout
        d.add(key, timeout)

    d: Deadlines[str] = Deadlines(expire)
    add("first-ended", 0.05)
    add("a", 0.05)
    add("short", 0.02)
    add("ended", 0.02)
    add("last", 0.15)
    assert d.discard("first-ended", 0.05)
    assert d.discard("ended", 0.02) and not d.discard("ended", 0.02)
    assert not d.discard("nobody", 9.0)
    assert len(d) == 3
    async with asyncio.timeout(5):
        await heard["last"]
    assert [k for k, _ in expired] == ["short", "a", "last"]
    assert len(d) == 0
    add("again", 0.01)  # the timer is set anew after running dry
    async with asyncio.timeout(5):
        await heard["again"]
    assert [k for k, _ in expired] == ["short", "a", "last", "again"]


async def test_deadlines_a_late_timer_finds_due_expire_in_deadline_order() -> None:
    """A timer that fires late (a loaded host's loop, stalled past several deadlines)
    finds attempts of several timeouts due at once: they expire in deadline order, not
    in the order their timeouts were first seen (it failed beside a busy loop per core)."""
    loop = asyncio.get_running_loop()
    expired: list[str] = []
    done = loop.create_future()

    def expire(key: str) -> None:
        expired.append(key)
        if key == "last":
            done.set_result(None)

    d: Deadlines[str] = Deadlines(expire)
    d.add("long", 0.05)  # (its timeout seen first)
    d.add("short", 0.02)
    d.add("last", 0.06)
    time.sleep(0.1)  # the stall: the loop runs nothing until every deadline has passed
    async with asyncio.timeout(5):
        await done
    assert expired == ["short", "long", "last"]


# -- the local queue --------------------------------------------------------------------------
async def test_the_local_queue_orders_by_priority_then_arrival() -> None:
    q: Queue = LocalQueue()
    tasks = [Task("a", msgspec.Raw(b"null"), p, 1.0, 0, seq)
             for seq, p in enumerate([0, 0, 5, 0, 5])]
    for t in tasks:
        q.put(t)
    other = Task("b", msgspec.Raw(b"null"), 9, 1.0, 0, 99)
    q.put(other)
    assert (q.depth("a"), q.depth("b"), q.depth("nobody")) == (5, 1, 0)
    first = q.take("a")
    assert first is tasks[2]
    q.requeue(first)  # a retried task goes back to its place
    assert q.remove(tasks[3]) and not q.remove(tasks[3])
    taken = []
    while (t := q.take("a")) is not None:
        taken.append(t)
    assert taken == [tasks[2], tasks[4], tasks[0], tasks[1]]
    assert q.take("a") is None and q.take("nobody") is None and q.take("b") is other
    q.recover(reversed(tasks[:2]))
    assert [q.take("a"), q.take("a")] == tasks[:2]


# -- the journal, keyed by task id ------------------------------------------------------------
async def test_a_restart_queues_the_journal_tasks_again_in_their_order(db_path: Path) -> None:
    journal = TaskJournalDB(db_path)
    async with Supervisor(heartbeat_interval=0.2, journal=journal) as sup:
        sup.add(agent("q", "misbehave.py", max_concurrent_tasks=1))
        await all_ready(sup, "q")
        busy = sup.tasks.submit("q", {"do": "sleep", "seconds": 60})
        waiting = [sup.tasks.submit("q", {"do": "echo", "n": i}, TaskOptions(priority=p))
                   for i, p in enumerate([0, 3, 0, 3, 1])]
        await sup.wait_for(lambda: busy.status == TaskStatus.RUNNING, 10.0)
        await sup.tasks.committed()
    await journal.close()
    journal = TaskJournalDB(db_path)
    records = journal.unfinished()
    assert [r.task_id for r in records] == [t.id for t in waiting]  # in arrival order
    assert {r.status for r in records} == {"queued"}
    ran = await _run_restored(journal, records)
    assert ran == [waiting[i].id for i in (1, 3, 4, 0, 2)]


async def _run_restored(journal: TaskJournalDB, records: list[TaskRecord]) -> list[str]:
    """Restore `records` into a new engine with one slot: the ids in the order they ran."""
    async with Supervisor(heartbeat_interval=0.2, journal=journal) as sup:
        sup.add(agent("q", "misbehave.py", max_concurrent_tasks=1))
        restored = sup.tasks.recovery.restore(records)
        await asyncio.gather(*(asyncio.shield(t.done) for t in restored))
        assert {t.status for t in restored} == {"succeeded"}
        await sup.tasks.committed()
    await journal.close()
    return [t.id for t in sorted(restored, key=lambda t: t.attempts[0].started)]


# -- no import cycle between the package's files ----------------------------------------------
def test_the_task_package_has_no_import_cycle() -> None:
    package = ROOT / "corral" / "supervisor" / "tasks"
    edges: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        name = path.stem
        edges[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):  # TYPE_CHECKING blocks too
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    edges[name].add(node.module.split(".")[0])
                else:
                    edges[name].update(a.name for a in node.names)
    edges.pop("__init__")
    for deps in edges.values():
        deps.discard("__init__")
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        if state.get(n) == 1:
            raise AssertionError(f"import cycle: {' -> '.join([*path, n])}")
        if state.get(n) == 2:
            return
        state[n] = 1
        for m in sorted(edges.get(n, ())):
            visit(m, [*path, n])
        state[n] = 2

    for n in sorted(edges):
        visit(n, [])
    assert {"model", "ids", "queue", "admission", "dispatch", "retention", "worker",
            "manager"} <= set(edges)
