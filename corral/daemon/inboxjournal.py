"""The inbox's asks in the state database. An ask's record is committed before the ask is
made or its end told: a database that cannot be written refuses the ask, or the decision,
and nothing changed. An ask goes with its task when the task journal prunes it; a
replica's ask of a call of no task, by its own age and count."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import msgspec

from ..askviews import Ask, AskEnd, AskKind
from ..supervisor.tasks.replicacalls import OWNER_PREFIX
from .sqlwrites import statement
from .store import StateStore
from .storeschema import errors_named

COLUMNS = ("id, kind, tenant, task_id, attempt, agent, key, subject, created, deadline, "
           "outcome, ended, decided_by, data")


def _row(ask: Ask) -> tuple[Any, ...]:
    return (ask.id, ask.kind.value, ask.tenant, ask.task_id, ask.attempt, ask.agent,
            ask.key, msgspec.json.encode(ask.subject), ask.created, ask.deadline,
            None if ask.end is None else ask.end.value, ask.ended, ask.by,
            None if ask.end is None else msgspec.json.encode(ask.data))


def _ask(row: tuple[Any, ...]) -> Ask:
    (ask_id, kind, tenant, task_id, attempt, agent, key, subject, created, deadline,
     outcome, ended, by, data) = row
    return Ask(id=ask_id, kind=AskKind(kind), tenant=tenant, task_id=task_id,
               attempt=attempt, agent=agent, key=key, subject=msgspec.json.decode(subject),
               created=created, deadline=deadline,
               end=None if outcome is None else AskEnd(outcome), ended=ended, by=by,
               data=None if data is None else msgspec.json.decode(data))


class AsksDB:
    """The inbox's AskStore on the daemon's state database."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def save(self, ask: Ask) -> None:
        await self.store.commit([statement(f"INSERT OR REPLACE INTO asks ({COLUMNS}) VALUES "
                                           "(?,?,?,?,?,?,?,?,?,?,?,?,?,?)", _row(ask))])

    def _first(self, where: str, args: tuple[Any, ...]) -> Ask | None:
        with errors_named(self.store.path):
            rows = self.store.db.rows(f"SELECT {COLUMNS} FROM asks WHERE {where}", args)
        return _ask(rows[0]) if rows else None

    def pending(self) -> Iterator[Ask]:
        # row by row: thousands of asks read back make no heap of rows kept in memory
        with errors_named(self.store.path):
            for row in self.store.db.execute(
                    f"SELECT {COLUMNS} FROM asks WHERE outcome IS NULL ORDER BY created, id"):
                yield _ask(row)
            # the pages of every pending ask, read once at start-up: not kept cached
            self.store.db.execute("PRAGMA shrink_memory")

    def find(self, task_id: str, key: str) -> Ask | None:
        return self._first("task_id = ? AND key = ?", (task_id, key))

    def get(self, ask_id: str) -> Ask | None:
        return self._first("id = ?", (ask_id,))

    def count(self, task_id: str) -> int:
        with errors_named(self.store.path):
            [(n,)] = self.store.db.rows("SELECT count(*) FROM asks WHERE task_id = ?",
                                        (task_id,))
        return int(n)


def delete_replica_asks(db: sqlite3.Connection, before: float | None, keep: int) -> None:
    """The ended asks of replicas' calls of no task, which no task's row takes with it:
    those ended before `before` (None: by count alone), and past the newest `keep`."""
    owned = f"task_id LIKE '{OWNER_PREFIX}%' AND ended IS NOT NULL"
    if before is not None:
        db.execute(f"DELETE FROM asks WHERE {owned} AND ended < ?", (before,))
    db.execute(f"DELETE FROM asks WHERE id IN (SELECT id FROM asks WHERE {owned} "
               "ORDER BY ended DESC LIMIT -1 OFFSET ?)", (keep,))
