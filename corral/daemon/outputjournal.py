"""Tasks' live output in the state database (the engine's OutputJournal; docs/streams.md):
a chunk a row, the chunks of FLUSH_EVERY seconds a transaction, and each running task's
newest TAIL_BYTES in memory too (output.OutputTail), for readers that keep up. `load`
tells a restarted daemon where each unfinished task's output stopped and how much it
holds, so its bound counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

from ..supervisor.tasks.chunks import START, OutputChunk, Position
from ..supervisor.tasks.output import OutputTail, paged
from .journalstore import JournalStore, JournalWords
from .storeschema import StoreError, errors_named
from .storewriter import WriterThread

# bytes of output waiting for the writer past which the worker sending it is read no
# further until they are written (supervisor/tasks/output.py: TaskOutputs._hold)
BACKLOG_BYTES = 4 << 20
# seconds chunks gather before they go to the writer as one batch: a transaction per
# chunk cost the daemon most of a chunk's CPU at 1,000 chunks a second
FLUSH_EVERY = 0.02


_WORDS = JournalWords("output", "tasks' output waits in memory until it can be")


class OutputsDB:
    def __init__(self, path: Path, writer: WriterThread,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.path = path
        self._store: JournalStore[OutputChunk] = JournalStore(
            path, writer, self._write, _WORDS, size=_size, on_error=on_error)
        self.tails: dict[str, OutputTail] = {}
        self.unfinished: dict[str, tuple[Position, int]] = {}  # load's
        self._gathered: list[OutputChunk] = []  # for the next batch (FLUSH_EVERY)
        self._gathered_bytes = 0
        self._flush_at: asyncio.TimerHandle | None = None

    # -- the OutputJournal protocol -------------------------------------------------------
    def put(self, chunk: OutputChunk) -> None:
        tail = self.tails.get(chunk.task_id)
        if tail is None:
            before = self.unfinished.get(chunk.task_id, (START, 0))[0]
            tail = self.tails[chunk.task_id] = OutputTail(before)
        tail.add(chunk)
        self._gathered.append(chunk)
        self._gathered_bytes += len(chunk.data)
        if self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_later(FLUSH_EVERY, self._flush)

    def _flush(self) -> None:
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        gathered, self._gathered, self._gathered_bytes = self._gathered, [], 0
        for chunk in gathered:
            self._store.group.put((chunk.task_id, chunk.attempt, chunk.n), chunk)

    async def read(self, task_id: str, after: Position, limit: int) -> list[OutputChunk]:
        tail = self.tails.get(task_id)
        if tail is not None and after >= tail.before:
            if not tail.chunks or tail.chunks[-1].position <= after:
                return []
            # a reader is given only what is written: a stream resumed after the daemon
            # was killed has no gap (what it was sent, the journal kept; decision 1125).
            # A reader's wait batches the chunks that come meanwhile into one transaction
            upto = tail.chunks[-1].position
            await self.caught_up()
            return tail.after(after, limit, upto)
        await self.caught_up()
        return await asyncio.to_thread(self._read, task_id, after, limit)

    def resumed(self, task_id: str) -> tuple[Position, int]:
        return self.unfinished.get(task_id, (START, 0))

    def ended(self, task_id: str) -> None:
        self.tails.pop(task_id, None)
        self.unfinished.pop(task_id, None)

    async def more(self, task_id: str, after: Position) -> bool:
        return False  # (its tasks run in this engine: TaskOutputs wakes their readers)

    def behind(self) -> bool:
        # (not while the database refuses: a worker held that long would look hung)
        return (self._store.group.waiting_bytes + self._gathered_bytes > BACKLOG_BYTES
                and not self._store.group.outage.failing)

    async def caught_up(self) -> None:
        self._flush()
        with contextlib.suppress(StoreError):  # what is written still answers
            await self._store.group.committed()

    # -- at start-up, in a thread ---------------------------------------------------------
    def load(self) -> None:
        """Where each unfinished task's output stopped, and its bytes kept."""
        with self._store.read_lock, errors_named(self.path):
            rows = self._store.reader.execute(
                "SELECT o.task_id, o.attempt, o.n, length(CAST(o.data AS BLOB)), "
                "o.truncated FROM task_output o JOIN tasks t ON t.id = o.task_id "
                "WHERE t.finished IS NULL").fetchall()
        for task_id, attempt, n, size, truncated in rows:
            last, held = self.unfinished.get(task_id, (START, 0))
            self.unfinished[task_id] = (max(last, (attempt, n)),
                                        held + (0 if truncated else size))

    # -- on the writer --------------------------------------------------------------------
    def _write(self, db: sqlite3.Connection, chunks: list[OutputChunk]) -> None:
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO task_output (task_id, attempt, n, data, "
                       "truncated) VALUES (?, ?, ?, ?, ?)", chunks)
        db.execute("COMMIT")

    # -- reads (in a thread) --------------------------------------------------------------
    def _read(self, task_id: str, after: Position, limit: int) -> list[OutputChunk]:
        attempt, n = after
        with self._store.read_lock, errors_named(self.path):
            rows = self._store.reader.execute(
                "SELECT task_id, attempt, n, data, truncated FROM task_output "
                "WHERE task_id = ? AND (attempt > ? OR (attempt = ? AND n > ?)) "
                "ORDER BY attempt, n LIMIT ?", (task_id, attempt, attempt, n, limit))
            # stepped a row at a time: no more of the task's output is read than a page
            return paged((OutputChunk(t, a, i, d, bool(x)) for t, a, i, d, x in rows), limit)

    async def close(self) -> None:
        self._flush()
        await self._store.close()


def _size(chunk: OutputChunk) -> int:
    return len(chunk.data)
