"""A workflow's run as it is kept: a durable call of kind "workflow" (supervisor/durable/,
kept by daemon/calljournal.py), with the definition it started on (and its revision),
and each step's row; and the runs' own reads of those tables (their outputs, a page of
runs, their pruning)."""

from __future__ import annotations

import itertools
import operator
import sqlite3
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any

import msgspec

from ...supervisor.durable import CALL_ENDED, WHOLE, CallRecord, StepRow
from ...supervisor.durable.store import DurableStore
from ...supervisor.workflows import Workflow, WorkflowSpec, compile_workflow
from ..calljournal import COLUMNS, CallJournal, record_of
from ..sqlfilters import given
from ..store import StateStore

RUN_ENDED = CALL_ENDED
RUN_STATUSES = RUN_ENDED | {"running"}  # what `runs.list` may filter on
KIND = "workflow"
# whether a caller sees a record of this agent made for this tenant (Caller.sees_record)
Sees = Callable[[str, str | None], bool]


class Run(msgspec.Struct):
    run_id: str
    workflow: str
    wf: Workflow  # compiled from the definition stored with the run
    input: Any
    status: str
    created: float
    deadline: float | None = None
    ended: float | None = None
    error: str | None = None
    rows: dict[tuple[str, int], StepRow] = msgspec.field(default_factory=dict)
    revision: int | None = None  # of a workflow added at runtime (None: the config's)
    # every agent it may run, its nested workflows' as they were when it started
    # (None: its own steps' alone)
    nested_agents: list[str] | None = None
    # with [tracing]: the context its span is a child of (a caller's, its nested step's),
    # as it was when it started; None: a trace of its own (runtraces.py)
    traceparent: str | None = None
    tracestate: str | None = None
    # whose run it is: its workflow's tenant when it started (WorkflowService.tenant);
    # None: of no one tenant, the operator's
    tenant: str | None = None
    # while a caller waits to be answered with the run's rows (workflows.run): its last
    # step's key and output as kept, once that ended here, so the answer does not read
    # them back; None: no caller waits (a run keeps no output in memory otherwise)
    answer: list[Any] | None = None

    @property
    def agents(self) -> list[str]:
        nested = self.nested_agents
        if not nested or nested == self.wf.agents:  # (a run started here: its own)
            return self.wf.agents
        return sorted({*self.wf.agents, *nested})

    @property
    def call_id(self) -> str:
        return self.run_id

    def record(self) -> CallRecord:
        return CallRecord(self.run_id, KIND, self.workflow, msgspec.json.encode(self.wf.spec),
                          self.input, self.status, self.created, self.tenant, self.ended,
                          self.deadline, None, self.error, self.revision, self.agents,
                          self.traceparent, self.tracestate)

    @classmethod
    def kept(cls, record: CallRecord) -> Run:
        spec = msgspec.json.decode(record.definition, type=WorkflowSpec)
        return cls(record.call_id, record.name, compile_workflow(record.name, spec),
                   record.input, record.status, record.created, record.deadline,
                   record.ended, record.error, record.rows, revision=record.revision,
                   nested_agents=record.agents, traceparent=record.traceparent,
                   tracestate=record.tracestate, tenant=record.tenant)


class Outputs(Mapping[str, Any]):
    """A run's ended steps' outputs, read back from its rows as one is named: a run keeps
    none in memory, however many items its maps have."""

    def __init__(self, run: Run, store: RunStore) -> None:
        self.run, self.store = run, store
        self._read: dict[str, Any] = {}

    def _ended(self) -> list[str]:
        rows = self.run.rows
        return [s.name for s in self.run.wf.steps if (row := rows.get((s.name, WHOLE)))
                is not None and row.status in ("succeeded", "skipped")]

    def __getitem__(self, name: str) -> Any:
        if name not in self._read:
            row = self.run.rows.get((name, WHOLE))
            if row is None or row.status not in ("succeeded", "skipped"):
                raise KeyError(name)
            mapped = self.run.wf.step(name).mapped and row.status == "succeeded"
            self._read[name] = (self.store.items_output(self.run.run_id, name) if mapped
                                else self.store.journal.output(self.run.run_id, name, WHOLE))
        return self._read[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ended())

    def __len__(self) -> int:
        return len(self._ended())


