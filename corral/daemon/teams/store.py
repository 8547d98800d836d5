"""Teams' calls in the state database (migration 14): each call with the definition it
started on, and each step's row. Writes are committed (StateStore.commit) before what
they describe is done: a step's task id before its task is submitted. Ended calls past
the newest KEPT are pruned, with their steps."""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from ...supervisor.teams import TeamSpec
from ...supervisor.teams.call import CallStep, TeamCall
from ...taskviews import TaskSummary
from ..store import StateStore

KEPT = 10_000  # ended calls kept (their member tasks are kept as tasks are)
PRUNE_EVERY = 100  # ends between two prunings
_COLUMNS = ("call_id, team, tenant, definition, input, status, created, ended, output, error, "
            "traceparent, tracestate")


def _json(value: Any) -> bytes | None:
    return msgspec.json.encode(value) if value is not None else None


def _value(blob: bytes | None) -> Any:
    return msgspec.json.decode(blob) if blob is not None else None


class CallRows:
    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._ends = 0

    async def save_call(self, call: TeamCall) -> None:
        values = (call.call_id, call.team, call.tenant, msgspec.json.encode(call.spec),
                  msgspec.json.encode(call.input), call.status, call.created, call.ended,
                  _json(call.output), call.error, call.traceparent, call.tracestate)
        prune = call.ended is not None and self._ends % PRUNE_EVERY == 0
        if call.ended is not None:
            self._ends += 1

        def write(db: sqlite3.Connection) -> None:
            db.execute(f"INSERT OR REPLACE INTO team_calls ({_COLUMNS}) VALUES "
                       "(?,?,?,?,?,?,?,?,?,?,?,?)", values)
            if prune:
                _prune(db)
        await self.store.commit([write])

    async def save_step(self, call_id: str, step: CallStep) -> None:
        values = (call_id, step.key, step.task_id, step.status, step.started, step.ended,
                  _json(step.output), step.error)

        def write(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO team_steps (call_id, key, task_id, status, "
                       "started, ended, output, error) VALUES (?,?,?,?,?,?,?,?)", values)
        await self.store.commit([write])

    def _call(self, row: tuple[Any, ...]) -> TeamCall:
        (call_id, team, tenant, definition, inp, status, created, ended, output, error,
         traceparent, tracestate) = row
        call = TeamCall(call_id, team, msgspec.json.decode(definition, type=TeamSpec),
                        msgspec.json.decode(inp), status, created, tenant, ended,
                        _value(output), error, traceparent=traceparent,
                        tracestate=tracestate)
        for key, task_id, st, started, end, out, err in self.store.db.execute(
                "SELECT key, task_id, status, started, ended, output, error FROM team_steps "
                "WHERE call_id = ?", (call_id,)):
            call.steps[key] = CallStep(key, st, task_id, started, end, _value(out), err)
        return call

    def load(self, call_id: str) -> TeamCall | None:
        row = self.store.db.execute(f"SELECT {_COLUMNS} FROM team_calls WHERE call_id = ?",
                                    (call_id,)).fetchone()
        return self._call(row) if row is not None else None

    def unfinished(self) -> list[TeamCall]:
        return [self._call(r) for r in self.store.db.execute(
            f"SELECT {_COLUMNS} FROM team_calls WHERE status = 'running' ORDER BY call_id")]

    def listing(self, team: str, status: str | None, since: float | None,
                before: str | None, limit: int, tenant: str | None = None
                ) -> list[TaskSummary]:
        """A team's calls as lines of `corral tasks`, newest first (ids sort as made);
        with `tenant`, those made for it alone."""
        where = ["team = ?"]
        args: list[object] = [team]
        if tenant is not None:
            where.append("tenant = ?")
            args.append(tenant)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if since is not None:
            where.append("created >= ?")
            args.append(since)
        if before is not None:
            where.append("call_id < ?")
            args.append(before)
        rows = self.store.db.execute(
            f"SELECT call_id, status, created, ended, tenant FROM team_calls WHERE "
            f"{' AND '.join(where)} ORDER BY call_id DESC LIMIT ?", (*args, limit))
        return [TaskSummary(task_id=call_id, agent=team, status=st, priority=0,
                            created=created, started=created, finished=ended, attempts=0,
                            tenant=owner)
                for call_id, st, created, ended, owner in rows]


def _prune(db: sqlite3.Connection) -> None:
    old = ("SELECT call_id FROM team_calls WHERE status != 'running' ORDER BY call_id DESC "
           "LIMIT -1 OFFSET ?")
    db.execute(f"DELETE FROM team_steps WHERE call_id IN ({old})", (KEPT,))
    db.execute(f"DELETE FROM team_calls WHERE call_id IN ({old})", (KEPT,))
