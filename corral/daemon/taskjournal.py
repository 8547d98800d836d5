"""The task journal: every accepted task in SQLite, so a daemon crash loses none
(docs/tasks.md; not journald.py, which feeds systemd's journal).

`arrival` numbers rows in the order accepted, across daemons: the engine's sequence numbers
start again in every process, and ids from before UUIDv7 do not sort by time. The batching
and its retries are storewriter.py's GroupCommit; `committed()` fails while the journal
cannot be written, so a task that cannot be recorded is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sqlite3
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from ..supervisor.tasks import (
    Attempt,
    CompactTask,
    ModelUsage,
    Task,
    TaskFailure,
    TaskInfo,
    TaskRecord,
    TaskSummary,
    raw_output_of,
    unknown_cursor,
)
from ..supervisor.tasks.budget import MINUTE
from ..supervisor.tasks.durable import Sees
from ..supervisor.tasks.spawntree import KIND as SPAWN_TREE
from ..supervisor.tasks.stepjournal import CHECKPOINT_SEQ
from ..taskkeys import ACCEPTED, CLAIMED, KEEP_SECONDS, MAX_KEYS_PER_TENANT, KeyClaim
from ..taskoptions import NO_FILTERS, TaskFilters, decoded, encoded, filter_sql
from ..taskviews import queue_wait
from ..text import iso_time, listing, plural
from .calljournal import delete_ended_calls
from .inboxjournal import delete_replica_asks
from .labeljournal import INSERT as LABEL_INSERT
from .labeljournal import LabelRow
from .sqlfilters import given
from .steps import (
    KEEP_ENDED,
    delete_ended,
    delete_orphans,
    delete_steps,
    drop_unused,
    remove_refs,
    results_dir,
)
from .storeschema import HOLDER, StoreConnection, StoreError, connect, errors_named
from .storewriter import RETRY_EVERY, GroupCommit, WriterThread

log = logging.getLogger("corral.taskjournal")

PRUNE_EVERY = 60.0
# how long a new task's first row may wait when nobody waits for it to be committed
YOUNG_FOR = 0.1
YOUNG_SLACK = 0.002  # released with the ones due this soon: one wake-up for a burst
BEHIND_BYTES = 32 * 1024 * 1024  # inputs and outputs waiting to be written

UPSERT = """
INSERT INTO tasks (id, arrival, agent, priority, timeout, retries_left, created, started,
                   finished, status, tool_calls, input, output, error, attempts, progress,
                   usage, not_before, options, tenant)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    not_before = excluded.not_before,
    retries_left = excluded.retries_left, started = excluded.started,
    finished = excluded.finished, status = excluded.status,
    tool_calls = excluded.tool_calls,
    input = coalesce(excluded.input, input),
    output = coalesce(excluded.output, output), error = excluded.error,
    attempts = excluded.attempts, progress = excluded.progress, usage = excluded.usage
