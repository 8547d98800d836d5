"""The migration that carries spawn trees out of the step journal into the calls' tables.
Before, a spawn was a named step `spawn:KEY` of its parent task and a child's depth and
reach a step `corral/lineage` of its own; now a tree is one call of kind `spawn`
(supervisor/tasks/spawntree.py), a row a spawn. A tree with a task still unfinished is
carried, each row ended as its child's task row says; a tree whose every task has ended
is read by no one and is not. The steps are then deleted, with the results only they
named."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

SPAWN = "spawn:"
LINEAGE = "corral/lineage"
# a task's statuses that end it (supervisor/tasks/taskmachine.TERMINAL, as the journal
# spells them; a migration reads the database as it was, not the code as it is)
ENDED = ("succeeded", "failed", "timed_out", "cancelled", "lost")


def _json(body: bytes | None) -> Any:
    try:
        return json.loads(body) if body is not None else None
    except ValueError:
        return None


def _steps(db: sqlite3.Connection) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    """Each parent's children by key, and each task's lineage, as the steps hold them."""
    spawned: dict[str, dict[str, str]] = {}
    lineage: dict[str, Any] = {}
    for task_id, name, body in db.execute(
            "SELECT s.task_id, s.name, r.body FROM steps s LEFT JOIN step_results r ON "
            "r.hash = s.result WHERE s.seq = 0 AND (s.name LIKE 'spawn:%' OR s.name = ?)",
            (LINEAGE,)):
        value = _json(body)
        if not isinstance(value, dict):
            continue
        if name == LINEAGE:
            lineage[task_id] = value
        elif isinstance(value.get("child"), str):
            spawned.setdefault(task_id, {})[name[len(SPAWN):]] = value["child"]
    return spawned, lineage


def _root(task_id: str, parents: dict[str, str]) -> str:
    seen = {task_id}
    while task_id in parents and parents[task_id] not in seen:
        task_id = parents[task_id]
        seen.add(task_id)
    return task_id


def carry_spawn_trees(db: sqlite3.Connection) -> None:
    spawned, lineage = _steps(db)
    parents = {child: parent for parent, kids in spawned.items() for child in kids.values()}
    trees: dict[str, list[tuple[str, str, str]]] = {}
    for task_id in set(spawned) | set(lineage):
        trees.setdefault(_root(task_id, parents), [])
    for parent, kids in spawned.items():
        trees[_root(parent, parents)] += [(parent, key, child) for key, child in kids.items()]
    tasks: dict[str, tuple[str, str, float, float | None, str | None]] = {}

    def task(task_id: str) -> tuple[str, str, float, float | None, str | None] | None:
        if task_id not in tasks:
            row = db.execute("SELECT agent, status, created, finished, tenant FROM tasks "
                             "WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                return None
            tasks[task_id] = row
        return tasks[task_id]

    now = time.time()
    for root, edges in trees.items():
        rows = []
        for parent, key, child in edges:
            t = task(child)
            ended = t is not None and t[1] in ENDED
            rows.append((root, f"{parent}/{key}", -1, child,
                         t[1] if t is not None and ended else "running",
                         t[2] if t is not None else now, t[3] if ended and t else None))
        r = task(root)
        if r is not None and r[1] in ENDED and all(row[4] != "running" for row in rows):
            continue  # every task of it has ended: read by no one
        reach = lineage.get(root, {})
        db.execute("INSERT OR REPLACE INTO calls (call_id, kind, name, tenant, definition, "
                   "input, status, created) VALUES (?, 'spawn', ?, ?, X'', ?, 'running', ?)",
                   (root, r[0] if r else "", r[4] if r else None,
                    json.dumps({"reach": reach.get("reach"), "by": reach.get("by")}).encode(),
                    r[2] if r else now))
        db.executemany("INSERT OR REPLACE INTO call_steps (call_id, step, item, task_id, "
                       "status, started, ended) VALUES (?,?,?,?,?,?,?)", rows)
    hashes = [h for (h,) in db.execute(
        "DELETE FROM steps WHERE seq = 0 AND (name LIKE 'spawn:%' OR name = ?) AND "
        "result IS NOT NULL RETURNING result", (LINEAGE,))]
    db.execute("DELETE FROM steps WHERE seq = 0 AND (name LIKE 'spawn:%' OR name = ?)",
               (LINEAGE,))
    for h in set(hashes):
        db.execute("DELETE FROM step_results WHERE hash = ? AND ref IS NULL AND NOT EXISTS "
                   "(SELECT 1 FROM steps WHERE result = ?)", (h, h))
