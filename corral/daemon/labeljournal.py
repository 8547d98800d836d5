"""Labels (supervisor/labels.py) in the state database: a row per label of a task or a
session, committed before the call that reads the untrusted text is made."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from ..supervisor.labels import SESSIONS
from .sqlwrites import each
from .store import StateStore
from .storeschema import errors_named

INSERT = "INSERT OR IGNORE INTO labels (key, label, seq) VALUES (?,?,?)"
LabelRow = tuple[str, str, int]  # (key, label, seq): INSERT's
# the records of the tasks this process wrote that are read back from memory (the oldest
# dropped): an anonymous caller's look at the task it just sent reads who started it
RECENT = 4096


class Batches(Protocol):
    """The task journal (taskjournal.py): the label rows of a task being accepted go in
    its next batch, with the task's first row or before it."""

    def labels(self, rows: Sequence[LabelRow]) -> None: ...


class Ends(Protocol):
    """The sessions' journal (sessionjournal.py): a session's end deletes its labels in
    its batch, which a new life of its name must not read, nor write before."""

    def ending(self, key: str) -> bool: ...

    async def committed(self) -> None: ...


class LabelsDB:
    """The engine's LabelStore on the daemon's state database. A task's records are read
    back from memory while they are among the RECENT this process wrote: a task's id
    names no other task, and only the process that runs a task adds to its labels; a
    session's are read from the database (its records go with it, and its name comes
    again)."""

    def __init__(self, store: StateStore, journal: Batches | None = None,
                 ends: Ends | None = None) -> None:
        self.store = store
        self.journal = journal  # None: no task journal (task_journal = false)
        self.ends = ends
        # oldest first: a dict's deleted slots at its front were walked by each eviction's
        # next(iter()) until its next resize, an OrderedDict pops its first at once
        self._recent: OrderedDict[str, tuple[str, ...]] = OrderedDict()

    async def _ended(self, key: str) -> None:
        """A session's record read or written after its last life's end commits."""
        if self.ends is not None and key.startswith(SESSIONS) and self.ends.ending(key):
            await self.ends.committed()

    async def mark(self, key: str, labels: Sequence[str]) -> None:
        await self._ended(key)
        await self.store.commit([each(INSERT, _rows(key, labels))])
        kept = self._recent.get(key)
        if kept is not None:  # (one not among them may have more in the database)
            self._recent[key] = _union(kept, labels)

    def hand(self, records: Sequence[tuple[str, Sequence[str]]]) -> None:
        seq = time.time_ns()  # (a key's rows in their order; the keys' rows share it)
        rows = [(key, label, seq + i) for key, labels in records
                for i, label in enumerate(labels)]
        if self.journal is not None:
            # one transaction with the task's first row: no commit of their own
            self.journal.labels(rows)
        else:
            # the writer thread runs its jobs in order: the task's row, handed to it
            # after this, is committed after these (a label row of a task never written
            # is harmless)
            thread = self.store.thread
            assert thread is not None, "the writer opens before any task is accepted"
            thread.hand([each(INSERT, rows)])
        recent = self._recent
        for key, labels in records:
            if key.startswith(SESSIONS):
                continue  # (a session's may have more in the database)
            kept = recent.get(key)
            if kept is not None:
                recent[key] = _union(kept, labels)
                continue
            if len(recent) >= RECENT:
                recent.popitem(last=False)
            recent[key] = tuple(dict.fromkeys(labels))  # (a task's, accepted now: all it has)

    async def read(self, key: str) -> tuple[str, ...]:
        kept = self._recent.get(key)
        if kept is not None:
            return kept
        await self._ended(key)
        with errors_named(self.store.path):
            rows = self.store.db.rows("SELECT label FROM labels WHERE key = ? ORDER BY seq",
                                      (key,))
        return tuple(label for (label,) in rows)


def _rows(key: str, labels: Sequence[str]) -> list[LabelRow]:
    seq = time.time_ns()
    return [(key, label, seq + i) for i, label in enumerate(labels)]


def _union(have: tuple[str, ...], more: Sequence[str]) -> tuple[str, ...]:
    return (*have, *(x for x in dict.fromkeys(more) if x not in have))
