"""The step journal: tasks' steps in the state database (the engine's StepJournal;
docs/durable.md#storage-bounds). With `"normal"` a step is one write() to the step log
(steplog.py); a result past LOG_MAX, a drop, and everything with `"full"` go through the
GroupCommit as they come, the log's pending records handed to it first, so that the
database sees every write in the order made. A task's end is committed before its steps
are pruned: a task the next daemon would run again never loses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from ..statefiles import make_dir, replace_file
from ..supervisor.tasks.stepjournal import Step
from .journalstore import JournalStore, JournalWords
from .steplog import StepLog, leftovers, log_dir, records
from .storeschema import StoreError, connect, errors_named
from .storewriter import HERE_BYTES, HERE_MAX, WriterThread

REF_ABOVE = 256 * 1024  # a result larger than this is a file of its own
RESULTS_DIR = "step-results"
LOG_MAX = 64 * 1024  # a result larger than this goes to the database directly
FLUSH_EVERY = 0.05  # seconds a step may wait in the log for its batch
LOG_BATCH = 512  # steps in one log file at most
# seconds an ended task's steps are kept (a look at them just after the end still finds
# them); the task journal's next pruning after that deletes them
KEEP_ENDED = 60.0


class _Drop(NamedTuple):
    task_id: str
    seq: int


class _LogBatch(NamedTuple):
    """A log file's records, in the order written, one write of the batch (not one a
    step: the loop's share of each step was a GroupCommit put): committed, then the file
    removed. `size`: its bytes, each record counted at least ROW_WEIGHT, so a batch of more
    records than a batch committed on the loop holds (storewriter.HERE_MAX) goes to the
    writer thread as its records did one by one."""

    steps: list[Step]
    path: str
    size: int


_Op = Step | _Drop | _LogBatch
ROW_WEIGHT = HERE_BYTES // HERE_MAX


def results_dir(db_path: Path) -> Path:
    return db_path.parent / RESULTS_DIR


class StepsDB:
    def __init__(self, path: Path, writer: WriterThread, *, sync: str = "normal",
                 on_error: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.sync = sync
        self.dir = results_dir(path)
        self._writer = writer
        kept = (" (the step log keeps the others, written when it can be)"
                if sync == "normal" else "")
        words = JournalWords("steps", "the tool calls of tasks that may be retried whose "
                             "steps go to the database are answered with this error until "
                             f"they can be{kept}")
        self._store: JournalStore[_Op] = JournalStore(path, writer, self._write, words,
                                                      size=_size, on_error=on_error)
        self.rows = 0  # steps written
        self._log = StepLog(log_dir(path)) if sync == "normal" else None
        self._logged: list[Step] = []  # in the log, not yet handed to the GroupCommit
        self._flush_at: asyncio.TimerHandle | None = None
        self._direct = 0  # writes given to the GroupCommit as they came, not yet committed

    # -- the StepJournal protocol ---------------------------------------------------------
    def put(self, step: Step) -> bool:
        log = self._log
        # (while the database fails, steps go its way and are refused as it refuses
        # them: the log does not pile up batches it cannot empty)
        if (log is not None and (step.body is None or len(step.body) <= LOG_MAX)
                and not self._store.group.outage.failing and log.append(step)):
            self._logged.append(step)
            if len(self._logged) >= LOG_BATCH:
                self._flush()
            elif self._flush_at is None:
                self._flush_at = asyncio.get_running_loop().call_later(FLUSH_EVERY,
                                                                       self._flush)
            return not self._direct  # (and what went to the database before it, committed)
        self._flush()
        self._direct += 1
        self._store.group.put((step.task_id, step.seq, step.name), step, now=True)
        return False

    def drop_from(self, task_id: str, seq: int) -> None:
        self._flush()
        self._direct += 1
        self._store.group.put(("drop", task_id, seq), _Drop(task_id, seq))

    async def committed(self, task_id: str | None = None) -> None:
        # what is in the log is committed; what went to the database as it came is once
        # its batch is (one batch for every task's steps)
        if self._direct:
            direct = self._direct
            await self._store.group.committed()
            self._direct -= min(direct, self._direct)

    def ended(self, task_id: str) -> None:
        # into the database now, where the task journal's pruning finds them
        self._flush()

    async def stored(self) -> None:
        """Until every step put so far is in the database (not only durable)."""
        self._flush()
        await self._store.group.committed()

    async def history(self, task_id: str) -> list[Step]:
        with contextlib.suppress(StoreError):  # what is written still answers
            await self.stored()
        return await asyncio.to_thread(self._history, task_id)

    # -- the log's batches ------------------------------------------------------------------
    def _flush(self) -> None:
        """Hand the log's records to the GroupCommit, as a batch; its file goes once
        they are committed."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        if not self._logged:
            return
        assert self._log is not None
        batch, self._logged = self._logged, []
        done = self._log.rotate()
        assert done is not None  # (a record was written: its file is open)
        size = sum(len(step.body) for step in batch if step.body) + ROW_WEIGHT * len(batch)
        # (a failed batch keeps its file: read back at the next start)
        self._store.group.put(("log", done), _LogBatch(batch, done, size))

    def recover(self) -> int:
        """At start-up, in a thread, before any step is read: the log files a daemon
        left, into the database; the steps read back."""
        files = leftovers(log_dir(self.path))
        steps = [step for path in files for step in records(path)]
        if steps:
            with contextlib.closing(connect(self.path)) as db, errors_named(self.path):
                self._write(db, list(steps))
        for path in files:
            path.unlink(missing_ok=True)
        return len(steps)

    # -- on the writer ------------------------------------------------------------------
    def _write(self, db: sqlite3.Connection, ops: list[_Op]) -> None:
        unlink: list[str] = []
        db.execute("BEGIN")
        for op in ops:
            if isinstance(op, _LogBatch):
                for step in op.steps:
                    self._put(db, step, unlink)
                # its records are committed: the file goes before anything later is (read
                # back after a kill in between, it writes the same rows again)
                db.execute("COMMIT")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(op.path)
                db.execute("BEGIN")
                continue
            if isinstance(op, _Drop):
                unlink += drop_unused(db, _deleted(db, "task_id = ? AND seq >= ?", op))
                continue
            self._put(db, op, unlink)
        db.execute("COMMIT")
        remove_refs(self.dir, unlink)

    def _put(self, db: sqlite3.Connection, op: Step, unlink: list[str]) -> None:
        """The step's row (a newer one of its key replaces it); the files of the results
        no step names any more added to `unlink`, to remove once committed."""
        result = None
        if op.body is not None:
            result = hashlib.blake2b(op.body, digest_size=16).digest()
            self._keep(db, result, op.body)
        replaced = None
        if op.seq <= 0:  # a named step or a checkpoint may be written again
            replaced = db.execute("SELECT result FROM steps WHERE task_id = ? AND seq = ? "
                                  "AND name = ?", (op.task_id, op.seq, op.name)).fetchone()
        db.execute("INSERT OR REPLACE INTO steps (task_id, seq, name, attempt, args, "
                   "result) VALUES (?, ?, ?, ?, ?, ?)",
                   (op.task_id, op.seq, op.name, op.attempt, op.args, result))
        if replaced is not None and replaced[0] is not None and replaced[0] != result:
            unlink += drop_unused(db, {replaced[0]})
        self.rows += 1

    def _keep(self, db: sqlite3.Connection, h: bytes, body: bytes) -> None:
        if len(body) <= REF_ABOVE:
            db.execute("INSERT OR IGNORE INTO step_results (hash, size, body) VALUES "
                       "(?, ?, ?)", (h, len(body), body))
            return
        if db.execute("SELECT 1 FROM step_results WHERE hash = ?", (h,)).fetchone():
            return
        ref = h.hex()
        make_dir(self.dir)
        replace_file(self.dir / ref, body, sync=self.sync == "full")
        db.execute("INSERT INTO step_results (hash, size, ref) VALUES (?, ?, ?)",
                   (h, len(body), ref))

    # -- reads (in a thread) --------------------------------------------------------------
    def _history(self, task_id: str) -> list[Step]:
        with self._store.read_lock, errors_named(self.path):
            rows = self._store.reader.rows(
                "SELECT s.seq, s.name, s.attempt, s.args, r.body, r.ref FROM steps s "
                "LEFT JOIN step_results r ON r.hash = s.result WHERE s.task_id = ? "
                "ORDER BY s.seq", (task_id,))
        steps = []
        for seq, name, attempt, args, body, ref in rows:
            if body is None and ref is not None:
                try:
                    body = (self.dir / ref).read_bytes()
                except OSError:
                    body = None  # gone: the call runs live again
            steps.append(Step(task_id, seq, name, attempt, bytes(args),
                              None if body is None else bytes(body)))
        return steps

    async def close(self) -> None:
        self._flush()
        await self._store.close()


