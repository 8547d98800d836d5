"""Durable calls in the state database: each call of every kind (a workflow's run, a
team's call) with the definition it started on, and each step's row. Writes are committed
before what they describe is done: a step's task id before its task is submitted. Step
rows are group-committed: those saved while a commit is under way go in the next one,
together, each saver waiting for its own."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import msgspec

from ..supervisor.durable import CallRecord, StepRow
from .sqlwrites import each, statement
from .store import StateStore

COLUMNS = ("call_id, kind, name, tenant, definition, input, status, created, ended, "
           "deadline, output, error, revision, agents, traceparent, tracestate")


def _json(value: Any) -> bytes | None:
    return msgspec.json.encode(value) if value is not None else None


def _value(blob: bytes | None) -> Any:
    return msgspec.json.decode(blob) if blob is not None else None


def _settle(waiters: asyncio.Future[None], commit: asyncio.Future[None]) -> None:
    if commit.cancelled():
        waiters.cancel()
    elif commit.exception() is not None:
        waiters.set_exception(commit.exception())  # type: ignore[arg-type]
        waiters.exception()  # told to each saver; never "not retrieved"
    else:
        waiters.set_result(None)


def record_of(row: tuple[Any, ...]) -> CallRecord:
    """A call's row (COLUMNS), without its steps."""
    (call_id, kind, name, tenant, definition, inp, status, created, ended, deadline,
     output, error, revision, agents, traceparent, tracestate) = row
    return CallRecord(call_id, kind, name, definition, msgspec.json.decode(inp), status,
                      created, tenant, ended, deadline, _value(output), error, revision,
                      msgspec.json.decode(agents, type=list[str]) if agents is not None
                      else None, traceparent, tracestate)


def delete_ended_calls(db: sqlite3.Connection, kind: str) -> None:
    """The ended calls of a kind no one reads once ended (a spawn tree), with their rows."""
    db.execute("DELETE FROM call_steps WHERE call_id IN (SELECT call_id FROM calls WHERE "
               "kind = ? AND status != 'running')", (kind,))
    db.execute("DELETE FROM calls WHERE kind = ? AND status != 'running'", (kind,))


class CallJournal:
    """The state database's durable calls (a DurableStore)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._lock = asyncio.Lock()
        self._waiting: list[tuple[str, StepRow]] = []
        self._next: asyncio.Future[None] | None = None

    async def save_call(self, record: CallRecord) -> None:
        values = (record.call_id, record.kind, record.name, record.tenant, record.definition,
                  msgspec.json.encode(record.input), record.status, record.created,
                  record.ended, record.deadline, _json(record.output), record.error,
                  record.revision, _json(record.agents), record.traceparent,
                  record.tracestate)
        await self.store.commit([statement(f"INSERT OR REPLACE INTO calls ({COLUMNS}) VALUES "
                                           "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", values)])

    async def save_steps(self, call_id: str, rows: list[StepRow]) -> None:
        """Committed when this returns (or StoreError), with what else was saved meanwhile."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        mine = self._next
        self._waiting.extend((call_id, r) for r in rows)
        async with self._lock:
            if mine.done():  # committed by the saver before us, with its own
                return mine.result()
            taken, self._waiting, self._next = self._waiting, [], None
            write = each("INSERT OR REPLACE INTO call_steps (call_id, step, item, task_id, "
                         "status, started, ended, output, error) VALUES (?,?,?,?,?,?,?,?,?)",
                         [(cid, r.step, r.item, r.task_id, r.status, r.started, r.ended,
                           _json(r.output), r.error) for cid, r in taken])
            # the others' rows are in it: a saver cancelled (its call) does not cancel it
            commit = asyncio.ensure_future(self.store.commit([write]))
            commit.add_done_callback(lambda done: _settle(mine, done))
            await asyncio.shield(commit)
            return None

    def _with_rows(self, record: CallRecord) -> CallRecord:
        for step, item, task_id, st, started, end, err in self.store.db.execute(
                "SELECT step, item, task_id, status, started, ended, error "
                "FROM call_steps WHERE call_id = ?", (record.call_id,)):
            record.rows[(step, item)] = StepRow(step, item, st, task_id, started, end,
                                                None, err)
        return record

    def load(self, call_id: str, *, steps: bool = True) -> CallRecord | None:
        row = self.store.db.execute(f"SELECT {COLUMNS} FROM calls WHERE call_id = ?",
                                    (call_id,)).fetchone()
        if row is None:
            return None
        return self._with_rows(record_of(row)) if steps else record_of(row)

    def unfinished(self, kind: str) -> list[CallRecord]:
        return [self._with_rows(record_of(r)) for r in self.store.db.execute(
            f"SELECT {COLUMNS} FROM calls WHERE kind = ? AND status = 'running' "
            "ORDER BY call_id", (kind,))]

    def output(self, call_id: str, step: str, item: int) -> Any:
        row = self.store.db.execute("SELECT output FROM call_steps WHERE call_id = ? AND "
                                    "step = ? AND item = ?", (call_id, step, item)).fetchone()
        return _value(row[0] if row is not None else None)
