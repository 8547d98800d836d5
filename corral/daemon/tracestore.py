"""The traces' local store: recent spans in SQLite, bounded by age and by count, for
`corral trace` and the dashboard without a collector (docs/tracing.md). Written by the
exporter process (traceexport.py) alone; read by the daemon, each read on a connection of
its own (WAL: a read never waits for the writer)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from ..methods import SpanView
from ..supervisor.tracing import TASK, bounded, expand, spans_of

# a row a record (supervisor/tracing.py: a task and its attempts, or a tool call), as the
# pipe brought it (msgpack), made its spans when read (`of_task`): a span's attributes
# written as JSON on the way in cost the exporter more than the record's insert
# (decision 289). `spans`: the spans stored up to this row's, what `keep_spans` bounds.
SCHEMA = """
DROP TABLE IF EXISTS spans;
CREATE TABLE IF NOT EXISTS records (
    task_id TEXT NOT NULL, start REAL NOT NULL, spans INTEGER NOT NULL,
    record BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS records_task ON records(task_id);
CREATE INDEX IF NOT EXISTS records_start ON records(start);
"""

KINDS = {1: "internal", 2: "server", 3: "client"}
CUT_PAST = 4096  # bytes of a record past which its texts are cut before it is stored


class TraceStore:
    """The writer's side (one process: the exporter's)."""

    def __init__(self, path: Path, keep_days: float, keep_spans: int) -> None:
        self.path = path
        self.keep_days = keep_days
        self.keep_spans = keep_spans
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")  # recent traces: a power loss may take some
        self.db.executescript(SCHEMA)
        self.spans = self.db.execute("SELECT coalesce(max(spans), 0) FROM records"
                                     ).fetchone()[0]

    def write(self, records: Sequence[Sequence[Any]], raws: Sequence[bytes]) -> None:
        """Records as they come decoded from the pipe, and each one's msgpack bytes."""
        rows = []
        n = self.spans
        for record, raw in zip(records, raws, strict=True):
            n += spans_of(record)
            if len(raw) > CUT_PAST:  # an agent's long error: kept within TEXT_MAX
                raw = msgspec.msgpack.encode(bounded(record))
            rows.append((record[6], record[11] if record[0] == TASK else record[10], n,
                         raw))
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO records VALUES (?,?,?,?)", rows)
        self.spans = n

    def prune(self, now: float) -> None:
        with self.db:
            self.db.execute("BEGIN")
            if self.keep_days:
                self.db.execute("DELETE FROM records WHERE start < ?",
                                (now - self.keep_days * 86400,))
            if self.keep_spans:
                self.db.execute("DELETE FROM records WHERE spans <= ?",
                                (self.spans - self.keep_spans,))

    def close(self) -> None:
        self.db.close()


def create(path: Path) -> None:
    """The store's tables, before its writer starts (a read finds them at once); its
    directory made as the state database's is (tracing starts before that is opened)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
    finally:
        db.close()


def of_task(path: Path, task_id: str) -> list[SpanView]:
    """A task's spans, oldest first (a blocking read: run it in a thread)."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT record FROM records WHERE task_id = ? ORDER BY rowid",
                          (task_id,)).fetchall()
    finally:
        db.close()
    spans = [s for (raw,) in rows for s in expand(msgspec.msgpack.decode(raw))]
    spans.sort(key=lambda s: s[5])  # by start; a record's own order kept
    return [SpanView(trace_id=f"{s[0]:032x}", span_id=f"{s[1]:016x}",
                     parent_id=f"{s[2]:016x}" if s[2] else None, name=s[3],
                     kind=KINDS.get(s[4], "internal"), start=s[5], end=s[6], error=s[7],
                     attributes=_json(s[8]), events=_json(s[9]))
            for s in spans]


def _json(value: Any) -> Any:
    """As the view had it from JSON text (tuples as lists)."""
    return msgspec.json.decode(msgspec.json.encode(value))
