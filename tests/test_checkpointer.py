"""WAL checkpoints off the commit path (corral/daemon/checkpointer.py): the writer's
connection never checkpoints, a thread of its own does, after writes and at most every
MIN_GAP seconds; a checkpoint that fails is told once, and its recovery once."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from corral.daemon import checkpointer as checkpointer_mod
from corral.daemon import storewriter
from corral.daemon.checkpointer import Checkpointer
from corral.daemon.storeschema import StoreConnection, connect
from corral.daemon.storewriter import WriterThread

from .test_gateway_stdio import wait_until_async

ROW = b"x" * 3000  # most of a page: a commit of one row is a frame or two in the WAL


def make_table(path: Path) -> None:
    db = connect(path)
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    db.close()


async def commit(writer: WriterThread, k: int) -> None:
    done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    def insert(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO t VALUES (?, ?)", (k, ROW))

    writer.run(insert, done.set_result)
    assert await done is None


async def test_commits_never_checkpoint_and_the_checkpointer_copies_the_wal(
        tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    make_table(path)
    writer = WriterThread(path)
    try:
        # the writer's connection leaves checkpoints to the thread beside it
        done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        auto: list[int] = []
        writer.run(lambda db: auto.extend(db.execute("PRAGMA wal_autocheckpoint").fetchone()),
                   done.set_result)
        assert await done is None
        assert auto == [0]
        t0 = time.monotonic()
        for k in range(1500):  # past SQLite's own threshold, 1000 pages
            await commit(writer, k)
        busy_for = time.monotonic() - t0
        await wait_until_async(lambda: writer.checkpointer.last[0] > 0
                               and writer.checkpointer.last[0] == writer.checkpointer.last[1],
                               10)
        frames, copied = writer.checkpointer.last
        assert frames == copied  # everything in the WAL is in the database file
        # once after the first write, then at most every MIN_GAP while writes go on
        assert 1 <= writer.checkpointer.checkpoints <= 2 + busy_for / checkpointer_mod.MIN_GAP
        # what was committed reads back from another connection
        reader = sqlite3.connect(path)
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (1500,)
        reader.close()
    finally:
        await writer.close()
    # every connection closed: SQLite checkpointed and removed the WAL
    assert not (tmp_path / "state.db-wal").exists()


class Failing(StoreConnection):
    """A real connection whose statements fail while `fail` is set (a disk that errs)."""

    fail = False

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        if self.fail:
            raise sqlite3.OperationalError("disk I/O error")
        return super().execute(sql, *args)

    def rows(self, sql: str, *args: Any) -> list[Any]:  # type: ignore[override]
        if self.fail:
            raise sqlite3.OperationalError("disk I/O error")
        return super().rows(sql, *args)


async def test_a_failing_checkpoint_is_told_once_and_its_recovery_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.db"
    make_table(path)
    db = sqlite3.connect(path, factory=Failing, check_same_thread=False)
    cp = Checkpointer(db, path)
    try:
        with caplog.at_level(logging.WARNING, logger="corral.store"):
            db.fail = True  # type: ignore[attr-defined]
            for _ in range(3):  # three writes, three tries, each past MIN_GAP
                before = cp.tries
                cp.wrote()
                await wait_until_async(lambda b=before: cp.tries > b, 10)  # type: ignore[misc]
            assert cp.checkpoints == 0
            failed = [r.getMessage() for r in caplog.records]
            assert failed == [f"state database {path}: a WAL checkpoint failed (disk I/O "
                              "error); the WAL keeps what was written, and the next write "
                              "tries again"]
            db.fail = False  # type: ignore[attr-defined]
            cp.wrote()
            await wait_until_async(lambda: cp.checkpoints == 1, 10)
            cp.wrote()
            await wait_until_async(lambda: cp.checkpoints == 2, 10)
        assert [r.getMessage() for r in caplog.records] == [
            *failed, f"state database {path}: WAL checkpoints work again"]
    finally:
        await asyncio.to_thread(cp.close)


async def test_the_wal_a_burst_left_is_cut_back_once_it_is_copied(tmp_path: Path) -> None:
    """Decision 1010: SQLite reuses its WAL file from the beginning rather than shrink it,
    so a burst's high-water stayed on disk (10,000 tasks suspended at once left 180 MB);
    the writer's next commit after a checkpoint copied it all cuts it back."""
    path = tmp_path / "state.db"
    make_table(path)
    wal = tmp_path / "state.db-wal"
    writer = WriterThread(path)
    try:
        done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

        def burst(db: sqlite3.Connection) -> None:  # 20 MiB in one transaction
            db.executemany("INSERT INTO t VALUES (?, ?)",
                           ((k, b"x" * (1 << 20)) for k in range(20)))

        writer.run(burst, done.set_result)
        assert await done is None
        assert wal.stat().st_size > storewriter.WAL_KEPT_BYTES
        await wait_until_async(lambda: writer.checkpointer.last[0] > 5000
                               and writer.checkpointer.last[0] == writer.checkpointer.last[1],
                               10)
        assert wal.stat().st_size > storewriter.WAL_KEPT_BYTES  # copied, not yet cut back
        await commit(writer, 100)  # the writer starts the WAL again from its beginning
        assert wal.stat().st_size <= storewriter.WAL_KEPT_BYTES
        reader = sqlite3.connect(path)
        assert reader.execute("SELECT count(*), sum(length(v)) FROM t").fetchone() == (
            21, 20 * (1 << 20) + len(ROW))
        reader.close()
    finally:
        await writer.close()
