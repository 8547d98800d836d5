"""Teams' calls in the state database: durable calls of kind "team" in the calls' journal
(calljournal.py), listed as tasks of their team; ended calls past the newest KEPT pruned,
counted where they are made (a cluster node's copies are saved here too)."""

from __future__ import annotations

import sqlite3

from ...supervisor.teams.call import KIND, TeamCall
from ...taskviews import TaskSummary
from ..calljournal import CallJournal
from ..sqlfilters import given

KEPT = 10_000  # ended calls kept (their member tasks are kept as tasks are)
PRUNE_EVERY = 100  # calls made between two prunings


class TeamCalls(CallJournal):
    _made = 0

    async def made(self, n: int = 1) -> None:
        """`n` calls made or copied here: the ended calls past the newest KEPT pruned at
        the first, then every PRUNE_EVERY."""
        before, self._made = self._made, self._made + n
        if n and (before == 0 or before // PRUNE_EVERY != self._made // PRUNE_EVERY):
            await self.store.commit([_prune])

    def call(self, call_id: str) -> TeamCall | None:
        record = self.load(call_id)
        return TeamCall.kept(record) if record is not None and record.kind == KIND else None

    def unfinished_calls(self) -> list[TeamCall]:
        return [TeamCall.kept(r) for r in self.unfinished(KIND)]

    def listing(self, team: str, status: str | None, since: float | None,
                before: str | None, limit: int, tenant: str | None = None
                ) -> list[TaskSummary]:
        """A team's calls as lines of `corral tasks`, newest first (ids sort as made);
        with `tenant`, those made for it alone."""
        where, args = given(("kind = ?", KIND), ("name = ?", team), ("tenant = ?", tenant),
                            ("status = ?", status), ("created >= ?", since),
                            ("call_id < ?", before))
        rows = self.store.db.execute(
            f"SELECT call_id, status, created, ended, tenant FROM calls WHERE "
            f"{' AND '.join(where)} ORDER BY call_id DESC LIMIT ?", (*args, limit))
        return [TaskSummary(task_id=call_id, agent=team, status=st, priority=0,
                            created=created, started=created, finished=ended, attempts=0,
                            tenant=owner)
                for call_id, st, created, ended, owner in rows]


def _prune(db: sqlite3.Connection) -> None:
    old = ("SELECT call_id FROM calls WHERE kind = 'team' AND status != 'running' "
           "ORDER BY call_id DESC LIMIT -1 OFFSET ?")
    db.execute(f"DELETE FROM call_steps WHERE call_id IN ({old})", (KEPT,))
    db.execute(f"DELETE FROM calls WHERE call_id IN ({old})", (KEPT,))
