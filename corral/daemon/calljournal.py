"""Durable calls in the state database: each call of every kind (a workflow's run, a
team's call) with the definition it started on, and each step's row. Writes are committed
before what they describe is done: a step's task id before its task is submitted. A
call's record and its step rows are group-committed (storewriter.GroupCommit): those saved
while a commit is under way go in the next one, every call's together, each saver waiting
for its own; a commit that fails is told to its savers and not kept (decision 1610)."""

from __future__ import annotations

import itertools
import operator
import sqlite3
from typing import Any

import msgspec

from ..supervisor.durable import CallRecord, StepRow
from .store import StateStore
from .storeschema import StoreError
from .storewriter import GroupCommit

COLUMNS = ("call_id, kind, name, tenant, definition, input, status, created, ended, "
           "deadline, output, error, revision, agents, traceparent, tracestate")


def _json(value: Any) -> bytes | None:
    return msgspec.json.encode(value) if value is not None else None


def _value(blob: bytes | None) -> Any:
    return msgspec.json.decode(blob) if blob is not None else None


# a call's row again (its end, a planted spawn tree's): changed where it is, not deleted and
# inserted as REPLACE does, which rewrote its row and each index of the table twice; its
# kind and name (calls_named's) are its own for good
_CALL = (f"INSERT INTO calls ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
         "ON CONFLICT (call_id) DO UPDATE SET " + ", ".join(
             f"{c} = excluded.{c}" for c in COLUMNS.split(", ")
             if c not in ("call_id", "kind", "name")))
_STEP = ("INSERT OR REPLACE INTO call_steps (call_id, step, item, task_id, status, started, "
         "ended, output, error) VALUES (?,?,?,?,?,?,?,?,?)")
Row = tuple[str, tuple[Any, ...]]  # a statement and its values


def _write(db: sqlite3.Connection, batch: list[Row]) -> None:
    for sql, rows in itertools.groupby(batch, key=operator.itemgetter(0)):
        db.executemany(sql, [values for _, values in rows])


def _told(batch: list[Row], error: str | None) -> None:
    """(Each saver is told by its own wait.)"""


def _call_row(record: CallRecord) -> tuple[tuple[Any, ...], Row]:
    """A call's record as a batch's write, keyed by its call."""
    return (("call", record.call_id), (_CALL, (
        record.call_id, record.kind, record.name, record.tenant, record.definition,
        msgspec.json.encode(record.input), record.status, record.created, record.ended,
        record.deadline, _json(record.output), record.error, record.revision,
        _json(record.agents), record.traceparent, record.tracestate)))


def _step_rows(call_id: str, rows: list[StepRow]) -> list[tuple[tuple[Any, ...], Row]]:
    return [(("step", call_id, r.step, r.item), (_STEP, (
        call_id, r.step, r.item, r.task_id, r.status, r.started, r.ended, _json(r.output),
        r.error))) for r in rows]


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
        self._group: GroupCommit[Row] | None = None  # made on the first write

    async def _saved(self, rows: list[tuple[tuple[Any, ...], Row]]) -> None:
        group = self._group
        if group is None:
            assert self.store.thread is not None, "the writer opens before any call"
            path = self.store.path
            group = self._group = GroupCommit(
                self.store.thread, _write, _told, keep=False, shared=True,
                error_type=lambda error: StoreError(
                    f"state database {path} cannot be written ({error})"))
        for key, row in rows:
            group.put(key, row)
        # what is saved meanwhile waits with it: a saver cancelled (its call) cancels
        # none of it
        await group.committed()

    async def save_call(self, record: CallRecord) -> None:
        await self._saved([_call_row(record)])

    async def save_steps(self, call_id: str, rows: list[StepRow]) -> None:
        """Committed when this returns (or StoreError), with what else was saved meanwhile."""
        await self._saved(_step_rows(call_id, rows))

    async def save_end(self, record: CallRecord, rows: list[StepRow]) -> None:
        """(durable.store.EndKeeper) The call's end and its last step's: one batch."""
        await self._saved([*_step_rows(record.call_id, rows), _call_row(record)])

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