"""

# the usage of the tasks that ended since :since (or have not), summed per agent and
# bucket (supervisor/tasks/budget.py); two halves, each on its partial index. (CAST: a
# BLOB is JSONB to a newer SQLite's json functions.) Only the tasks of the tenant that
# holds each name: another tenant's agent of the name spent no budget of this one.
USAGE_SINCE = """
SELECT agent, w, tokens, cost FROM (
SELECT agent, t, CASE WHEN f < :recent THEN CAST(f / :minute AS INTEGER) * :minute
                      ELSE CAST(f AS INTEGER) END AS w,
       sum(coalesce(json_extract(u, '$.input_tokens'), 0)
           + coalesce(json_extract(u, '$.output_tokens'), 0)) AS tokens,
       sum(coalesce(json_extract(u, '$.cost_usd'), 0.0)) AS cost
FROM (SELECT agent, tenant AS t, finished AS f, CAST(usage AS TEXT) AS u FROM tasks
      WHERE finished >= :since AND usage IS NOT NULL
      UNION ALL
      SELECT agent, tenant, :now, CAST(usage AS TEXT) FROM tasks
      WHERE finished IS NULL AND usage IS NOT NULL)
GROUP BY agent, t, w) AS used
WHERE t IS """ + HOLDER.format(agent="used.agent")

_CHECKPOINT = ("(SELECT r.body FROM steps s JOIN step_results r ON r.hash = s.result "
               f"WHERE s.task_id = tasks.id AND s.seq = {CHECKPOINT_SEQ})")
# a task's row whole, as a restart takes it back (its checkpoint with it: steps.py)
WHOLE = ("SELECT id, agent, input, priority, timeout, retries_left, created, started, status, "
         f"tool_calls, attempts, usage, not_before, options, tenant, {_CHECKPOINT} "
         "FROM tasks WHERE id = ?")
# the unfinished ones, a suspended one's row lean (CompactTask): its arrival in the
# input's place, and whether its last attempt has yet to be seen ended in the attempts'
_LEAN = "CASE WHEN status = 'suspended' THEN {} ELSE {} END"
_UNSETTLED = "json_extract(attempts, '$[#-1].finished') IS NULL"
UNFINISHED = (
    f"SELECT id, agent, {_LEAN.format('arrival', 'input')}, priority, timeout, retries_left, "
    "created, started, status, tool_calls, "
    f"{_LEAN.format(_UNSETTLED, 'attempts')}, "
    f"usage, not_before, options, tenant, {_LEAN.format('NULL', _CHECKPOINT)} "
    "FROM tasks WHERE finished IS NULL ORDER BY arrival")

_encode = msgspec.json.encode
_attempts = msgspec.json.Decoder(list[Attempt])
_error = msgspec.json.Decoder(TaskFailure | None)
_usage = msgspec.json.Decoder(ModelUsage)

# an idempotency key's row (corral/taskkeys.py): written in the transaction of its task's
# first row (`keep_key`), so a crash keeps both or neither
KEY_UPSERT = """
INSERT INTO idempotency_keys (tenant, key, task_id, digest, created) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (tenant, key) DO UPDATE SET task_id = excluded.task_id,
    digest = excluded.digest, created = excluded.created
