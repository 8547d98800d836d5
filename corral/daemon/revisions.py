"""Agents' spec history: every change of an agent's spec is a numbered revision in the
state database, for `corral history` and `corral rollback`; also where `corral scale` is
kept. Revisions are numbered within (agent, tenant): an agent a tenant adds under a name
another tenant's agent had starts at revision 1 and is never shown the other's.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from ..redact import NAMED_ONLY
from ..supervisor.config import DEFAULT_TENANT, AgentSpec
from ..views import Revision as Revision
from .sqlwrites import Write as Write
from .sqlwrites import statement

if TYPE_CHECKING:
    from ..supervisor.config import SupervisorSettings


def revision(agent: str, number: int, when: float, who: str, change: str,
             spec: dict[str, Any]) -> Revision:
    release = spec.get("release")
    return Revision(agent, number, when, who, change, spec,
                    os.path.basename(release) if isinstance(release, str) else None,
                    spec.get("version"))


def tenant_of(table: dict[str, Any]) -> str:
    """The tenant of the agent a revision's table made."""
    tenant = table.get("tenant")
    return tenant if isinstance(tenant, str) else DEFAULT_TENANT


def spec_table(spec: AgentSpec) -> dict[str, Any]:
    """The spec as a table (defaults left out); the name is the key, not a field."""
    table: dict[str, Any] = _as_stored(spec)
    table.pop("name", None)
    return table


def _as_stored(value: Any) -> Any:
    """`value` as a revision's JSON reads back (a tuple a list): a spec compared with its
    stored revision is equal when nothing changed."""
    return msgspec.json.decode(msgspec.json.encode(value))


def _defaults(struct: type[msgspec.Struct]) -> dict[str, Any]:
    """A spec type's default values as the table leaves them out (nested tables too):
    what a key absent from a revision stands for."""
    table: dict[str, Any] = {}
    for field in msgspec.structs.fields(struct):
        kind = field.type
        if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
            table[field.name] = _defaults(kind)
        elif field.default is not msgspec.NODEFAULT:
            table[field.name] = _as_stored(field.default)
        elif field.default_factory is not msgspec.NODEFAULT:
            table[field.name] = _as_stored(field.default_factory())
    return table


@functools.cache
def spec_defaults() -> dict[str, Any]:
    """Made at the first change described, not at import (reading the fields evaluates
    every annotation of the spec: ~1.5 ms)."""
    return _defaults(AgentSpec)


def describe_change(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """What changed from `old` to `new`, key by key (nested tables as `limits.memory_mb`):
    `replicas 2 -> 3, env.TOKEN changed, limits.memory_mb 0 -> 256`."""
    if old is None:
        return "created"
    return ", ".join(_differences(old, new, "", hidden=False, defaults=spec_defaults())
                     ) or "no change"


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str, hidden: bool,
                 defaults: dict[str, Any]) -> list[str]:
    parts = []
    for key in sorted(set(old) | set(new)):
        default = defaults.get(key)
        # a key left out is its default: shown as the value it stands for
        a = old.get(key, None if isinstance(default, dict) else default)
        b = new.get(key, None if isinstance(default, dict) else default)
        if a == b:
            continue
        path = f"{prefix}{key}"
        if not prefix and key in ("release", "cwd") and _in_releases(old, new):
            if key == "cwd":  # the source of each release: the release says it
                continue
            a, b = (os.path.basename(v) if isinstance(v, str) else v for v in (a, b))
        if isinstance(a, dict | None) and isinstance(b, dict | None):
            parts += _differences(a or {}, b or {}, f"{path}.", hidden or key in NAMED_ONLY,
                                  default if isinstance(default, dict) else {})
        elif hidden:
            what = "added" if a is None else "removed" if b is None else "changed"
            parts.append(f"{path} {what}")
        elif len(shown := f"{path} {_show(a)} -> {_show(b)}") < 100:
            parts.append(shown)
        else:
            parts.append(f"{path} changed")
    return parts


def _in_releases(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Both specs run packages' releases, each from its own source (cwd)."""
    return all(isinstance(t.get("release"), str) and isinstance(t.get("cwd"), str)
               and t["cwd"].startswith(t["release"] + os.sep) for t in (old, new))


def _show(v: Any) -> str:
    if v is None:
        return "default"
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, list):  # a command, an allowlist: as the config writes it
        return json.dumps(v, ensure_ascii=False)
    return str(v)


class RevisionBound(NamedTuple):
    """The revisions kept of each agent: the `newest` (0: all), and no more than
    `spec_bytes` of specs together (0: no bound); the newest two whatever their size,
    so that a change that fails, and `corral rollback`, have the one before to go to."""

    newest: int
    spec_bytes: int