class RunStore:
    def __init__(self, store: StateStore, calls: DurableStore | None = None) -> None:
        """`calls`: where the runs are kept when not in `store` alone (a cluster node's:
        Redis, with a copy in `store`, which the reads here read)."""
        self.store = store
        self.journal = CallJournal(store)
        self.calls: DurableStore = calls if calls is not None else self.journal

    def outputs(self, run: Run) -> Outputs:
        return Outputs(run, self)

    def outputs_of(self, run_id: str, rows: list[tuple[str, int]]
                   ) -> Generator[bytes | None, None, None]:
        """The outputs of these rows (step, item), as kept, in their order: read as they
        are taken, one query for each step's run of them."""
        for step, run in itertools.groupby(rows, key=operator.itemgetter(0)):
            items = [item for _, item in run]
            kept = self.store.db.execute(
                "SELECT item, output FROM call_steps WHERE call_id = ? AND step = ? AND item "
                "BETWEEN ? AND ? ORDER BY item", (run_id, step, min(items), max(items)))
            try:  # (closed when the page ends early too: no read held open)
                row = kept.fetchone()
                for item in items:
                    while row is not None and row[0] < item:
                        row = kept.fetchone()
                    yield row[1] if row is not None and row[0] == item else None
            finally:
                kept.close()

    def output_bytes(self, run_id: str, step: str, mapped: bool) -> int:
        """How long a step's output is as JSON (a map's: its items' and their list's)."""
        if not mapped:
            row = self.store.db.execute(
                "SELECT COALESCE(LENGTH(output), 4) FROM call_steps WHERE call_id = ? AND "
                "step = ? AND item = ?", (run_id, step, WHOLE)).fetchone()
            return int(row[0]) if row is not None else 4
        n, size = self.store.db.execute(
            "SELECT COUNT(*), SUM(COALESCE(LENGTH(output), 4)) FROM call_steps WHERE "
            "call_id = ? AND step = ? AND item >= 0", (run_id, step)).fetchone()
        return 2 + int(size or 0) + max(0, int(n) - 1)

    def items_output(self, run_id: str, step: str) -> list[Any]:
        return [msgspec.json.decode(o) if o is not None else None
                for (o,) in self.store.db.execute(
                    "SELECT output FROM call_steps WHERE call_id = ? AND step = ? AND item >= 0"
                    " ORDER BY item", (run_id, step))]

    def load(self, run_id: str, *, steps: bool = True) -> Run | None:
        record = self.journal.load(run_id, steps=steps)
        return Run.kept(record) if record is not None and record.kind == KIND else None

    def unfinished(self) -> list[Run]:
        return [Run.kept(r) for r in self.calls.unfinished(KIND)]

    def listing(self, workflow: str | None, status: str | None, since: float | None,
                limit: int, before: str | None, sees: Sees | None) -> list[Run] | None:
        """The newest runs first (their ids sort as made), since `since` (wall time), before
        the run `before` (None when it names no run kept that `sees` admits)."""
        where, args = given(("kind = ?", KIND), ("name = ?", workflow),
                            ("status = ?", status), ("created >= ?", since))
        seen = ""
        if sees is not None:
            # in the query, so a page is whole and its cursor a run the caller sees
            where.append("sees_all(agents, tenant)")
            seen = " AND sees_all(agents, tenant)"
        db = self.store.db
        db.create_function("sees_all", 2, _seeing(sees), deterministic=True)
        try:
            if before is not None:
                if db.execute("SELECT 1 FROM calls WHERE call_id = ? AND kind = ?" + seen,
                              (before, KIND)).fetchone() is None:
                    return None
                where.append("call_id < ?")
                args.append(before)
            rows = db.execute(f"SELECT {COLUMNS} FROM calls WHERE {' AND '.join(where)} "
                              "ORDER BY call_id DESC LIMIT ?", (*args, limit)).fetchall()
        finally:
            db.create_function("sees_all", 2, None)
        return [Run.kept(record_of(r)) for r in rows]

    async def prune(self, max_age: float, max_runs: int) -> int:
        """Ended runs and their rows past the task journal's retention, never a nested run
        a running run's step names (resumed, that step waits for it). How many went."""
        gone = 0

        def write(db: sqlite3.Connection) -> None:
            nonlocal gone
            kept = ("kind = 'workflow' AND status != 'running' AND ended IS NOT NULL AND "
                    "call_id NOT IN (SELECT s.task_id FROM calls p JOIN call_steps s ON "
                    "s.call_id = p.call_id WHERE p.kind = 'workflow' AND "
                    "p.status = 'running' AND s.task_id IS NOT NULL)")
            ids = [] if max_age <= 0 else [r for (r,) in db.execute(
                f"SELECT call_id FROM calls WHERE {kept} AND ended < ?",
                (time.time() - max_age,))]
            ids += [r for (r,) in db.execute(
                f"SELECT call_id FROM calls WHERE {kept} ORDER BY ended DESC "
                "LIMIT -1 OFFSET ?", (max_runs,))]
            gone = len(set(ids))
            for table in ("call_steps", "call_signals", "calls"):
                db.executemany(f"DELETE FROM {table} WHERE call_id = ?", ((r,) for r in ids))
        await self.store.commit([write])
        return gone


def _seeing(sees: Sees | None) -> Callable[[bytes | str | None, str | None], bool]:
    def sees_all(agents: bytes | str | None, tenant: str | None) -> bool:
        # a run from before its agents were kept with it: its own steps' are not known
        # here, so only an unlimited caller sees it in a listing
        if sees is None:
            return True
        if agents is None:
            return False
        return all(sees(a, tenant) for a in msgspec.json.decode(agents, type=list[str]))

    return sees_all
