"""A loop busy with commits gives the task journal's to the writer thread
(storewriter.HERE_BUSY, decision 2055): more than HERE_BUSY asked in a HERE_WINDOW, and a
batch that yields goes to the thread for the rest of that window and the next, its SQLite
work then beside the loop; a window with no ask between it and the next ends the busy
spell. A batch that does not yield (the steps', the store writer's) is still made on the
loop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import msgspec
import pytest

from corral.daemon import storewriter
from corral.daemon.storeschema import open_database
from corral.daemon.taskjournal import TaskJournalDB
from corral.supervisor.tasks import Task

LOOP = threading.get_ident()


async def test_a_stream_of_tasks_commits_on_the_loop_only_the_windows_first(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The A2A door's shape: a task accepted and committed each turn. The first HERE_BUSY
    batches of the window are made on the loop, every later one by the thread."""
    monkeypatch.setattr(storewriter, "HERE_WINDOW", 3600.0)  # the test is one window
    monkeypatch.setattr(storewriter, "HERE_SLOW", 3600.0)  # a loaded host's: not this test's
    writer = storewriter.WriterThread(db_path)
    journal = TaskJournalDB(db_path, writer=writer)
    tasks = storewriter.HERE_BUSY + 6
    try:
        for n in range(tasks):
            journal.write(Task("a", msgspec.Raw(b'{"n": %d}' % n), 0, 30.0, 0, n + 1))
            await journal.committed()
        assert (journal.rows, writer.here, writer.handed) == (
            tasks, storewriter.HERE_BUSY, tasks - storewriter.HERE_BUSY)
    finally:
        await journal.close()
        await writer.close()
    db = open_database(db_path)
    assert db.execute("SELECT count(*) FROM tasks WHERE status = 'queued'").fetchone() == (
        tasks,)
    db.close()


async def test_the_window_after_a_busy_one_is_busy_and_one_after_a_quiet_window_is_not(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    window = 1.5
    monkeypatch.setattr(storewriter, "HERE_WINDOW", window)
    monkeypatch.setattr(storewriter, "HERE_SLOW", 3600.0)
    open_database(db_path).close()
    writer = storewriter.WriterThread(db_path)
    loop = asyncio.get_running_loop()
    seen: list[int] = []

    def noted(db: sqlite3.Connection) -> None:
        seen.append(threading.get_ident())
        db.execute("INSERT INTO agent_state (name, replica, time, state) VALUES "
                   "(?, 0, 0, '0')", (f"w{len(seen)}",))

    async def declined_then_handed(asks: int) -> None:
        """Each ask refused on the loop and given to the thread, as GroupCommit does."""
        told: list[asyncio.Future[str | None]] = []
        for _ in range(asks):
            assert writer.run_on_loop(noted, yields=True) == (False, None)
            told.append(loop.create_future())
            writer.run(noted, told[-1].set_result)
        assert await asyncio.gather(*told) == [None] * asks

    busy = storewriter.HERE_BUSY
    try:
        began = time.monotonic()
        for _ in range(busy):
            assert writer.run_on_loop(noted, yields=True) == (True, None)
        await declined_then_handed(1)  # one more in this window: the loop is busy
        first = time.monotonic()
        assert first - began < window / 2, "the first window's asks took most of it"
        assert (writer.here, writer.handed, seen[:busy]) == (busy, 1, [LOOP] * busy)
        assert seen[busy] != LOOP
        # the next window is busy from its first ask: the last had more than HERE_BUSY
        await asyncio.sleep(first + window - time.monotonic() + 0.01)
        second = time.monotonic()
        await declined_then_handed(busy + 1)
        # a batch that does not yield is made on the loop, busy or not
        assert writer.run_on_loop(noted) == (True, None)
        assert seen[-1] == LOOP
        assert time.monotonic() - second < window / 2, "the second window's asks took most of it"
        # a whole window with no ask, and the loop's next commit is its own again
        await asyncio.sleep(second + 2 * window - time.monotonic() + 0.1)
        assert writer.run_on_loop(noted, yields=True) == (True, None)
        assert (writer.here, writer.handed, seen[-1]) == (busy + 2, busy + 2, LOOP)
        assert len(seen) == 2 * busy + 4
    finally:
        await writer.close()