def kept_of(sc: SupervisorSettings) -> RevisionBound:
    return RevisionBound(sc.keep_revisions, int(sc.keep_revisions_mb * 1024 * 1024))


def prune(db: sqlite3.Connection, kept: RevisionBound, agent: str | None = None,
          tenant: str | None = None) -> None:
    """Delete the revisions past `kept`, the oldest first: of one agent (of `tenant`), or
    of every agent. Its newest two are never deleted."""
    one = "WHERE agent = ?3 AND tenant = ?4" if agent is not None else ""
    db.execute(
        "DELETE FROM revisions WHERE rowid IN (SELECT rowid FROM (SELECT rowid, "
        "row_number() OVER w AS n, sum(length(spec)) OVER w AS held FROM revisions "
        f"{one} WINDOW w AS (PARTITION BY agent, tenant ORDER BY revision DESC)) "
        "WHERE n > 2 AND ((?1 > 0 AND n > ?1) OR (?2 > 0 AND held > ?2)))",
        (kept.newest, kept.spec_bytes, *((agent, tenant) if agent is not None else ())))


class RevisionLog:
    def __init__(self, db: sqlite3.Connection, kept: RevisionBound | None = None) -> None:
        self.db = db
        self.kept = kept

    def _rows(self, sql: str, *args: Any) -> list[Revision]:
        rows = self.db.execute(
            "SELECT agent, revision, time, who, change, spec FROM revisions " + sql, args)
        return [revision(a, r, t, w, c, msgspec.json.decode(s)) for a, r, t, w, c, s in rows]

    # an agent is its name and its tenant: another tenant's of the name has its own
    def latest(self, agent: str, tenant: str) -> Revision | None:
        rows = self._rows("WHERE agent = ? AND tenant = ? ORDER BY revision DESC LIMIT 1",
                          agent, tenant)
        return rows[0] if rows else None

    def history(self, agent: str, tenant: str) -> list[Revision]:
        """Every kept revision, oldest first (as a cluster agent's: cluster/specs.py)."""
        return self._rows("WHERE agent = ? AND tenant = ? ORDER BY revision", agent, tenant)

    def scaled(self, holders: Mapping[str, str] | None = None
               ) -> dict[str, tuple[int, int]]:
        """Each kept scale: (replicas, the config's count then). `holders`: the tenant of
        each agent asked for; a scale another tenant's agent of the name kept is not its."""
        rows = self.db.execute("SELECT agent, replicas, declared, tenant FROM scaled")
        return {a: (r, d) for a, r, d, t in rows if holders is None or holders.get(a) == t}


# -- writes: functions of the writer's connection (storewriter.py runs them on its thread) -----
def recording(spec: AgentSpec, who: str, change: str | None = None,
              out: list[Revision] | None = None, kept: RevisionBound | None = None) -> Write:
    """A write of a new revision if `spec` differs from the agent's latest one; the
    revision it made is put in `out`. Numbered where it is written, so two writers in
    turn never take the same number. `change`: what made it (`rollback to revision 1`);
    `kept`: the agent's revisions past it are deleted in the same transaction."""
    table = spec_table(spec)
    encoded = msgspec.json.encode(table).decode()
    when = time.time()

    def write(db: sqlite3.Connection) -> None:
        if out is not None:
            out.clear()  # a batch tried again runs its writes again
        last = RevisionLog(db).latest(spec.name, spec.tenant)
        if last is not None and last.spec == table:
            return
        diff = describe_change(last.spec if last else None, table)
        rev = revision(spec.name, last.revision + 1 if last else 1, when, who,
                       f"{change}: {diff}" if change else diff, table)
        db.execute(
            "INSERT INTO revisions (agent, tenant, revision, time, who, change, spec) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (rev.agent, spec.tenant, rev.revision, rev.time, rev.who, rev.change, encoded))
        if kept is not None:
            prune(db, kept, spec.name, spec.tenant)
        if out is not None:
            out.append(rev)

    return write


def unrecording(rev: Revision) -> Write:
    """The write that takes back a revision recorded for a change that then failed."""
    return statement("DELETE FROM revisions WHERE agent = ? AND tenant = ? AND revision = ?",
                     (rev.agent, tenant_of(rev.spec), rev.revision))


# -- `corral scale`, kept -----------------------------------------------------------------
def setting_scaled(agent: str, replicas: int, declared: int,
                   tenant: str = DEFAULT_TENANT) -> Write:
    """`declared`: the config's own count when it was scaled; a config that changes its
    count since then wins over the scale."""
    return statement("INSERT OR REPLACE INTO scaled (agent, replicas, declared, time, "
                     "tenant) VALUES (?, ?, ?, ?, ?)",
                     (agent, replicas, declared, time.time(), tenant))


def forgetting_scaled(agent: str) -> Write:
    return statement("DELETE FROM scaled WHERE agent = ?", (agent,))
