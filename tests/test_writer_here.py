"""Where the state database's writes run (store.WriterThread.run_on_loop): a small batch on
the loop when that cannot hold it up, anything else on the writer thread; never two at
once on the connection, never out of order."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
import time
import weakref
from pathlib import Path

import msgspec
import pytest

from corral.daemon import storeschema, storewriter
from corral.daemon.store import StateStore
from corral.daemon.storeschema import open_database
from corral.daemon.storewriter import HERE_MAX
from corral.daemon.taskjournal import TaskJournalDB
from corral.supervisor.tasks import Task

from .test_store_faults import lockable_store

LOOP = threading.get_ident()
NAMES = itertools.count()


def noting(seen: list[int]) -> storewriter.Write:
    """A write of a row of its own that notes the thread it ran on."""
    name = f"w{next(NAMES)}"

    def write(db: sqlite3.Connection) -> None:
        seen.append(threading.get_ident())
        db.execute("INSERT INTO agent_state (name, replica, time, state) VALUES "
                   "(?, 0, 0, '0')", (name,))
    return write


def rows(db: Path) -> int:
    with sqlite3.connect(db) as c:
        (n,) = c.execute("SELECT count(*) FROM agent_state").fetchone()
    return int(n)


async def test_a_small_batch_is_committed_on_the_loop_and_a_large_one_by_the_thread(
        tmp_path: Path) -> None:
    db = tmp_path / "corral.db"
    store = StateStore(db)
    writer = store.open_writer()
    try:
        seen: list[int] = []
        writer.submit(noting(seen))
        await writer.committed()
        assert seen == [LOOP]
        assert (writer.thread.here, writer.thread.handed) == (1, 0)
        seen.clear()
        for _ in range(HERE_MAX + 1):  # one loop turn: one batch, too large for the loop
            writer.submit(noting(seen))
        await writer.committed()
        assert len(seen) == HERE_MAX + 1 and LOOP not in seen
        assert (writer.thread.here, writer.thread.handed) == (1, 1)
        assert rows(db) == HERE_MAX + 2
    finally:
        await store.close_writer()
        store.close()


async def test_commits_that_fsync_every_batch_are_never_made_on_the_loop(tmp_path: Path
                                                                         ) -> None:
    db = tmp_path / "corral.db"
    store = StateStore(db, sync="full")
    writer = store.open_writer()
    try:
        seen: list[int] = []
        writer.submit(noting(seen))
        await writer.committed()
        assert len(seen) == 1 and seen != [LOOP]
        assert (writer.thread.here, writer.thread.handed) == (0, 1)
    finally:
        await store.close_writer()
        store.close()


async def test_a_batch_of_many_bytes_is_committed_by_the_thread(tmp_path: Path) -> None:
    """A large checkpoint (or a task's large output) is not copied into the WAL on the
    loop, however few the writes."""
    db = tmp_path / "corral.db"
    store = StateStore(db)
    writer = store.open_writer()
    try:
        store.save_state("big", 0, 1.0, "x" * storewriter.HERE_BYTES)
        await writer.committed()
        assert (writer.thread.here, writer.thread.handed) == (0, 1)
        store.save_state("small", 0, 1.0, "x")
        store.audit(0, 1, "agents.stop", {"names": ["a"]}, "ok")
        await writer.committed()
        assert (writer.thread.here, writer.thread.handed) == (1, 1)
        assert set(store.states()) == {("big", 0), ("small", 0)}
    finally:
        await store.close_writer()
        store.close()


async def test_a_write_lock_held_elsewhere_sends_the_batch_to_the_thread_at_once(
        tmp_path: Path) -> None:
    """The loop never waits for another process's lock: the batch goes to the thread,
    which waits for it (up to the busy timeout) and commits once it is released."""
    db = tmp_path / "corral.db"
    errors: list[str] = []
    async with lockable_store(db, errors, []) as (_store, writer, holder):
        holder.execute("BEGIN IMMEDIATE")
        seen: list[int] = []
        writer.submit(noting(seen))
        began = time.monotonic()
        await asyncio.sleep(0)  # the turn that flushes the batch
        await asyncio.sleep(0)
        held = time.monotonic() - began
        assert held < storeschema.BUSY_TIMEOUT_MS / 1000 / 4, held
        # tried on the loop, whose BEGIN IMMEDIATE gave way at once, before any write ran
        # (the store writer's batch is the writer's transaction since decision 1611)
        assert seen == []
        assert (writer.thread.here, writer.thread.handed) == (0, 1)
        commit = asyncio.ensure_future(writer.committed())
        holder.execute("ROLLBACK")  # the thread, waiting on the lock, gets it
        await asyncio.wait_for(commit, 10)
        assert len(seen) == 1 and seen[0] != LOOP
        assert (writer.thread.here, writer.thread.handed, errors) == (0, 1, [])
        assert rows(db) == 1
        # the connection's own timeout is back for the thread's next waits
        ms: list[int] = []
        read: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        writer.thread.run(lambda db: ms.extend(db.execute("PRAGMA busy_timeout").fetchone()),
                          read.set_result)
        assert await read is None
        assert ms == [storeschema.BUSY_TIMEOUT_MS]


async def test_a_slow_commit_on_the_loop_sends_the_next_ones_to_the_thread_for_a_while(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storewriter, "HERE_PAUSE", 0.3)
    db = tmp_path / "corral.db"
    store = StateStore(db)
    writer = store.open_writer()
    try:
        seen: list[int] = []

        def slow(db: sqlite3.Connection) -> None:  # a disk that takes its time
            seen.append(threading.get_ident())
            time.sleep(storewriter.HERE_SLOW * 2)

        writer.submit(slow)
        await writer.committed()
        paused = time.monotonic()
        writer.submit(noting(seen))
        await writer.committed()
        assert seen[0] == LOOP and seen[1] != LOOP
        assert (writer.thread.here, writer.thread.handed) == (1, 1)
        # the pause over, small batches are made on the loop again (a lock held elsewhere
        # at that instant, the checkpointer's on a busy host, still sends one to the
        # thread: run_on_loop gives way then, so the next is tried after another pause)
        await asyncio.sleep(max(0.0, paused + storewriter.HERE_PAUSE - time.monotonic()))
        tries = 0
        while tries < 5:
            tries += 1
            writer.submit(noting(seen))
            await writer.committed()
            if seen[-1] == LOOP:
                break
            await asyncio.sleep(storewriter.HERE_PAUSE)
        assert seen[-1] == LOOP, f"{tries} batches after the pause, none made on the loop"
        assert (writer.thread.here, writer.thread.handed) == (2, tries)
    finally:
        await store.close_writer()
        store.close()


async def test_a_batch_on_the_loop_waits_for_the_threads_jobs_given_before_it(
        tmp_path: Path) -> None:
    """While the thread has a job, the next batch goes behind it, not past it on the
    loop: the order writes were made in is the order they are committed in."""
    db = tmp_path / "corral.db"
    store = StateStore(db)
    writer = store.open_writer()
    try:
        gate = threading.Event()
        order: list[str] = []

        def first(db: sqlite3.Connection) -> None:
            gate.wait(10)
            order.append("first")

        writer.thread.run(first)
        writer.submit(lambda db: order.append("second"))
        flushed = asyncio.ensure_future(writer.committed())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert order == [] and not flushed.done()
        gate.set()
        await asyncio.wait_for(flushed, 10)
        assert order == ["first", "second"]
        assert (writer.thread.here, writer.thread.handed) == (0, 2)
    finally:
        await store.close_writer()
        store.close()


async def test_the_task_journal_commits_a_lone_task_on_the_loop(db_path: Path) -> None:
    writer = storewriter.WriterThread(db_path)
    journal = TaskJournalDB(db_path, writer=writer)
    try:
        journal.write(Task("a", msgspec.Raw(b'{"n": 1}'), 0, 30.0, 0, 1))
        await journal.committed()
        assert (journal.rows, writer.here, writer.handed) == (1, 1, 0)
    finally:
        await journal.close()
        await writer.close()
    db = open_database(db_path)
    assert db.execute("SELECT agent, status FROM tasks").fetchall() == [("a", "queued")]
    db.close()


async def test_a_job_that_raises_on_the_loop_is_rolled_back_and_told(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # not the slow-commit pause's test: a loaded host that keeps the loop off a core
    # past HERE_SLOW during the broken job must not send the next one to the thread
    monkeypatch.setattr(storewriter, "HERE_SLOW", 3600.0)
    db = tmp_path / "corral.db"
    store = StateStore(db)
    thread = store.open_writer().thread
    try:
        def broken(db: sqlite3.Connection) -> None:
            db.execute("BEGIN")
            db.execute("INSERT INTO agent_state (name, replica, time, state) VALUES "
                       "('half', 0, 0, '0')")
            raise ValueError("a bug in the write")

        assert thread.run_on_loop(broken) == (True, "ValueError: a bug in the write")
        assert rows(db) == 0
        in_transaction: list[bool] = []

        def after(db: sqlite3.Connection) -> None:  # finds no transaction left open
            in_transaction.append(db.in_transaction)
            noting([])(db)

        assert thread.run_on_loop(after) == (True, None)  # the loop's next job runs
        assert in_transaction == [False]
        assert (thread.here, rows(db)) == (1, 1)
    finally:
        await store.close_writer()
        store.close()
    # a closed writer's connection is not touched on the loop: the job is declined
    assert thread.run_on_loop(noting([])) == (False, None)


async def test_a_commit_whose_waiter_is_cancelled_is_made_and_its_end_is_no_error(
        tmp_path: Path) -> None:
    """A stop cancels what waits on a commit the writer thread is running: the commit is
    still made, and its end told on the loop is no error (it was InvalidStateError, the
    cancelled future's set_result, logged at some daemons' stops)."""
    db = tmp_path / "corral.db"
    loop = asyncio.get_running_loop()
    raised: list[str] = []
    loop.set_exception_handler(lambda _, context: raised.append(context["message"]))
    started, go = threading.Event(), threading.Event()

    def held(db: sqlite3.Connection) -> None:
        started.set()
        go.wait(10)
        db.execute("INSERT INTO agent_state (name, replica, time, state) VALUES "
                   "('held', 0, 0, '0')")

    errors: list[str] = []
    try:
        async with lockable_store(db, errors, []) as (store, _writer, _holder):
            commit = asyncio.ensure_future(store.commit([held]))
            assert await asyncio.to_thread(started.wait, 10)
            commit.cancel()
            with pytest.raises(asyncio.CancelledError):
                await commit
            go.set()
            await store.commit([])  # told after the held one's end, in order
            assert (raised, errors, rows(db)) == ([], [], 1)
    finally:
        go.set()
        loop.set_exception_handler(None)


async def test_the_writer_thread_keeps_no_job_it_has_run(tmp_path: Path) -> None:
    """Issue 55, decision 1008: the thread held the last job it ran, and its callback, until
    the next one came: a wave of suspended tasks' rows, one batch, was kept after it was
    committed."""
    store = StateStore(tmp_path / "corral.db")
    writer = store.open_writer()
    try:
        class Batch:
            pass

        gone = {"job": threading.Event(), "done": threading.Event()}
        told = asyncio.get_running_loop().create_future()

        def hand_over() -> None:  # nothing of the batch is left in this frame
            batch, settled = Batch(), Batch()
            refs = [weakref.ref(batch, lambda _: gone["job"].set()),
                    weakref.ref(settled, lambda _: gone["done"].set())]

            def job(db: sqlite3.Connection) -> None:
                assert batch is not None and db.execute("SELECT 1").fetchone() == (1,)

            def done(error: str | None) -> None:
                told.set_result((error, settled is not None))
            writer.thread.run(job, done)
            keep.extend(refs)

        keep: list[weakref.ref[Batch]] = []
        hand_over()
        assert await told == (None, True)
        assert writer.thread.handed == 1
        # the thread lets both go before it waits for the next job; its callback has run
        for what, event in gone.items():
            assert await asyncio.to_thread(event.wait, 30), f"the writer thread kept the {what}"
    finally:
        await store.close_writer()
        store.close()
