"""The daemon's durable state, read and written through one object (`StateStore`):
agents added at runtime, agent state checkpoints, the audit log, and the records of every
process the daemon runs. The schema is `storeschema.py`; the commit path `storewriter.py`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..supervisor.config import DEFAULT_TENANT
from ..supervisor.containment import ProcessRecord
from ..supervisor.stream import Stream
from ..text import iso_time, plural
from .sqlwrites import Write, each, statement
from .storeschema import StoreError, errors_named, open_database
from .storewriter import CaughtUp, StoreWriter, WriterThread, counted, what_to_do

log = logging.getLogger("corral.store")


def row_limit(limit: int) -> int:
    """A count of rows asked for, as SQLite can take it (a larger one is all of them)."""
    return min(max(0, limit), 1 << 62)


# an agent's own calls' rows (audit.py's AuditLink: a tool call by a gateway client, by
# a worker; a model call) and the tasks submitted (submitted.py: an anonymous A2A
# caller's among them), kept as a share of their party's apart
TOOL_CALLS = ("gateway.call", "worker.call", "model.call", "task.submitted")
_CALL_ROWS = "call rows"  # the key of the writer's one write of answered calls' rows
_INSERT = "INSERT INTO audit (time, uid, pid, method, params, outcome, who, tenant) " \
          "VALUES (?,?,?,?,?,?,?,?)"


class StateStore:
    """Reads run on the loop's connection (`db`); writes on the writer thread, never on
    the loop once it is open:
    - what a control command changes that must outlive the daemon is committed by the
      command before it acts (`commit`): a database that cannot be written refuses the
      command, nothing changed;
    - what is many or must not hold up its cause goes through `writer` (StoreWriter),
      batched, and kept and tried again while the database cannot be written."""

    def __init__(self, path: Path, *, sync: str = "normal",
                 stream: Stream | None = None, audit_max_rows: int = 0) -> None:
        self.path = path
        # each party's audit rows (a tenant's callers, the operator's: tenant None) past
        # this are pruned, the oldest first, in the write of every tenth of it; 0: none
        self.audit_max_rows = audit_max_rows
        # rows of each share since its prune: (a party, whether its agents' tool calls)
        self._audited: dict[tuple[str | None, bool], int] = {}
        # answered calls' rows (`call_row`) waiting for the writer thread, and those it
        # took and has not yet committed (its own: retried after a failed write)
        self._calls: deque[tuple[float, str, Any, str, str, str | None]] = deque()
        self._taken: list[tuple[float, str, Any, str, str, str | None]] = []
        self._calls_due = False  # a write that takes them is submitted and not yet begun
        self._calls_seen: Counter[str | None] = Counter()  # (the thread's `_audited`)
        self.stream = stream if stream is not None else Stream()  # the daemon's: the engine's
        self.stream.subscribe(self._audit_gap, CaughtUp)
        self.sync = sync
        self.db = open_database(path, sync=sync)
        self.thread: WriterThread | None = None
        self.writer: StoreWriter | None = None

    def open_writer(self, on_error: Callable[[str], None] | None = None,
                    on_notice: Callable[[str], None] | None = None) -> StoreWriter:
        self.thread = WriterThread(self.path, sync=self.sync)
        self.writer = StoreWriter(self.thread, on_error=on_error, on_notice=on_notice,
                                  stream=self.stream)
        return self.writer

    async def commit(self, writes: Iterable[Write]) -> None:
        assert self.thread is not None, "the writer opens before any command runs"
        writes = list(writes)  # made now: behind what the writer holds, never ahead
        if self.writer is not None:
            await self.writer.written()
        await self.thread.commit(writes)

    async def commit_or_refuse(self, writes: Iterable[Write], unchanged: str) -> None:
        """A command's writes committed, or the command refused (REFUSED), `unchanged`
        saying what it did not do, with what to do about the database."""
        try:
            await self.commit(writes)
        except StoreError as exc:
            raise RpcError(jsonrpc.REFUSED, f"{exc}: {unchanged}; {what_to_do()}") from None

    def runtime_agents(self) -> dict[str, dict[str, Any]]:
        with errors_named(self.path):
            rows = self.db.execute("SELECT name, spec FROM runtime_agents ORDER BY added_at")
            return {name: msgspec.json.decode(spec) for name, spec in rows}

    @staticmethod
    def saving_runtime_agent(name: str, table: dict[str, Any]) -> Write:
        return statement("INSERT OR REPLACE INTO runtime_agents (name, spec, added_at) "
                         "VALUES (?, ?, ?)",
                         (name, msgspec.json.encode(table).decode(), time.time()))

    @staticmethod
    def forgetting_runtime_agent(name: str) -> Write:
        return statement("DELETE FROM runtime_agents WHERE name = ?", (name,))

    def save_state(self, name: str, replica: int, when: float, state: Any,
                   tenant: str = DEFAULT_TENANT) -> None:
        row = (name, replica, when, msgspec.json.encode(state).decode(), tenant)
        write = statement("INSERT OR REPLACE INTO agent_state (name, replica, time, state, "
                          "tenant) VALUES (?,?,?,?,?)", row)
        if self.writer is not None:
            self.writer.submit(write, "checkpoint", key=("agent_state", name, replica),
                               size=len(row[3]))
        else:
            write(self.db)

    @staticmethod
    def forgetting_states(agents: Iterable[tuple[str, str]]) -> Write:
        """The write that deletes agents' state checkpoints (their agents, each a name and
        its tenant, removed)."""
        return each("DELETE FROM agent_state WHERE name = ? AND tenant = ?", agents)

    def states(self, holders: Mapping[str, str] | None = None
               ) -> dict[tuple[str, int], tuple[float, Any]]:
        """The checkpoints kept, by (agent, replica). `holders`: the tenant each agent's
        name is held by now; a checkpoint another tenant's agent saved under the name is
        not read."""
        with errors_named(self.path):
            rows = self.db.execute(
                "SELECT name, replica, time, state, tenant FROM agent_state")
            return {(n, r): (t, msgspec.json.decode(s)) for n, r, t, s, tenant in rows
                    if holders is None or holders.get(n) == tenant}

    def audit(self, uid: int, pid: int, method: str, params: Any, outcome: str,
              who: str | None = None, tenant: str | None = None) -> None:
        """An audit row, through the writer: it never holds up, nor fails, what it records.
        `who`: a token's caller ("token NAME"); a socket peer is its uid and pid."""
        said = msgspec.json.encode(params).decode()
        full = (time.time(), uid, pid, method, said, outcome, who, tenant)
        # an agent's own tool calls are a share of their tenant's apart: a loop of benign
        # calls pushed out the boundary's refusals of the agent and its tenant's callers'
        # rows (issue 88's attacker's pass)
        calls = method in TOOL_CALLS
        prune = self._audit_prune_due((tenant, calls))

        def write(db: sqlite3.Connection) -> None:
            db.execute(_INSERT, full)
            if prune:
                self._prune(db, tenant, calls)

        if self.writer is not None:  # (lazy: one transaction for many calls' rows)
            self.writer.submit(write, "audit row", size=len(said), lazy=True)
            return
        try:  # no writer (before it opens, after it closes): here, and never raised
            with self.db:
                write(self.db)
        except sqlite3.Error as exc:
            log.error("state database %s: an audit row could not be written (%s): %s",
                      self.path, exc, full)

    def call_row(self, method: str, params: Any, outcome: str, who: str,
                 tenant: str | None) -> None:
        """An agent's answered call's audit row (audit.py's AuditLink: a model call's), as
        `audit` writes one but cheaper on the loop, where the hot path pays for it: its
        params encoded, and every row waiting inserted at once, by the writer thread."""
        writer = self.writer
        if writer is None:
            return self.audit(-1, -1, method, params, outcome, who, tenant)
        if writer.outage.failing and len(self._calls) + len(self._taken) >= writer.max_held:
            writer.drop("audit row")  # (held as the writer's own writes are: bounded)
            return None
        self._calls.append((time.time(), method, params, outcome, who, tenant))
        if not self._calls_due:  # (one write waiting takes every row appended before it)
            # keyed: one write of them waits or is written at a time (two in one batch,
            # after a failed one, would each insert every row taken); one the held writes
            # left no room for is submitted again by the next call
            self._calls_due = writer.submit(self._write_calls, "audit row",
                                            self._taken.clear, key=_CALL_ROWS, lazy=True)
        return None

    def _write_calls(self, db: sqlite3.Connection) -> None:
        """(The writer thread's.) A row appended after `_calls_due` is cleared here is
        taken by this write or by the one its call then submits: none is left waiting."""
        self._calls_due = False
        calls, taken = self._calls, self._taken
        first = len(taken)  # (those before were taken by a write that failed: counted)
        while calls:
            taken.append(calls.popleft())
        encode = msgspec.json.encode
        db.executemany(_INSERT, [(t, -1, -1, method, encode(params).decode(), outcome, who,
                                  tenant) for t, method, params, outcome, who, tenant
                                 in taken])
        if not self.audit_max_rows:
            return
        # each tenth of the bound, as `_audit_prune_due`, counted here, off the loop
        seen, tenth = self._calls_seen, max(1, self.audit_max_rows // 10)
        seen.update(row[5] for row in taken[first:])
        for tenant in [t for t, n in seen.items() if n >= tenth]:
            self._prune(db, tenant, True)
            del seen[tenant]

    def _prune(self, db: sqlite3.Connection, tenant: str | None, calls: bool) -> None:
        """The party's share (its agents' calls, or the rest) down to audit_max_rows."""
        share = f"method {'' if calls else 'NOT '}IN ({','.join('?' * len(TOOL_CALLS))})"
        db.execute(f"DELETE FROM audit WHERE tenant IS ? AND {share} AND id <= "
                   f"(SELECT id FROM audit WHERE tenant IS ? AND {share} ORDER BY id "
                   "DESC LIMIT 1 OFFSET ?)",
                   (tenant, *TOOL_CALLS, tenant, *TOOL_CALLS, self.audit_max_rows))

    def _audit_prune_due(self, share: tuple[str | None, bool]) -> bool:
        """Once in every tenth of the bound, so that a share (a party's rows, or its
        agents' tool calls) holds at most 1.1 times it."""
        if not self.audit_max_rows:
            return False
        seen = self._audited.get(share, 0) + 1
        due = seen >= max(1, self.audit_max_rows // 10)
        self._audited[share] = 0 if due else seen
        return due

    def _audit_gap(self, e: CaughtUp) -> None:
        rows = e.dropped.get("audit row", 0)
        if rows:
            self.audit(os.geteuid(), os.getpid(), "audit.dropped",
                       {"rows": rows, "since": iso_time(e.since)},
                       f"error: {plural(rows, 'audit row')} could not be recorded: the state "
                       f"database could not be written ({e.reason})")

    async def audit_log_now(self, limit: int = 100) -> list[tuple[Any, ...]]:
        """The audit log with every row queued so far in it (a row's write lingers),
        unless the database cannot be written now."""
        if self.writer is not None and not self.writer.outage.failing:
            await self.writer.committed()
        return self.audit_log(limit)

    def audit_log(self, limit: int = 100) -> list[tuple[Any, ...]]:
        rows = self.db.execute(
            "SELECT time, uid, pid, method, params, outcome, who, tenant FROM audit "
            "ORDER BY id DESC LIMIT ?", (limit,))
        return list(reversed(rows.fetchall()))

    # -- containment: incarnations of the daemon and the processes they run --------------
    def begin_incarnation(self, owner: str, pid: int, start_time: int) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO incarnations (owner, pid, start_time, started_at) "
            "VALUES (?, ?, ?, ?)", (owner, pid, start_time, time.time()))

    def incarnations(self) -> list[tuple[str, int, int]]:
        """(owner, daemon pid, daemon start time) of every incarnation not ended cleanly."""
        with errors_named(self.path):
            return list(self.db.execute("SELECT owner, pid, start_time FROM incarnations"))

    def process_records(self, owners: Iterable[str]) -> list[ProcessRecord]:
        owners = list(owners)
        with errors_named(self.path):
            rows = self.db.execute(
                f"SELECT record FROM processes WHERE owner IN ({','.join('?' * len(owners))})",
                owners)
            return [msgspec.json.decode(r, type=ProcessRecord) for (r,) in rows]

    @staticmethod
    def write_processes(started: Iterable[ProcessRecord], ended: Iterable[str]
                        ) -> Write:
        rows = [(r.token, r.owner, msgspec.json.encode(r).decode()) for r in started]
        gone = [(t,) for t in ended]

        def write(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR REPLACE INTO processes (token, owner, record) VALUES (?, ?, ?)",
                rows)
            db.executemany("DELETE FROM processes WHERE token = ?", gone)

        return write

    @staticmethod
    def ending_incarnations(owners: Iterable[str]) -> Write:
        owners = list(owners)

        def write(db: sqlite3.Connection) -> None:
            for owner in owners:
                db.execute("DELETE FROM processes WHERE owner = ?", (owner,))
                db.execute("DELETE FROM incarnations WHERE owner = ?", (owner,))

        return write

    def end_incarnations(self, owners: Iterable[str]) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.ending_incarnations(owners)(self.db)

    async def close_writer(self) -> None:
        """Commit what is queued, then stop the writer thread (after the journals' close:
        the thread is shared)."""
        if self.writer is not None:
            writer, self.writer = self.writer, None
            await writer.committed()  # while failing: one more attempt
            writer.cancel_retry()
            lost = Counter(writer.pending()) + Counter(writer.dropped)
            if lost:
                writer.on_error(f"state database {self.path}: not written before shutdown, "
                                f"lost: {counted(lost)}")
        if self.thread is not None:
            thread, self.thread = self.thread, None
            await thread.close()

    def close(self) -> None:
        self.db.close()
