"""The step journal: tasks' steps in the state database (the engine's StepJournal,
corral.supervisor.tasks.steps; docs/durable.md).

A step's result is stored once by its content hash (`step_results`), however many steps
of however many tasks return it; one larger than REF_ABOVE is a file of its own in the
state directory (`step-results/HASH`), written before the row that names it. Steps go
through a GroupCommit on the daemon's one writer thread, like the task journal's rows:
a lone step is committed as it is put, on the loop when the thread is idle, so it costs
one SQLite commit and no loop turn; the steps of a turn after it are one transaction at
the turn's end (decision 221, storewriter.py).
The engine awaits `committed()` before it answers the worker: a step it answered from is
never lost to a crash of the daemon (`journal_sync = "normal"`) or, with `"full"`, of the
machine.

Steps live and die with their task: the task journal's pruning deletes a pruned task's
steps and the results no step names any more (`delete_steps`, `drop_unused`); a diverged
attempt's obsolete steps go at once (`drop_from`), and their results with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from ..supervisor.tasks.steps import Step
from .storeschema import connect, errors_named
from .storewriter import GroupCommit, WriterThread

REF_ABOVE = 256 * 1024  # a result larger than this is a file of its own
RESULTS_DIR = "step-results"


class _Drop(NamedTuple):
    task_id: str
    seq: int


_Op = Step | _Drop


class StepsError(Exception):
    """Steps could not be written; the message names the file and SQLite's reason."""


def results_dir(db_path: Path) -> Path:
    return db_path.parent / RESULTS_DIR


def _hash(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


class StepsDB:
    """The daemon's StepJournal, on the state database `path`, written by `writer`."""

    def __init__(self, path: Path, writer: WriterThread, *, sync: str = "normal",
                 on_error: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.sync = sync
        self.dir = results_dir(path)
        self._writer = writer
        self._on_error = on_error
        self._reader = connect(path)
        self._read_lock = threading.Lock()
        self._group: GroupCommit[_Op] = GroupCommit(
            writer, self._write, self._settled, size=_size, error_type=StepsError,
            explain=lambda error: f"steps cannot be written to {path} ({error})")
        self.rows = 0  # steps written
        self.bytes = 0  # result bytes stored (each unique result once)

    # -- the StepJournal protocol ---------------------------------------------------------
    def put(self, step: Step) -> None:
        self._group.put((step.task_id, step.seq, step.name), step, now=True)

    def drop_from(self, task_id: str, seq: int) -> None:
        self._group.put(("drop", task_id, seq), _Drop(task_id, seq))

    async def committed(self, task_id: str | None = None) -> None:
        await self._group.committed()  # one batch for every task's steps

    async def history(self, task_id: str) -> list[Step]:
        with contextlib.suppress(StepsError):  # what is written still answers
            await self.committed()
        return await asyncio.to_thread(self._history, task_id)

    # -- on the writer ------------------------------------------------------------------
    def _settled(self, ops: list[_Op], error: str | None) -> None:
        if error is not None and self._group.first_failure and self._on_error is not None:
            self._on_error(f"steps cannot be written to {self.path} ({error}): the tool "
                           "calls of tasks that may be retried are answered with this "
                           "error until they can be")

    def _write(self, db: sqlite3.Connection, ops: list[_Op]) -> None:
        unlink: list[str] = []
        db.execute("BEGIN")
        for op in ops:
            if isinstance(op, _Drop):
                rows = db.execute("DELETE FROM steps WHERE task_id = ? AND seq >= ? "
                                  "RETURNING result", op).fetchall()
                unlink += drop_unused(db, {r[0] for r in rows if r[0] is not None})
                continue
            result = None
            if op.body is not None:
                result = _hash(op.body)
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
        db.execute("COMMIT")
        remove_refs(self.dir, unlink)

    def _keep(self, db: sqlite3.Connection, h: bytes, body: bytes) -> None:
        if len(body) <= REF_ABOVE:
            if db.execute("INSERT OR IGNORE INTO step_results (hash, size, body) VALUES "
                          "(?, ?, ?)", (h, len(body), body)).rowcount:
                self.bytes += len(body)
            return
        if db.execute("SELECT 1 FROM step_results WHERE hash = ?", (h,)).fetchone():
            return
        ref = h.hex()
        self.dir.mkdir(mode=0o700, exist_ok=True)
        tmp = self.dir / f".{ref}.tmp"
        with open(tmp, "wb") as f:
            f.write(body)
            if self.sync == "full":
                os.fsync(f.fileno())
        os.replace(tmp, self.dir / ref)
        db.execute("INSERT INTO step_results (hash, size, ref) VALUES (?, ?, ?)",
                   (h, len(body), ref))
        self.bytes += len(body)

    # -- reads (in a thread) --------------------------------------------------------------
    def _history(self, task_id: str) -> list[Step]:
        with self._read_lock, errors_named(self.path):
            rows = self._reader.execute(
                "SELECT s.seq, s.name, s.attempt, s.args, r.body, r.ref FROM steps s "
                "LEFT JOIN step_results r ON r.hash = s.result WHERE s.task_id = ? "
                "ORDER BY s.seq", (task_id,)).fetchall()
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
        """Write what is pending (the writer thread closes after), then close."""
        with contextlib.suppress(StepsError):
            await self.committed()
        self._group.cancel_retry()
        self._reader.close()


def delete_steps(db: sqlite3.Connection, where: str, args: Iterable[object]) -> set[bytes]:
    """Delete the steps of the tasks `where` (SQL on `tasks`) selects; the results they
    named (for drop_unused)."""
    rows = db.execute(f"DELETE FROM steps WHERE task_id IN (SELECT id FROM tasks WHERE "
                      f"{where}) RETURNING result", tuple(args)).fetchall()
    return {r[0] for r in rows if r[0] is not None}


def delete_orphans(db: sqlite3.Connection) -> set[bytes]:
    """Steps of tasks the journal does not hold (their task's row never committed)."""
    rows = db.execute("DELETE FROM steps WHERE task_id NOT IN (SELECT id FROM tasks) "
                      "RETURNING result").fetchall()
    return {r[0] for r in rows if r[0] is not None}


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
        with contextlib.suppress(FileNotFoundError):
            (directory / ref).unlink()


def _size(op: _Op) -> int:
    return len(op.body) if isinstance(op, Step) and op.body is not None else 0
