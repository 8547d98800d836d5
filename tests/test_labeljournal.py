"""Labels in the state database (daemon/labeljournal.py): a task's records handed as it is
accepted go in the task journal's batch with its first row, one transaction and no
writer job of their own; a task's records this process wrote are read back from memory,
a session's from the database."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from corral.daemon import labeljournal
from corral.daemon.labeljournal import LabelsDB
from corral.daemon.store import StateStore
from corral.daemon.taskjournal import TaskJournalDB
from corral.supervisor.labels import accepted, session_record, started_record, starts
from corral.supervisor.tasks import Task

ANON = "anonymous:a2a:127.0.0.1"
SESSION = session_record("t", "a", "s")


class Home:
    def __init__(self, path: Path) -> None:
        self.store = StateStore(path)
        self.store.open_writer()
        assert self.store.thread is not None
        self.thread = self.store.thread
        self.journal = TaskJournalDB(path, writer=self.thread)
        self.labels = LabelsDB(self.store, self.journal)
        self.read: list[str] = []  # the statements run on the loop's connection
        self.store.db.set_trace_callback(self.read.append)

    def jobs(self) -> int:
        """The writer's jobs so far, on its thread or on the loop."""
        return self.thread.handed + self.thread.here

    def rows(self) -> list[tuple[str, str]]:
        db = sqlite3.connect(self.store.path)
        try:
            return db.execute("SELECT key, label FROM labels ORDER BY key").fetchall()
        finally:
            db.close()


@pytest.fixture
async def home(db_path: Path) -> AsyncIterator[Home]:
    h = Home(db_path)
    try:
        yield h
    finally:
        await h.journal.close()
        await h.store.close_writer()
        h.store.close()


def handed(task: Task, session: str | None = SESSION) -> list[tuple[str, tuple[str, ...]]]:
    return accepted(task.id, session, (ANON,)) + starts(task.id, session, ANON)


async def test_a_tasks_handed_labels_are_one_transaction_with_its_first_row(
        home: Home) -> None:
    task = Task("a", msgspec.Raw(b"1"), 0, 30.0, 0, 0)
    jobs = home.jobs()
    home.labels.hand(handed(task))
    home.journal.write(task)  # (its first row waits for someone to wait on it)
    await home.journal.committed()
    assert (home.journal.batches, home.jobs() - jobs) == (1, 1)
    assert home.rows() == sorted([(task.id, ANON), (SESSION, ANON),
                                  (started_record(task.id), ANON),
                                  (started_record(SESSION), ANON)])
    db = sqlite3.connect(home.store.path)
    try:
        assert db.execute("SELECT id FROM tasks").fetchall() == [(task.id,)]
    finally:
        db.close()


async def test_a_tasks_records_are_read_from_memory_and_a_sessions_from_the_database(
        home: Home) -> None:
    task = Task("a", msgspec.Raw(b"1"), 0, 30.0, 0, 0)
    home.labels.hand(handed(task))
    await home.journal.committed()
    home.read.clear()
    assert await home.labels.read(started_record(task.id)) == (ANON,)
    assert await home.labels.read(task.id) == (ANON,)
    assert home.read == []
    # a session's records go with it and its name comes again: never from memory
    assert await home.labels.read(started_record(SESSION)) == (ANON,)
    assert await home.labels.read(SESSION) == (ANON,)
    assert len(home.read) == 2


async def test_a_mark_adds_to_what_is_read_from_memory(home: Home) -> None:
    task = Task("a", msgspec.Raw(b"1"), 0, 30.0, 0, 0)
    home.labels.hand(handed(task, None))
    await home.labels.mark(task.id, ("pol__fetch", ANON))
    home.read.clear()
    assert await home.labels.read(task.id) == (ANON, "pol__fetch")
    assert home.read == []
    # a key this process did not hand (a task of an earlier daemon's) is read whole
    await home.labels.mark("earlier", ("pol__fetch",))
    assert await home.labels.read("earlier") == ("pol__fetch",)
    assert len(home.read) == 1


async def test_past_the_recent_bound_the_oldest_task_is_read_from_the_database(
        home: Home) -> None:
    tasks = [Task("a", msgspec.Raw(b"1"), 0, 30.0, 0, i)
             for i in range(labeljournal.RECENT // 2 + 1)]
    for task in tasks:
        home.labels.hand(handed(task, None))
    await home.journal.committed()
    home.read.clear()
    assert await home.labels.read(tasks[-1].id) == (ANON,)
    assert home.read == []
    assert await home.labels.read(tasks[0].id) == (ANON,)
    assert await home.labels.read(started_record(tasks[0].id)) == (ANON,)
    assert len(home.read) == 2


async def test_without_a_task_journal_the_records_are_a_writer_job_of_their_own(
        home: Home) -> None:
    labels = LabelsDB(home.store)
    task = Task("a", msgspec.Raw(b"1"), 0, 30.0, 0, 0)
    labels.hand(handed(task, None))
    await home.thread.commit([])  # after the jobs handed before it
    assert (home.journal.batches, home.rows()) == (0, sorted(
        [(task.id, ANON), (started_record(task.id), ANON)]))
