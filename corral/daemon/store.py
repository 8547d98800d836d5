"""The daemon's durable state: an SQLite database (WAL) in the state directory.

What must survive a restart of the daemon lives here: agents added at runtime (the TOML
file stays the operator's declaration), and the audit log of control operations.
Writes are few and small (control operations, not the hot path).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import msgspec

SCHEMA = """
CREATE TABLE IF NOT EXISTS runtime_agents (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    added_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS agent_state (
    name TEXT NOT NULL,
    replica INTEGER NOT NULL,
    time REAL NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (name, replica)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    uid INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    method TEXT NOT NULL,
    params TEXT NOT NULL,
    outcome TEXT NOT NULL
);
"""


class StateStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def runtime_agents(self) -> dict[str, dict[str, Any]]:
        rows = self.db.execute("SELECT name, spec FROM runtime_agents ORDER BY added_at")
        return {name: msgspec.json.decode(spec) for name, spec in rows}

    def save_runtime_agent(self, name: str, table: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO runtime_agents (name, spec, added_at) VALUES (?, ?, ?)",
            (name, msgspec.json.encode(table).decode(), time.time()),
        )

    def forget_runtime_agent(self, name: str) -> None:
        self.db.execute("DELETE FROM runtime_agents WHERE name = ?", (name,))

    def save_state(self, name: str, replica: int, when: float, state: Any) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO agent_state (name, replica, time, state) VALUES (?,?,?,?)",
            (name, replica, when, msgspec.json.encode(state).decode()),
        )

    def states(self) -> dict[tuple[str, int], tuple[float, Any]]:
        rows = self.db.execute("SELECT name, replica, time, state FROM agent_state")
        return {(n, r): (t, msgspec.json.decode(s)) for n, r, t, s in rows}

    def audit(self, uid: int, pid: int, method: str, params: Any, outcome: str) -> None:
        self.db.execute(
            "INSERT INTO audit (time, uid, pid, method, params, outcome) VALUES (?,?,?,?,?,?)",
            (time.time(), uid, pid, method, msgspec.json.encode(params).decode(), outcome),
        )

    def audit_log(self, limit: int = 100) -> list[tuple[Any, ...]]:
        rows = self.db.execute(
            "SELECT time, uid, pid, method, params, outcome FROM audit ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return list(reversed(rows.fetchall()))

    def close(self) -> None:
        self.db.close()
