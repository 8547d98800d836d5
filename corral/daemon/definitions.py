"""Definitions changed at runtime, of any kind (a workflow, a team): each change of one is
a numbered revision of its kind and name (who, when, whose, what changed, the whole
definition or none for a removal), for `history`, `rollback` and the next daemon.

Writes run on the store's writer thread, each numbered where it is written: two changes
queued together never take one number."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from .sqlwrites import Write, statement
from .store import StateStore


class DefRevision(msgspec.Struct, frozen=True):
    kind: str
    name: str
    revision: int
    time: float
    who: str
    # the tenant its agents were of when it was made (a removal's: the removed one's);
    # None: the operator's
    tenant: str | None
    change: str  # "created", "removed", "timeout 60 -> 30, steps changed", ...
    spec: dict[str, Any] | None  # None: this revision removed it


def describe_change(old: dict[str, Any] | None, new: dict[str, Any] | None) -> str:
    """What changed between two definitions, key by key: `timeout 60 -> 30, steps
    changed` (a list or table whole, a value when it is short)."""
    if new is None:
        return "removed"
    if old is None:
        return "created"
    parts = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        shown = f"{key} {json.dumps(a)} -> {json.dumps(b)}"
        parts.append(shown if not isinstance(a, list | dict) and not isinstance(b, list | dict)
                     and len(shown) < 80 else f"{key} changed")
    return ", ".join(parts) or "no change"


def one_tenant(agents: Iterable[str], tenant_of: Callable[[str], str | None]
               ) -> str | None:
    """The tenant every one of these agents is of; None when they are of several or none."""
    tenants = {tenant_of(a) for a in agents}
    return tenants.pop() if len(tenants) == 1 else None


_COLUMNS = "kind, name, revision, time, who, tenant, change, spec"


def _row(row: tuple[Any, ...]) -> DefRevision:
    kind, name, number, when, who, tenant, change, spec = row
    return DefRevision(kind, name, number, when, who, tenant, change,
                       msgspec.json.decode(spec) if spec is not None else None)


class Definitions:
    def __init__(self, store: StateStore, kind: str) -> None:
        self.store = store
        self.kind = kind

    def _rows(self, db: sqlite3.Connection, sql: str, *args: Any) -> list[DefRevision]:
        return [_row(r) for r in db.execute(
            f"SELECT {_COLUMNS} FROM definitions WHERE kind = ? {sql}", (self.kind, *args))]

    def current(self) -> dict[str, DefRevision]:
        """Each name's newest revision, those not removed, oldest name first."""
        newest = self._rows(self.store.db, "AND revision = (SELECT MAX(revision) FROM "
                            "definitions d WHERE d.kind = definitions.kind AND d.name = "
                            "definitions.name) ORDER BY time")
        return {r.name: r for r in newest if r.spec is not None}

    def latest(self, name: str, db: sqlite3.Connection | None = None) -> DefRevision | None:
        rows = self._rows(db or self.store.db, "AND name = ? ORDER BY revision DESC LIMIT 1",
                          name)
        return rows[0] if rows else None

    def history(self, name: str, limit: int, tenant: str | None = None
                ) -> list[DefRevision]:
        """The newest `limit` revisions (a tenant's: of its own tenant's), oldest first."""
        rows = self._rows(self.store.db, "AND name = ? AND (? IS NULL OR tenant = ?) ORDER BY "
                          "revision DESC LIMIT ?", name, tenant, tenant, limit)
        return list(reversed(rows))

    def forgetting(self, tenant: str | None, keep: int) -> Write:
        """The write that deletes the revisions of a tenant's removed names past its `keep`
        most recently removed: a removed name holds no quota, so this bounds it."""
        return statement(
            "DELETE FROM definitions WHERE kind = ? AND tenant IS ? AND name IN ("
            " SELECT name FROM definitions AS d WHERE kind = ? AND tenant IS ?"
            " AND spec IS NULL AND revision = (SELECT MAX(revision) FROM definitions"
            " WHERE kind = d.kind AND name = d.name)"
            " ORDER BY time DESC, name LIMIT -1 OFFSET ?)",
            (self.kind, tenant, self.kind, tenant, keep))

    def recording(self, name: str, spec: dict[str, Any] | None, who: str,
                  tenant: str | None, why: str | None, out: list[DefRevision],
                  keep: int) -> Write:
        """The write of a new revision (`spec` None: removed) when it differs from the
        newest one, made into `out`, the name's newest `keep` kept."""
        encoded = msgspec.json.encode(spec).decode() if spec is not None else None
        when = time.time()

        def write(db: sqlite3.Connection) -> None:
            out.clear()  # a batch tried again runs its writes again
            last = self.latest(name, db)
            before = last.spec if last is not None else None
            if last is not None and before == spec:
                return
            if last is not None and last.tenant != tenant:
                # the revisions before it are another's: what they held is not told here
                change = ("created (the revisions before it are "
                          f"{'the operator' if last.tenant is None else 'another tenant'}'s)")
            else:
                change = describe_change(before, spec)
            rev = DefRevision(self.kind, name, last.revision + 1 if last else 1, when, who,
                              tenant, f"{why}: {change}" if why else change, spec)
            db.execute(f"INSERT INTO definitions ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
                       (rev.kind, rev.name, rev.revision, rev.time, rev.who, rev.tenant,
                        rev.change, encoded))
            db.execute("DELETE FROM definitions WHERE kind = ? AND name = ? AND revision <= ?",
                       (self.kind, name, rev.revision - keep))
            out.append(rev)

        return write