def delete_steps(db: sqlite3.Connection, where: str, args: Iterable[object]) -> set[bytes]:
    """Delete the steps of the tasks `where` (SQL on `tasks`) selects."""
    return _deleted(db, f"task_id IN (SELECT id FROM tasks WHERE {where})", tuple(args))


def delete_ended(db: sqlite3.Connection, before: float) -> set[bytes]:
    """Delete the steps of the tasks that ended before `before`. Looked up from the
    steps, which hold only tasks not ended or lately ended, not from every task."""
    return _deleted(db, "EXISTS (SELECT 1 FROM tasks WHERE tasks.id = steps.task_id AND "
                        "tasks.finished < ?)", (before,))


def delete_orphans(db: sqlite3.Connection) -> set[bytes]:
    """Steps of tasks the journal does not hold (their task's row never committed)."""
    return _deleted(db, "task_id NOT IN (SELECT id FROM tasks)")


def _deleted(db: sqlite3.Connection, where: str, args: Iterable[object] = ()) -> set[bytes]:
    """Delete the steps `where` selects: the results they named (for drop_unused). Their
    distinct results read first, then one DELETE: a DELETE ... RETURNING made a Python row
    of every step deleted (a pruning's hundreds of thousands), each taking the GIL back
    from the loop, where the results the steps share are few."""
    args = tuple(args)
    found = {r for (r,) in db.execute(
        f"SELECT DISTINCT result FROM steps WHERE ({where}) AND result IS NOT NULL", args)}
    db.execute(f"DELETE FROM steps WHERE {where}", args)
    return found


def drop_unused(db: sqlite3.Connection, hashes: set[bytes]) -> list[str]:
    """Delete those of `hashes` no step names any more; the files to remove once the
    transaction is committed."""
    refs = []
    for h in hashes:
        row = db.execute("DELETE FROM step_results WHERE hash = ? AND NOT EXISTS "
                         "(SELECT 1 FROM steps WHERE result = ?) RETURNING ref",
                         (h, h)).fetchone()
        if row is not None and row[0] is not None:
            refs.append(row[0])
    return refs


def remove_refs(directory: Path, refs: list[str]) -> None:
    for ref in refs:
        (directory / ref).unlink(missing_ok=True)


def _size(op: _Op) -> int:
    if isinstance(op, _LogBatch):
        return op.size
    return len(op.body) if isinstance(op, Step) and op.body is not None else 0