"""
KNOWN = "SELECT 1 FROM tasks WHERE id = ?"
KEY_FIND = ("SELECT task_id, digest FROM idempotency_keys "
            "WHERE tenant = ? AND key = ? AND created >= ?")
KEY_COUNT = "SELECT count(*) FROM idempotency_keys WHERE tenant = ? AND created >= ?"

Row = tuple[Any, ...]
TASK_ROW = 20  # a task's row's length (UPSERT's)
KEY_ROW = 5  # an idempotency key's (KEY_UPSERT's)
LABEL_ROW = 3  # a label's (labeljournal.py's INSERT)


class TaskJournalDB:
    def __init__(self, path: Path, *, sync: str = "normal", max_age: float = 7 * 86400,
                 max_tasks: int = 100_000,
                 on_error: Callable[[str], None] | None = None,
                 on_notice: Callable[[str], None] | None = None,
                 writer: WriterThread | None = None,
                 max_keys: int = MAX_KEYS_PER_TENANT) -> None:
        """`writer`: the daemon's one writer thread (storewriter.py); without one, the
        journal starts its own. `max_keys`: the idempotency keys a tenant holds."""
        self.path = path
        self.bound = max_keys
        # idempotency keys handed to the writer and not yet committed, by (tenant, key):
        # (the task's id, the digest); a lookup sees them before the table has them
        self._keys: dict[tuple[str, str], tuple[str, str]] = {}
        # each tenant's keys as counted once after a prune, then kept by keep_key and
        # drop_key (a count of the table at each keyed submission was ~0.3 ms at 10 000)
        self._held: dict[str, int] = {}
        self.max_age = max_age
        self.max_tasks = max_tasks
        self.on_error = on_error or (lambda msg: log.error("%s", msg))
        self.on_notice = on_notice or (lambda msg: log.warning("%s", msg))
        self._loop = asyncio.get_running_loop()
        self._own_writer = writer is None
        self._writer = writer or WriterThread(path, sync=sync)
        self._reader = connect(path)
        self._read_lock = threading.Lock()
        self._rows: StoreConnection | None = None  # whole rows read on the loop
        # by id: the latest snapshot of each task; one GroupCommit with StoreWriter's kind
        self._group: GroupCommit[Row] = GroupCommit(
            self._writer, self._write, self._settled, merge=_merged, size=_size,
            error_type=StoreError, explain=self._cannot, shared=True, yields=True)
        self._outage = self._group.outage  # since a write failed, until one works
        self._prune_timer: asyncio.TimerHandle | None = None
        # new tasks whose first row waits: id -> (when, arrival, the task), oldest first
        self._young: dict[str, tuple[float, int, Task]] = {}
        self._release_timer: asyncio.TimerHandle | None = None
        self.writes = 0  # changes handed to the journal
        self.rows = 0  # rows written (changes to one task in one batch are one row)
        self.batches = 0  # transactions committed
        self._pruned_once = False
        with errors_named(self.path):
            (top,) = self._reader.execute("SELECT max(arrival) FROM tasks").fetchone()
        self._arrivals = itertools.count(top + 1 if top is not None else 0)

    # -- start-up -------------------------------------------------------------------------
    def unfinished(self) -> list[TaskRecord | CompactTask]:
        """The tasks a crashed daemon left queued or running, in arrival order; the
        suspended ones as CompactTasks (read whole when they resume: TaskManager.live).
        Row by row: thousands of suspended tasks make no heap of rows."""
        out: list[TaskRecord | CompactTask] = []
        with errors_named(self.path):
            for row in self._reader.execute(UNFINISHED):
                if row[8] == "suspended":
                    tenant = row[14]
                    out.append(CompactTask(row[0], sys.intern(row[1]),
                                           None if tenant is None else sys.intern(tenant),
                                           row[2], not row[10]))
                else:
                    out.append(_record(row))
            # the pages of the whole table, read once: not kept in the reader's cache
            self._reader.execute("PRAGMA shrink_memory")
        return out

    def record(self, task_id: str) -> TaskRecord | None:
        """One task's row whole, read on the loop (a compact suspended task resuming)."""
        with errors_named(self.path):
            found = self._loop_rows().rows(WHOLE, (task_id,))
        return _record(found[0]) if found else None

    def knows(self, task_id: str) -> bool:
        if task_id in self._young or task_id in self._group.pending or any(
                key == task_id for key, _ in self._group.inflight):
            return True
        with errors_named(self.path):
            return bool(self._loop_rows().rows(KNOWN, (task_id,)))

    # -- idempotency keys (corral/taskkeys.py) ------------------------------------------
    def _loop_rows(self) -> StoreConnection:
        rows = self._rows
        if rows is None:
            # the loop's own connection: the reader's lock is held by reads in threads
            rows = self._rows = connect(self.path)
        return rows

    def key_of(self, tenant: str, key: str) -> tuple[str, str] | None:
        """The task a tenant's key names and its request's digest, or None. On the loop,
        so that no other submission comes between the look and the keeping."""
        found = self._keys.get((tenant, key))
        if found is not None:
            return found
        with errors_named(self.path):
            rows = self._loop_rows().rows(KEY_FIND, (tenant, key,
                                                     time.time() - KEEP_SECONDS))
        return (rows[0][0], rows[0][1]) if rows else None

    def _keys_held(self, tenant: str) -> int:
        """The tenant's keys younger than KEEP_SECONDS (counted on its index once after
        each prune, then kept: one older meanwhile counts until the next prune)."""
        held = self._held.get(tenant)
        if held is None:
            waiting = sum(1 for t, _ in self._keys if t == tenant)
            with errors_named(self.path):
                (count,) = self._loop_rows().rows(KEY_COUNT, (
                    tenant, time.time() - KEEP_SECONDS))[0]
            held = self._held[tenant] = int(count) + waiting
        return held

    async def claim(self, tenant: str, key: str, task_id: str, digest: str) -> KeyClaim:
        """KeyStore's put if absent, with no await: the engine's submit follows it before
        anything else runs here, so a key held names its task (ACCEPTED)."""
        found = self.key_of(tenant, key)
        if found is not None:
            return KeyClaim(tenant, key, *found, ACCEPTED, False)
        held = self._keys_held(tenant)
        if held >= self.bound:
            return KeyClaim(tenant, key, task_id, digest, CLAIMED, False, held)
        self._keys[(tenant, key)] = (task_id, digest)
        self._held[tenant] = held + 1
        return KeyClaim(tenant, key, task_id, digest, CLAIMED, True)

    def keep_key(self, task: Task, claim: KeyClaim) -> None:
        """A claimed key's row, with its task's first: one transaction, so a crash keeps
        both or neither."""
        young = self._young.pop(task.id, None)
        if young is not None:
            self._group.put(task.id, _row(task, young[1], task.input))
        self._group.put(claim[:2], (*claim[:2], task.id, claim.digest, task.created))

    def labels(self, rows: Sequence[LabelRow]) -> None:
        """The label rows of a task being accepted now (labeljournal.py): in the next
        batch, which is its first row's or an earlier one, one transaction with the rest."""
        for row in rows:
            self._group.put(("label", row[0], row[1]), row)

    async def accepted(self, claim: KeyClaim) -> None:
        """Nothing to write: the key's row went with its task's first (keep_key)."""

    async def release(self, claim: KeyClaim) -> None:
        if self._keys.pop(claim[:2], None) is not None:
            self._group.pending.pop(claim[:2], None)
            if claim.tenant in self._held:
                self._held[claim.tenant] -= 1

    def usage_since(self, since: float) -> list[tuple[str, float, int, float]]:
        """(agent, when, tokens, dollars) of the tasks that ended at or after `since`, or
        have not (`when`: now), for the budgets' windows: summed per agent and minute (the
        day window's bucket), and to the second in the last minute (the minute window's)."""
        now = time.time()
        with errors_named(self.path):
            rows = self._reader.execute(USAGE_SINCE, {
                "since": since, "now": now, "recent": now - MINUTE - 1.0,
                "minute": MINUTE}).fetchall()
        return [(agent, when, int(tokens), cost) for agent, when, tokens, cost in rows]

    def start_pruning(self) -> None:
        """A pass now, then every PRUNE_EVERY seconds."""
        self._writer.run(self._prune, self._pruned)
        self._prune_timer = self._loop.call_later(PRUNE_EVERY, self.start_pruning)

    def _pruned(self, error: str | None) -> None:
        self._held.clear()  # counted again, without the keys pruned
        if error is not None and self._outage.failed(self._loop, self._cannot(error)):
            self._failed(self._cannot(error))  # the journal cannot be written either

    # -- the TaskJournal protocol ---------------------------------------------------------
    def write(self, task: Task) -> None:
        self.writes += 1
        young = self._young.get(task.id)
        if young is None and not task.journaled and task.finished is None:
            # a new task that nobody waits to see committed: its first row waits
            self._young[task.id] = (self._loop.time(), next(self._arrivals), task)
            if self._release_timer is None:
                self._release_timer = self._loop.call_later(YOUNG_FOR, self._release)
            return
        if young is not None:
            if task.finished is None:
                return  # still young: its row is made when it is released
            del self._young[task.id]
            self._group.put(task.id, _row(task, young[1], task.input))  # its one row
            return
        raw_input = None if task.journaled else task.input
        arrival = None if task.journaled else next(self._arrivals)
        self._group.put(task.id, _row(task, arrival, raw_input))

    def _release(self) -> None:
        self._release_timer = None
        young = self._young
        if not young:
            return
        due = self._loop.time() - YOUNG_FOR + YOUNG_SLACK
        while young:
            task_id, (since, arrival, task) = next(iter(young.items()))
            if since > due:
                self._release_timer = self._loop.call_later(
                    since - due + YOUNG_SLACK, self._release)
                return
            del young[task_id]
            self._group.put(task_id, _row(task, arrival, task.input))

    def behind(self) -> bool:
        return self._group.waiting_bytes > BEHIND_BYTES

    def committed(self) -> Awaitable[None]:
        """The group's own wait (no frame of this one at each of its resumes: a
        submission waits once, twice when it waits for its outcome), the young rows put first."""
        if self._young:  # someone waits: nothing is young any more
            young, self._young = self._young, {}
            for task_id, (_, arrival, task) in young.items():
                self._group.put(task_id, _row(task, arrival, task.input))
        return self._group.committed()

    async def load(self, task_id: str) -> TaskInfo | None:
        with contextlib.suppress(StoreError):  # what is written still answers
            await self.committed()
        return await asyncio.to_thread(self._load, task_id)

    async def load_input(self, task_id: str) -> msgspec.Raw | None:
        with contextlib.suppress(StoreError):
            await self.committed()
        return await asyncio.to_thread(self._load_input, task_id)

    async def query(self, *, agent: str | None, status: str | None, since: float | None,
                    limit: int, before: str | None = None,
                    sees: Sees | None = None, filters: TaskFilters = NO_FILTERS
                    ) -> list[TaskSummary]:
        with contextlib.suppress(StoreError):
            await self.committed()
        page = await asyncio.to_thread(self._query, agent, status, since, limit, before,
                                       sees, filters)
        if page is None:
            assert before is not None
            raise unknown_cursor(before)
        return page

    # -- loop side of the writer ----------------------------------------------------------
    def _cannot(self, error: str) -> str:
        return f"task journal {self.path} cannot be written ({error})"

    def _settled(self, rows: list[Row], error: str | None) -> None:
        if error is None:
            self.batches += 1
            self.rows += len(rows)
            if self._keys:
                for row in rows:
                    if len(row) == KEY_ROW:  # a key's, in the table now
                        self._keys.pop((row[0], row[1]), None)
            since = self._outage.recovered()
            if since is not None:
                self.on_notice(f"task journal {self.path} is written again: the changes of "
                               f"{plural(len(rows), 'task')} kept in memory since "
                               f"{iso_time(since)} are recorded")
        elif self._group.first_failure:
            self._failed(error)

    @property
    def refusing(self) -> str | None:
        """While its writes fail, why: new tasks are refused before they reach an agent."""
        return self._outage.error if self._outage.failing else None

    def _failed(self, error: str) -> None:
        waiting = plural(len(self._group.pending), "accepted task")
        self.on_error(f"{error}: new tasks are refused until it can be written; the "
                      f"changes of {waiting} wait in memory and are written when it can "
                      f"(tried every {RETRY_EVERY:g} s)")

    # -- on the writer thread (store.WriterThread) ------------------------------------
    def _write(self, db: sqlite3.Connection, rows: list[Row]) -> None:
        """(In the writer's transaction: a batch of its own, or shared with the writes
        queued beside it.)"""
        if all(len(row) == TASK_ROW for row in rows):
            db.executemany(UPSERT, rows)
        else:  # idempotency keys (keep_key) or labels (`labels`) among them
            db.executemany(UPSERT, [row for row in rows if len(row) == TASK_ROW])
            db.executemany(KEY_UPSERT, [row for row in rows if len(row) == KEY_ROW])
            db.executemany(LABEL_INSERT, [row for row in rows if len(row) == LABEL_ROW])

    def _prune(self, db: sqlite3.Connection) -> None:
        # a pruned task's steps, output, asks, labels and push configs go with it, and the
        # results no other step names (steps.py); at start-up, the steps and output of
        # tasks never committed too
        db.execute("BEGIN")
        results = delete_orphans(db) if not self._pruned_once else set()
        if not self._pruned_once:
            db.execute("DELETE FROM task_output WHERE task_id NOT IN (SELECT id FROM tasks)")
        self._pruned_once = True
        results |= delete_ended(db, time.time() - KEEP_ENDED)
        db.execute("DELETE FROM idempotency_keys WHERE created < ?",
                   (time.time() - KEEP_SECONDS,))
        delete_ended_calls(db, SPAWN_TREE)
        old = time.time() - self.max_age if self.max_age > 0 else None
        delete_replica_asks(db, old, self.max_tasks)
        bounds: list[tuple[str, tuple[float | int, ...]]] = [(
            "id IN (SELECT id FROM tasks WHERE finished IS NOT NULL ORDER BY finished DESC "
            "LIMIT -1 OFFSET ?)", (self.max_tasks,))]
        if old is not None:
            bounds.insert(0, ("finished IS NOT NULL AND finished < ?", (old,)))
        for where, args in bounds:
            results |= delete_steps(db, where, args)
            for table in ("task_output", "asks"):
                db.execute(f"DELETE FROM {table} WHERE task_id IN (SELECT id FROM tasks "
                           f"WHERE {where})", args)
            db.execute(f"DELETE FROM labels WHERE key IN (SELECT id FROM tasks WHERE {where} "
                       f"UNION ALL SELECT 'started:' || id FROM tasks WHERE {where})",
                       (*args, *args))
            db.execute("DELETE FROM push_configs WHERE task_id IN (SELECT id FROM tasks "
                       f"WHERE {where})", args)
            db.execute(f"DELETE FROM tasks WHERE {where}", args)
        refs = drop_unused(db, results)
        db.execute("COMMIT")
        remove_refs(results_dir(self.path), refs)

    # -- reads (in a thread) --------------------------------------------------------------
    def _load(self, task_id: str) -> TaskInfo | None:
        with self._read_lock:
            row = self._reader.execute(
                "SELECT id, agent, status, priority, created, started, finished, tool_calls, "
                "progress, output, error, attempts, usage, not_before, tenant, options "
                "FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            return None
        (tid, agent, status, prio, created, started, finished, calls, progress, output,
         error, attempts, usage, not_before, tenant, options) = row
        return TaskInfo(tid, agent, status, prio, created, started, finished, calls,
                        None if progress is None else msgspec.json.decode(progress),
                        raw_output_of(msgspec.Raw(output)) if output is not None else None,
                        None if error is None else _error.decode(error),
                        _attempts.decode(attempts),
                        usage=None if usage is None else _usage.decode(usage),
                        queue_wait=queue_wait(created, started),
                        not_before=not_before if status == "queued" else None,
                        tenant=tenant, options=decoded(options))

    def _load_input(self, task_id: str) -> msgspec.Raw | None:
        with self._read_lock:
            row = self._reader.execute("SELECT input FROM tasks WHERE id = ?",
                                       (task_id,)).fetchone()
        return None if row is None or row[0] is None else msgspec.Raw(bytes(row[0]))

    def _query(self, agent: str | None, status: str | None, since: float | None,
               limit: int, before: str | None, sees: Sees | None, filters: TaskFilters
               ) -> list[TaskSummary] | None:
        """The page, or None when `before` names no task (that `sees` admits)."""
        where, args = given(("agent = ?", agent), ("status = ?", status),
                            ("created >= ?", since), *filter_sql(filters, "options"))
        seen = ""
        if sees is not None:
            # the caller's own test of a record (its agent, its tenant), in the query
            # (SQL's GLOB reads a glob otherwise): a page is whole, and its cursor a task
            # the caller may see
            where.append("sees(agent, tenant)")
            seen = " AND sees(agent, tenant)"
        with self._read_lock:
            self._reader.create_function("sees", 2, sees, deterministic=True)
            try:
                if before is not None:
                    # the cursor is a task, and its arrival the page's bound: a task
                    # pruned or accepted meanwhile moves no other from page to page
                    found = self._reader.execute(
                        "SELECT arrival FROM tasks WHERE id = ?" + seen,
                        (before,)).fetchone()
                    if found is None:
                        return None
                    where.append("arrival < ?")
                    args.append(found[0])
                sql = ("SELECT id, agent, status, priority, created, started, finished, "
                       "attempts, tenant, options FROM tasks"
                       + (" WHERE " + " AND ".join(where) if where else "")
                       + " ORDER BY arrival DESC LIMIT ?")
                rows = self._reader.execute(sql, (*args, limit)).fetchall()
            finally:
                self._reader.create_function("sees", 2, None)
        return [TaskSummary(tid, a, st, prio, created, started, finished,
                            len(_attempts.decode(attempts)), tenant=tenant,
                            options=decoded(options))
                for tid, a, st, prio, created, started, finished, attempts, tenant, options
                in reversed(rows)]

    # -- shutdown -------------------------------------------------------------------------
    async def close(self) -> None:
        for timer in (self._prune_timer, self._release_timer):
            if timer is not None:
                timer.cancel()
        with contextlib.suppress(StoreError):
            await self.committed()  # while failing: one more attempt
        self._group.cancel_retry()
        if self._group.pending:
            ids = [row[0] for row in self._group.pending.values() if len(row) == TASK_ROW]
            self.on_error(
                f"task journal {self.path}: the latest changes of {plural(len(ids), 'task')} "
                f"could not be written before shutdown ({listing(ids)}): the next daemon takes "
                "them as last recorded (queued ones run, running ones are retried or end lost)")
        if self._own_writer:
            await self._writer.close()
        self._reader.close()
        if self._rows is not None:
            self._rows.close()


def _row(task: Task, arrival: int | None, raw_input: msgspec.Raw | None) -> Row:
    """A task's row as it is now: `arrival` and `raw_input` at its first write only
    (None: the row keeps what it has)."""
    return (
        task.id, arrival, task.agent, task.priority, task.timeout, task.retries_left,
        task.created, task.started, task.finished, task.status, task.tool_calls,
        raw_input,
        task.raw_result,  # the worker's result as sent: {"output": ...}, kept as bytes
        None if task.error is None else _encode(task.error),
        _encode(task.attempts),
        None if task.progress is None else _encode(task.progress),
        None if task.usage is None else _encode(task.usage),
        task.not_before,
        encoded(task.options),
        task.tenant)


def _record(row: Row) -> TaskRecord:
    (tid, agent, raw, prio, timeout, retries, created, started, status, calls, attempts,
     usage, not_before, options, tenant, state) = row
    return TaskRecord(task_id=tid, agent=agent,
                      input=msgspec.Raw(raw if raw is not None else b"null"),
                      priority=prio, timeout=timeout, retries_left=retries, created=created,
                      started=started, status=status, tool_calls=calls,
                      attempts=_attempts.decode(attempts),
                      usage=None if usage is None else _usage.decode(usage),
                      not_before=not_before, options=decoded(options), tenant=tenant,
                      # its checkpoint (steps.py; one past REF_ABOVE is not given)
                      checkpoint=None if state is None else msgspec.Raw(bytes(state)))


def _size(row: Row) -> int:
    """The bytes of a row's input and output, held in memory until it is written."""
    if len(row) != TASK_ROW:
        return 0  # a key's, a label's
    return (len(row[11]) if row[11] is not None else 0) + (
        len(row[12]) if row[12] is not None else 0)


def _merged(older: Row, newer: Row) -> Row:
    """A task's newer snapshot, keeping the input and the output the engine has dropped
    since."""
    if len(newer) != TASK_ROW:
        return newer  # a key's or a label's, written again after a failed batch
    if newer[1] is None:  # the arrival, given at the first write only
        newer = (newer[0], older[1], *newer[2:])
    keep_input = newer[11] is None
    if not keep_input and newer[12] is not None:
        return newer
    return (*newer[:11], older[11] if keep_input else newer[11],
            newer[12] if newer[12] is not None else older[12], *newer[13:])

