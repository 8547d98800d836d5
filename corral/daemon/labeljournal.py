"""Labels (supervisor/labels.py) in the state database: a row per label of a task or a
session, committed before the call that reads the untrusted text is made."""

from __future__ import annotations

import time
from collections.abc import Sequence

from .sqlwrites import statement
from .store import StateStore
from .storeschema import errors_named


class LabelsDB:
    """The engine's LabelStore on the daemon's state database."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def mark(self, key: str, labels: Sequence[str]) -> None:
        seq = time.time_ns()
        await self.store.commit([statement(
            "INSERT OR IGNORE INTO labels (key, label, seq) VALUES (?,?,?)", (key, label,
                                                                            seq + i))
            for i, label in enumerate(labels)])

    async def read(self, key: str) -> tuple[str, ...]:
        with errors_named(self.store.path):
            rows = self.store.db.rows("SELECT label FROM labels WHERE key = ? ORDER BY seq",
                                      (key,))
        return tuple(label for (label,) in rows)
