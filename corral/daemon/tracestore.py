"""The traces' local store: recent spans in SQLite, bounded by age and by count, for
`corral trace` and the dashboard without a collector (docs/tracing.md). Written by the
exporter process (traceexport.py) alone; read by the daemon, each read on a connection of
its own (WAL: a read never waits for the writer)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from ..methods import SpanView

SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_id TEXT, name TEXT NOT NULL,
    kind INTEGER NOT NULL, start REAL NOT NULL, end REAL NOT NULL, error TEXT,
    attributes TEXT NOT NULL, events TEXT NOT NULL, task_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS spans_task ON spans(task_id);
CREATE INDEX IF NOT EXISTS spans_start ON spans(start);
"""

KINDS = {1: "internal", 2: "server", 3: "client"}


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

    def write(self, spans: Sequence[Sequence[Any]]) -> None:
        """Spans as the engine makes them (supervisor/tracing.py's Span), or as they come
        decoded from the pipe (lists)."""
        encode = msgspec.json.encode
        rows = [(f"{s[0]:032x}", f"{s[1]:016x}", f"{s[2]:016x}" if s[2] else None, s[3],
                 s[4], s[5], s[6], s[7], encode(s[8]).decode(), encode(s[9]).decode(),
                 s[10]) for s in spans]
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO spans VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)

    def prune(self, now: float) -> None:
        with self.db:
            self.db.execute("BEGIN")
            if self.keep_days:
                self.db.execute("DELETE FROM spans WHERE start < ?",
                                (now - self.keep_days * 86400,))
            if self.keep_spans:
                self.db.execute("DELETE FROM spans WHERE rowid <= (SELECT max(rowid) FROM "
                                "spans) - ?", (self.keep_spans,))

    def close(self) -> None:
        self.db.close()


def create(path: Path) -> None:
    """The store's tables, before its writer starts (a read finds them at once)."""
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
        rows = db.execute("SELECT trace_id, span_id, parent_id, name, kind, start, end, "
                          "error, attributes, events FROM spans WHERE task_id = ? "
                          "ORDER BY start, rowid", (task_id,)).fetchall()
    finally:
        db.close()
    return [SpanView(trace_id=r[0], span_id=r[1], parent_id=r[2], name=r[3],
                     kind=KINDS.get(r[4], "internal"), start=r[5], end=r[6], error=r[7],
                     attributes=json.loads(r[8]), events=json.loads(r[9]))
            for r in rows]
