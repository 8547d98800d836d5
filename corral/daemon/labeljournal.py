"""Labels (supervisor/labels.py) in the state database: a row per label of a task or a
session, committed before the call that reads the untrusted text is made."""

from __future__ import annotations

import time
from collections.abc import Sequence

from .sqlwrites import Write, statement
from .store import StateStore
from .storeschema import errors_named


class LabelsDB:
    """The engine's LabelStore on the daemon's state database."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def mark(self, key: str, labels: Sequence[str]) -> None:
        await self.store.commit(_rows(key, labels))

    def hand(self, records: Sequence[tuple[str, Sequence[str]]]) -> None:
        # the writer thread runs its jobs in order: the task's row, handed to it after
        # this, is committed after these (a label row of a task never written is harmless)
        thread = self.store.thread
        assert thread is not None, "the writer opens before any task is accepted"
        thread.hand([row for key, labels in records for row in _rows(key, labels)])

    async def read(self, key: str) -> tuple[str, ...]:
        with errors_named(self.store.path):
            rows = self.store.db.rows("SELECT label FROM labels WHERE key = ? ORDER BY seq",
                                      (key,))
        return tuple(label for (label,) in rows)


def _rows(key: str, labels: Sequence[str]) -> list[Write]:
    seq = time.time_ns()
    return [statement("INSERT OR IGNORE INTO labels (key, label, seq) VALUES (?,?,?)",
                      (key, label, seq + i)) for i, label in enumerate(labels)]
