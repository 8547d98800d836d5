"""Agents' spec history: every change of an agent's spec is a numbered revision in the
state database (who, when, what changed, the whole spec), so `corral history` can show it
and `corral rollback` can go back to any of them. Also where `corral scale` is kept, so a
scaled agent keeps its replica count across daemon restarts and reloads.

The tables are migration 4 of store.py; this module only reads and writes them.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import msgspec

from ..supervisor.config import AgentSpec

# appended to store.MIGRATIONS (one entry: see store.py's rule)
MIGRATION = """
CREATE TABLE revisions (
    agent TEXT NOT NULL,
    revision INTEGER NOT NULL,
    time REAL NOT NULL,
    who TEXT NOT NULL,
    change TEXT NOT NULL,
    spec TEXT NOT NULL,
    PRIMARY KEY (agent, revision)
);
CREATE TABLE scaled (
    agent TEXT PRIMARY KEY,
    replicas INTEGER NOT NULL,
    declared INTEGER NOT NULL,
    time REAL NOT NULL
);
"""


class Revision(msgspec.Struct):
    agent: str
    revision: int
    time: float
    who: str  # "config file", "uid 0 pid 123: agents.add", "SIGHUP", ...
    change: str  # in words: "created", "replicas 2 -> 3, env changed"
    spec: dict[str, Any]  # the [agents.NAME] table, as the config would write it


def spec_table(spec: AgentSpec) -> dict[str, Any]:
    """The spec as a table (defaults left out); the name is the key, not a field."""
    table: dict[str, Any] = msgspec.to_builtins(spec)
    table.pop("name", None)
    return table


def describe_change(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    if old is None:
        return "created"
    parts = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        scalar = all(isinstance(v, str | int | float | bool) or v is None for v in (a, b))
        if scalar and len(repr(a)) + len(repr(b)) < 80:
            parts.append(f"{key} {_show(a)} -> {_show(b)}")
        else:
            parts.append(f"{key} changed")
    return ", ".join(parts) or "no change"


def _show(v: Any) -> str:
    return "default" if v is None else repr(v) if isinstance(v, str) else str(v)


class RevisionLog:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def _rows(self, sql: str, *args: Any) -> list[Revision]:
        rows = self.db.execute(
            "SELECT agent, revision, time, who, change, spec FROM revisions " + sql, args)
        return [Revision(a, r, t, w, c, msgspec.json.decode(s)) for a, r, t, w, c, s in rows]

    def latest(self, agent: str) -> Revision | None:
        rows = self._rows("WHERE agent = ? ORDER BY revision DESC LIMIT 1", agent)
        return rows[0] if rows else None

    def get(self, agent: str, revision: int) -> Revision | None:
        rows = self._rows("WHERE agent = ? AND revision = ?", agent, revision)
        return rows[0] if rows else None

    def history(self, agent: str, limit: int = 100) -> list[Revision]:
        return list(reversed(self._rows(
            "WHERE agent = ? ORDER BY revision DESC LIMIT ?", agent, limit)))

    def record(self, spec: AgentSpec, who: str, change: str | None = None
               ) -> Revision | None:
        """A new revision if `spec` differs from the agent's latest one (else None)."""
        table = spec_table(spec)
        last = self.latest(spec.name)
        if last is not None and last.spec == table:
            return None
        rev = Revision(spec.name, last.revision + 1 if last else 1, time.time(), who,
                       change or describe_change(last.spec if last else None, table), table)
        self.db.execute(
            "INSERT INTO revisions (agent, revision, time, who, change, spec) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (rev.agent, rev.revision, rev.time, rev.who, rev.change,
             msgspec.json.encode(table).decode()))
        return rev

    # -- `corral scale`, kept -------------------------------------------------------------
    def set_scaled(self, agent: str, replicas: int, declared: int) -> None:
        """`declared`: the config's own count when it was scaled; a config that changes
        its count since then wins over the scale."""
        self.db.execute("INSERT OR REPLACE INTO scaled (agent, replicas, declared, time) "
                        "VALUES (?, ?, ?, ?)", (agent, replicas, declared, time.time()))

    def scaled(self) -> dict[str, tuple[int, int]]:
        rows = self.db.execute("SELECT agent, replicas, declared FROM scaled")
        return {a: (r, d) for a, r, d in rows}

    def forget_scaled(self, agent: str) -> None:
        self.db.execute("DELETE FROM scaled WHERE agent = ?", (agent,))
