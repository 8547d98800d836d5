"""Push configs (supervisor/pushstore.py) in the state database: a row per config of a
task, committed before the call that made it is answered."""

from __future__ import annotations

import time

from .sqlwrites import statement
from .store import StateStore
from .storeschema import errors_named


class PushDB:
    """The engine's PushStore on the daemon's state database."""

    shared = False  # (its flock: one daemon has it)

    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def put(self, task_id: str, config_id: str, record: bytes, most: int) -> bool:
        # one statement: kept if its id is kept already or the task has room (the
        # writer's commits are one after another, so the count is the one it writes over)
        await self.store.commit([statement(
            "INSERT INTO push_configs (task_id, config_id, record, seq) SELECT ?,?,?,? "
            "WHERE EXISTS (SELECT 1 FROM push_configs WHERE task_id = ? AND config_id = ?) "
            "OR (SELECT COUNT(*) FROM push_configs WHERE task_id = ?) < ? "
            "ON CONFLICT (task_id, config_id) DO UPDATE SET record = excluded.record",
            (task_id, config_id, record, time.time_ns(), task_id, config_id, task_id,
             most))])
        with errors_named(self.store.path):
            rows = self.store.db.rows("SELECT record FROM push_configs WHERE task_id = ? "
                                      "AND config_id = ?", (task_id, config_id))
        return bool(rows) and bytes(rows[0][0]) == record

    async def of(self, task_id: str) -> dict[str, bytes]:
        with errors_named(self.store.path):
            rows = self.store.db.rows("SELECT config_id, record FROM push_configs WHERE "
                                      "task_id = ? ORDER BY seq", (task_id,))
        return {config_id: bytes(record) for config_id, record in rows}

    async def delete(self, task_id: str, config_id: str) -> None:
        await self.store.commit([statement(
            "DELETE FROM push_configs WHERE task_id = ? AND config_id = ?",
            (task_id, config_id))])

    async def drop(self, task_id: str) -> None:
        await self.store.commit([statement("DELETE FROM push_configs WHERE task_id = ?",
                                           (task_id,))])

    async def tasks(self) -> list[str]:
        with errors_named(self.store.path):
            rows = self.store.db.rows("SELECT DISTINCT task_id FROM push_configs ORDER BY "
                                      "task_id")
        return [task_id for (task_id,) in rows]

    async def lead(self, task_id: str, holder: str, seconds: float) -> bool:
        return True  # (one daemon has the database: its flock)
