"""A run's rows in the state database (migrations 12, 14): the run with the definition
it started on (and its revision), and each step's row. Writes are committed
(StateStore.commit) before what they describe is done: a step's task id before its task
is submitted."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ...supervisor.workflows import Workflow, WorkflowSpec, compile_workflow
from ...supervisor.workflows.definition import decode_spec, encode_spec
from ..definitions import UNSTAMPED, one_tenant
from ..sqlfilters import given
from ..store import StateStore

RUN_ENDED = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
RUN_STATUSES = RUN_ENDED | {"running"}  # what `runs.list` may filter on
STEP_ENDED = frozenset({"succeeded", "failed", "skipped", "cancelled", "timed_out", "lost"})
# whether a caller sees a record of this agent made for this tenant (Caller.sees_record)
Sees = Callable[[str, str | None], bool]
WHOLE = -1  # the item of a step's own row (a map's items are 0...)


@dataclass
class StepRow:
    step: str
    item: int
    status: str  # running, or one of STEP_ENDED
    task_id: str | None = None
    started: float | None = None
    ended: float | None = None
    output: Any = None
    error: str | None = None


@dataclass
class Run:
    run_id: str
    workflow: str
    wf: Workflow  # compiled from the definition stored with the run
    input: Any
    status: str
    created: float
    deadline: float | None = None
    ended: float | None = None
    error: str | None = None
    rows: dict[tuple[str, int], StepRow] = field(default_factory=dict)
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

    @property
    def agents(self) -> list[str]:
        return sorted({*self.wf.agents, *(self.nested_agents or ())})


class Outputs(Mapping[str, Any]):
    """A run's ended steps' outputs (a map step's: the list of its items'), read back
    from its rows as one is named and held while the asker holds this: a run keeps none
    in memory, however many items its maps have (decision 444)."""

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
                                else self.store.output(self.run.run_id, name, WHOLE))
        return self._read[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ended())

    def __len__(self) -> int:
        return len(self._ended())


def _settle(waiters: asyncio.Future[None], commit: asyncio.Future[None]) -> None:
    if commit.cancelled():
        waiters.cancel()
    elif commit.exception() is not None:
        waiters.set_exception(commit.exception())  # type: ignore[arg-type]
        waiters.exception()  # told to each saver; never "not retrieved"
    else:
        waiters.set_result(None)


def _json(value: Any) -> bytes:
    return msgspec.json.encode(value)


class RunStore:
    def __init__(self, store: StateStore) -> None:
        self.store = store
        # step rows are group-committed: those saved while a commit is under way go in
        # the next one, together (a map's lanes, many runs), each saver waiting for its own
        self._lock = asyncio.Lock()
        self._waiting: list[tuple[str, StepRow]] = []
        self._next: asyncio.Future[None] | None = None

    async def save_run(self, run: Run) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute(f"INSERT OR REPLACE INTO runs ({self._COLUMNS}) VALUES "
                       "(?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                       (run.run_id, run.workflow, encode_spec(run.wf.spec), _json(run.input),
                        run.status, run.created, run.ended, run.deadline, run.error,
                        run.revision, _json(run.agents), run.traceparent, run.tracestate,
                        run.tenant))
        await self.store.commit([write])

    async def save_steps(self, run_id: str, rows: list[StepRow]) -> None:
        """Committed when this returns (or StoreError), with whatever else was saved
        meanwhile."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        mine = self._next
        self._waiting.extend((run_id, r) for r in rows)
        async with self._lock:
            if mine.done():  # committed by the saver before us, with its own
                return mine.result()
            taken, self._waiting, self._next = self._waiting, [], None
            # (each output goes to the store alone: the run's row in memory holds none)
            values = [(rid, r.step, r.item, r.task_id, r.status, r.started, r.ended,
                       _json(r.output) if r.output is not None else None, r.error)
                      for rid, r in taken]

            def write(db: sqlite3.Connection) -> None:
                db.executemany(
                    "INSERT OR REPLACE INTO run_steps (run_id, step, item, task_id, status, "
                    "started, ended, output, error) VALUES (?,?,?,?,?,?,?,?,?)", values)
            # the others' rows are in it: a saver cancelled (its run) does not cancel it
            commit = asyncio.ensure_future(self.store.commit([write]))
            commit.add_done_callback(lambda done: _settle(mine, done))
            await asyncio.shield(commit)
            return None

    def _run(self, row: tuple[Any, ...], with_steps: bool) -> Run:
        (run_id, workflow, definition, inp, status, created, ended, deadline, error,
         revision, agents, traceparent, tracestate, tenant) = row
        spec: WorkflowSpec = decode_spec(definition)
        run = Run(run_id, workflow, compile_workflow(workflow, spec),
                  msgspec.json.decode(inp), status, created, deadline, ended, error,
                  revision=revision,
                  nested_agents=msgspec.json.decode(agents) if agents is not None else None,
                  traceparent=traceparent, tracestate=tracestate, tenant=tenant)
        if with_steps:  # (without their outputs: read back when asked, Outputs)
            for step, item, task_id, st, started, end, err in self.store.db.execute(
                    "SELECT step, item, task_id, status, started, ended, error "
                    "FROM run_steps WHERE run_id = ?", (run_id,)):
                run.rows[(step, item)] = StepRow(step, item, st, task_id, started, end,
                                                 None, err)
        return run

    def outputs(self, run: Run) -> Outputs:
        return Outputs(run, self)

    def _blob(self, run_id: str, step: str, item: int) -> bytes | None:
        row = self.store.db.execute("SELECT output FROM run_steps WHERE run_id = ? AND "
                                    "step = ? AND item = ?", (run_id, step, item)).fetchone()
        return row[0] if row is not None else None

    def output(self, run_id: str, step: str, item: int) -> Any:
        """One row's output, read back."""
        blob = self._blob(run_id, step, item)
        return msgspec.json.decode(blob) if blob is not None else None

    def outputs_of(self, run_id: str, rows: list[tuple[str, int]]
                   ) -> Generator[bytes | None, None, None]:
        """The outputs of these rows (step, item), as kept, in their order: read as they
        are taken, one query for each step's run of them."""
        i = 0
        while i < len(rows):
            step = rows[i][0]
            j = i
            while j < len(rows) and rows[j][0] == step:
                j += 1
            items = [item for _, item in rows[i:j]]
            kept = self.store.db.execute(
                "SELECT item, output FROM run_steps WHERE run_id = ? AND step = ? AND item "
                "BETWEEN ? AND ? ORDER BY item", (run_id, step, min(items), max(items)))
            try:  # (closed when the page ends early too: no read held open)
                row = kept.fetchone()
                for item in items:
                    while row is not None and row[0] < item:
                        row = kept.fetchone()
                    yield row[1] if row is not None and row[0] == item else None
            finally:
                kept.close()
            i = j

    def output_bytes(self, run_id: str, step: str, mapped: bool) -> int:
        """How long a step's output is as JSON (a map's: its items' and their list's)."""
        if not mapped:
            blob = self._blob(run_id, step, WHOLE)
            return len(blob) if blob is not None else 4
        n, size = self.store.db.execute(
            "SELECT COUNT(*), SUM(COALESCE(LENGTH(output), 4)) FROM run_steps WHERE "
            "run_id = ? AND step = ? AND item >= 0", (run_id, step)).fetchone()
        return 2 + int(size or 0) + max(0, int(n) - 1)

    def items_output(self, run_id: str, step: str) -> list[Any]:
        """A map step's output: its items' outputs, in their order."""
        return [msgspec.json.decode(o) if o is not None else None
                for (o,) in self.store.db.execute(
                    "SELECT output FROM run_steps WHERE run_id = ? AND step = ? AND item >= 0"
                    " ORDER BY item", (run_id, step))]

    _COLUMNS = ("run_id, workflow, definition, input, status, created, ended, deadline, "
                "error, revision, agents, traceparent, tracestate, tenant")

    def load(self, run_id: str, *, steps: bool = True) -> Run | None:
        row = self.store.db.execute(f"SELECT {self._COLUMNS} FROM runs WHERE run_id = ?",
                                    (run_id,)).fetchone()
        return self._run(row, steps) if row is not None else None

    def unfinished(self) -> list[Run]:
        return [self._run(r, True) for r in self.store.db.execute(
            f"SELECT {self._COLUMNS} FROM runs WHERE status = 'running' ORDER BY run_id")]

    async def stamp(self, tenant_of: Callable[[str], str | None]) -> int:
        """The runs kept before each was its tenant's, told whose: the tenant all their
        agents are of now (`tenant_of`); how many."""
        told = []
        for (run_id,) in self.store.db.execute("SELECT run_id FROM runs WHERE tenant = ?",
                                                (UNSTAMPED,)).fetchall():
            run = self.load(run_id, steps=False)
            if run is not None:
                told.append((one_tenant(run.agents, tenant_of), run_id))

        def write(db: sqlite3.Connection) -> None:
            db.executemany("UPDATE runs SET tenant = ? WHERE run_id = ?", told)
        if told:
            await self.store.commit([write])
        return len(told)

    def listing(self, workflow: str | None, status: str | None, since: float | None,
                limit: int, before: str | None, sees: Sees | None) -> list[Run] | None:
        """The newest runs first (their ids sort as they were made), made since `since`
        (wall time), before the run `before` (a page's cursor: None when it names no run
        kept that `sees` admits); with `sees`, the runs all of whose agents it admits of
        the run's tenant."""
        where, args = given(("workflow = ?", workflow), ("status = ?", status),
                            ("created >= ?", since))
        seen = ""
        if sees is not None:
            # in the query, so a page is whole and its cursor a run the caller sees
            where.append("sees_all(agents, tenant)")
            seen = " AND sees_all(agents, tenant)"
        db = self.store.db
        db.create_function("sees_all", 2, _seeing(sees), deterministic=True)
        try:
            if before is not None:
                if db.execute("SELECT 1 FROM runs WHERE run_id = ?" + seen,
                              (before,)).fetchone() is None:
                    return None
                where.append("run_id < ?")
                args.append(before)
            clause = f" WHERE {' AND '.join(where)}" if where else ""
            rows = db.execute(f"SELECT {self._COLUMNS} FROM runs{clause} "
                              "ORDER BY run_id DESC LIMIT ?", (*args, limit)).fetchall()
        finally:
            db.create_function("sees_all", 2, None)
        return [self._run(r, False) for r in rows]

    async def prune(self, max_age: float, max_runs: int) -> int:
        """Ended runs, and their steps' rows, past the task journal's retention: ended
        more than `max_age` seconds ago (0: no limit), or older than the newest
        `max_runs` ended ones. Never a running run, nor a nested run a running run's
        step names (resumed, that step waits for it). How many went."""
        gone = 0

        def write(db: sqlite3.Connection) -> None:
            nonlocal gone
            kept = ("status != 'running' AND ended IS NOT NULL AND run_id NOT IN "
                    "(SELECT s.task_id FROM runs p JOIN run_steps s ON s.run_id = p.run_id "
                    "WHERE p.status = 'running' AND s.task_id IS NOT NULL)")
            ids = [] if max_age <= 0 else [r for (r,) in db.execute(
                f"SELECT run_id FROM runs WHERE {kept} AND ended < ?",
                (time.time() - max_age,))]
            ids += [r for (r,) in db.execute(
                f"SELECT run_id FROM runs WHERE {kept} ORDER BY ended DESC "
                "LIMIT -1 OFFSET ?", (max_runs,))]
            gone = len(set(ids))
            db.executemany("DELETE FROM run_steps WHERE run_id = ?", ((r,) for r in ids))
            db.executemany("DELETE FROM runs WHERE run_id = ?", ((r,) for r in ids))
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
