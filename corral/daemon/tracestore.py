"""The traces' local store: recent spans in SQLite, bounded by age and by count, for
`corral trace` and the dashboard without a collector (docs/tracing.md). Written by the
exporter process (traceexport.py) alone; read by the daemon, each read on a connection of
its own (WAL: a read never waits for the writer)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ..statefiles import check_database, make_dir, open_file
from ..supervisor.tracerecords import bounded, expand

if TYPE_CHECKING:
    from ..results import SpanView

# a row a batch (the pipe's frame, made its spans when read), and a row a key (key_of)
# and batch: tasks made together are a few index rows, not a row a task. `spans`: the
# spans stored up to this batch's, what `keep_spans` bounds.
SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY, written REAL NOT NULL, spans INTEGER NOT NULL,
    frame BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS batch_keys (
    key TEXT NOT NULL, batch INTEGER NOT NULL, PRIMARY KEY (key, batch)
) WITHOUT ROWID;
"""


def key_of(task_id: str) -> str:
    """The index's key of a task id: a UUIDv7's millisecond, any other id itself."""
    if len(task_id) == 36 and task_id[8] == "-" and task_id[13] == "-":
        return task_id[:13]
    return task_id


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
        self.spans = self.db.execute("SELECT coalesce(max(spans), 0) FROM batches"
                                     ).fetchone()[0]

    def write(self, frame: bytes, records: Sequence[Sequence[Any]], longest: int,
              spans: int, now: float) -> None:
        """A batch as the pipe brought it (`frame`: the msgpack array of `records`, the
        longest of them `longest` bytes), making `spans` spans."""
        if longest > CUT_PAST:  # an agent's long error: kept within TEXT_MAX
            frame = msgspec.msgpack.encode([bounded(r) if len(
                msgspec.msgpack.encode(r)) > CUT_PAST else r for r in records])
        n = self.spans + spans
        with self.db:
            self.db.execute("BEGIN")
            batch = self.db.execute(
                "INSERT INTO batches (written, spans, frame) VALUES (?,?,?)",
                (now, n, frame)).lastrowid
            self.db.executemany("INSERT OR IGNORE INTO batch_keys VALUES (?,?)",
                                [(k, batch) for k in {key_of(r[6]) for r in records}])
        self.spans = n

    def prune(self, now: float) -> None:
        with self.db:
            self.db.execute("BEGIN")
            if self.keep_days:
                self.db.execute("DELETE FROM batches WHERE written < ?",
                                (now - self.keep_days * 86400,))
            if self.keep_spans:
                self.db.execute("DELETE FROM batches WHERE spans <= ?",
                                (self.spans - self.keep_spans,))
            # the index rows of the batches gone (a scan: once a prune, not a batch)
            self.db.execute("DELETE FROM batch_keys WHERE batch < (SELECT coalesce("
                            "min(id), (SELECT max(batch) + 1 FROM batch_keys)) "
                            "FROM batches)")

    def close(self) -> None:
        self.db.close()


def create(path: Path) -> None:
    """The store's tables, before its writer starts (a read finds them at once)."""
    make_dir(path.parent)
    # the daemon's alone, as the state database is: it holds every tenant's task errors
    # (a store made by an older corral was 0644); none of its files a link (chmod and
    # SQLite follow one)
    check_database(path)
    os.close(open_file(path, os.O_RDWR | os.O_CREAT))
    for made in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(made, 0o600)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)


def of_task(path: Path, task_id: str) -> list[SpanView]:
    """A task's spans, oldest first (a blocking read: run it in a thread)."""
    # (here: the views are the daemon's reading, none of the exporter's process's imports)
    from ..results import SpanView

    # a key is a millisecond's ids, any tenant's: its batches are read one at a time, and
    # decoded only when they hold the id's bytes
    needle = task_id.encode()
    records: list[Any] = []
    with contextlib.closing(sqlite3.connect(path)) as db:
        for (frame,) in db.execute("SELECT frame FROM batches WHERE id IN (SELECT batch "
                                   "FROM batch_keys WHERE key = ?) ORDER BY id",
                                   (key_of(task_id),)):
            if needle in frame:
                records.extend(r for r in msgspec.msgpack.decode(frame) if r[6] == task_id)
    spans = [s for record in records for s in expand(record)]
    spans.sort(key=lambda s: s[5])  # by start; a record's own order kept
    return [SpanView(trace_id=f"{s[0]:032x}", span_id=f"{s[1]:016x}",
                     parent_id=f"{s[2]:016x}" if s[2] else None, name=s[3],
                     kind=KINDS.get(s[4], "internal"), start=s[5], end=s[6], error=s[7],
                     attributes=_json(s[8]), events=_json(s[9]))
            for s in spans]


def _json(value: Any) -> Any:
    """As the view had it from JSON text (tuples as lists)."""
    return msgspec.json.decode(msgspec.json.encode(value))
