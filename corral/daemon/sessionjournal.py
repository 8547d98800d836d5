"""Sessions in the state database (the engine's SessionJournal; docs/durable.md#sessions).
The rows of one life of a session carry its `gen`, so that a name ended and begun again in
one batch never mixes the two; every row is keyed by the session's owner too (its agent's
tenant when it began): another tenant's agent of the same name addresses rows of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from ..results import SessionTask
from ..supervisor.labels import session_record, started_record
from ..supervisor.tasks.sessions import KEEP_HISTORY, SessionKey, SessionRow
from .journalstore import JournalStore, JournalWords
from .storeschema import StoreError, errors_named
from .storewriter import WriterThread

# one life of a session's rows: its owner, its agent's name and its own, its gen
_LIFE = "tenant = ? AND agent = ? AND session = ? AND gen = ?"
PRUNE_EVERY = 64  # past KEEP_HISTORY, the older ones are deleted every this many tasks


class _State(NamedTuple):
    row: SessionRow
    state: bytes


class _Task(NamedTuple):
    row: SessionRow
    task_id: str


class _End(NamedTuple):
    row: SessionRow


_Op = SessionRow | _State | _Task | _End


_WORDS = JournalWords("sessions", "session checkpoints wait until they can")


class SessionsDB:
    def __init__(self, path: Path, writer: WriterThread,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.path = path
        self._store: JournalStore[_Op] = JournalStore(path, writer, self._write, _WORDS,
                                                      on_error=on_error)

    # -- the SessionJournal protocol ------------------------------------------------------
    def put(self, row: SessionRow) -> None:
        self._store.group.put(("row", *row[:3], row.gen), row)

    def put_state(self, row: SessionRow, state: bytes) -> None:
        self._store.group.put(("state", *row[:3], row.gen), _State(row, state))

    def add_task(self, row: SessionRow, task_id: str) -> None:
        self._store.group.put(("task", task_id), _Task(row, task_id))

    def end(self, row: SessionRow) -> None:
        self._store.group.put(("end", *row[:3], row.gen), _End(row))

    async def committed(self) -> None:
        await self._store.group.committed()

    def ending(self, key: str) -> bool:
        """Whether a life's end whose DELETE takes `key` (a session's labels, or who
        started it) is yet to commit: what is read or written of it now would be that
        life's, or undone by it."""
        group = self._store.group
        return any(isinstance(op, _End) and key in (
            record := session_record(*op.row[:3]), started_record(record))
            for op in (*group.pending.values(), *(op for _, op in group.inflight)))

    async def history(self, row: SessionRow) -> list[SessionTask]:
        """The session's tasks in the order accepted (status None: pruned from the task
        journal)."""
        with contextlib.suppress(StoreError):  # what is written still answers
            await self.committed()
        return await asyncio.to_thread(self._history, row)

    async def state(self, row: SessionRow) -> bytes | None:
        """The session's state as committed (the states put before it are awaited)."""
        await self.committed()
        return await asyncio.to_thread(self.state_now, row)

    def state_now(self, row: SessionRow) -> bytes | None:
        with self._store.read_lock, errors_named(self.path):
            got = self._store.reader.execute(f"SELECT state FROM sessions WHERE {_LIFE}",
                                             (*row[:3], row.gen)).fetchone()
        return None if got is None or got[0] is None else bytes(got[0])

    # -- start-up (in a thread) -------------------------------------------------------------
    def load(self) -> tuple[list[tuple[SessionRow, int | None]],
                            list[tuple[str, SessionKey]]]:
        """Every session and its state's size (the state is read when it is needed);
        (task id, its session) of each task not finished, in the order they were
        accepted."""
        with self._store.read_lock, errors_named(self.path):
            rows = self._store.reader.execute(
                "SELECT tenant, agent, session, created, last_used, tasks, holder, gen, "
                "length(state) FROM sessions").fetchall()
            members = self._store.reader.execute(
                "SELECT st.task_id, st.tenant, st.agent, st.session FROM session_tasks st "
                "JOIN tasks t ON t.id = st.task_id WHERE t.finished IS NULL "
                "ORDER BY t.arrival").fetchall()
        return ([(SessionRow(*r[:8]), r[8]) for r in rows],
                [(tid, SessionKey(*key)) for tid, *key in members])

    # -- on the writer ------------------------------------------------------------------
    @staticmethod
    def _write(db: sqlite3.Connection, ops: list[_Op]) -> None:
        db.execute("BEGIN")
        for op in ops:
            if isinstance(op, SessionRow):
                # a new life of the name starts with no state
                db.execute(
                    "INSERT INTO sessions (tenant, agent, session, created, last_used, "
                    "tasks, holder, gen) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT "
                    "(tenant, agent, session) DO UPDATE SET created = excluded.created, "
                    "last_used = excluded.last_used, tasks = excluded.tasks, holder = "
                    "excluded.holder, "
                    "state = CASE WHEN gen = excluded.gen THEN state END, gen = excluded.gen",
                    op)
            elif isinstance(op, _State):
                db.execute(f"UPDATE sessions SET state = ? WHERE {_LIFE}",
                           (op.state, *op.row[:3], op.row.gen))
            elif isinstance(op, _Task):
                r = op.row
                db.execute("INSERT OR IGNORE INTO session_tasks (task_id, tenant, agent, "
                           "session, gen) VALUES (?, ?, ?, ?, ?)",
                           (op.task_id, *r[:3], r.gen))
                if r.tasks <= KEEP_HISTORY or r.tasks % PRUNE_EVERY:
                    continue
                db.execute(f"DELETE FROM session_tasks WHERE {_LIFE} AND rowid <= (SELECT "
                           f"rowid FROM session_tasks WHERE {_LIFE} ORDER BY rowid DESC "
                           f"LIMIT 1 OFFSET {KEEP_HISTORY})", (*r[:3], r.gen) * 2)
            else:
                r = op.row
                db.execute(f"DELETE FROM sessions WHERE {_LIFE}", (*r[:3], r.gen))
                db.execute(f"DELETE FROM session_tasks WHERE {_LIFE}", (*r[:3], r.gen))
                record = session_record(*r[:3])
                db.execute("DELETE FROM labels WHERE key IN (?, ?)",
                           (record, started_record(record)))
        db.execute("COMMIT")

    # -- reads (in a thread) --------------------------------------------------------------
    def _history(self, row: SessionRow) -> list[SessionTask]:
        with self._store.read_lock, errors_named(self.path):
            return [SessionTask(*r) for r in self._store.reader.execute(
                "SELECT st.task_id, t.status, t.created FROM session_tasks st LEFT JOIN "
                "tasks t ON t.id = st.task_id WHERE st.tenant = ? AND st.agent = ? AND "
                "st.session = ? AND st.gen = ? ORDER BY st.rowid DESC LIMIT ?",
                (*row[:3], row.gen, KEEP_HISTORY)).fetchall()][::-1]

    async def close(self) -> None:
        await self._store.close()
