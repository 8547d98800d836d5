"""The migration that carries spawn trees out of the step journal (decision 619,
daemon/spawnmigration.py): a state database of the schema before, whose step journal
holds spawns (`spawn:KEY`) and lineages (`corral/lineage`), is carried into the calls'
tables, one call per tree with a task unfinished, each task's place read back whole; a
tree whose every task has ended is not carried; the steps and the results only they named
are gone. Then a daemon resumes an orchestrator from such a journal: the child it had
run is not run again, the child kept but never submitted runs under its kept id."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

from corral.daemon import storeschema
from corral.daemon.calljournal import CallJournal
from corral.daemon.spawnmigration import carry_spawn_trees
from corral.daemon.store import StateStore
from corral.supervisor.durable import WHOLE
from corral.supervisor.tasks.spawntree import KIND, Lineage, SpawnTrees

from .test_spawn import counted, fleet, run

BEFORE = storeschema.MIGRATIONS.index(carry_spawn_trees)  # the schema before it

TASK = ("INSERT INTO tasks (id, agent, priority, timeout, retries_left, created, finished, "
        "status, input, output, attempts, tenant) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")


def _old_database(path: Path) -> sqlite3.Connection:
    storeschema.prepare_state_dir(path.parent)
    db = sqlite3.connect(path, isolation_level=None)
    assert storeschema.migrate(db, storeschema.MIGRATIONS[:BEFORE]) == BEFORE
    return db


def _step(db: sqlite3.Connection, task_id: str, name: str, body: object) -> None:
    blob = json.dumps(body).encode()
    h = hashlib.blake2b(blob, digest_size=16).digest()
    db.execute("INSERT OR IGNORE INTO step_results (hash, size, body) VALUES (?,?,?)",
               (h, len(blob), blob))
    db.execute("INSERT INTO steps (task_id, seq, name, attempt, args, result) VALUES "
               "(?, 0, ?, 1, X'', ?)", (task_id, name, h))


def _task(db: sqlite3.Connection, task_id: str, agent: str, status: str,
          output: object = None, task_input: object = None, retries: int = 0) -> None:
    now = time.time()
    db.execute(TASK, (task_id, agent, 0, 60.0, retries, now,
                      now if status not in ("queued", "running") else None, status,
                      json.dumps(task_input).encode(),
                      json.dumps({"output": output}).encode() if output is not None else None,
                      b"[]",
                      "default"))


def test_spawn_steps_are_carried_into_one_call_per_tree(tmp_path: Path) -> None:
    path = tmp_path / "state" / "corral.db"
    db = _old_database(path)
    # a running tree: root -> a (done), root -> b (running) -> c (queued), under a reach
    _task(db, "root", "orch", "running")
    _task(db, "a", "leaf", "succeeded", 2)
    _task(db, "b", "orch", "running")
    _task(db, "c", "leaf", "queued")
    _step(db, "root", "corral/lineage", {"depth": 0, "reach": "web-*", "by": "token web"})
    _step(db, "root", "spawn:1", {"child": "a", "agent": "leaf"})
    _step(db, "root", "spawn:2", {"child": "b", "agent": "orch"})
    _step(db, "b", "corral/lineage", {"depth": 1, "reach": "web-*", "by": "token web"})
    _step(db, "b", "spawn:x/y", {"child": "c", "agent": "leaf"})
    _step(db, "c", "corral/lineage", {"depth": 2, "reach": "web-*", "by": "token web"})
    # an ended tree: read by no one, not carried
    _task(db, "old", "orch", "succeeded", 1)
    _task(db, "old-kid", "leaf", "failed")
    _step(db, "old", "spawn:1", {"child": "old-kid", "agent": "leaf"})
    # a worker's own named step stays where it is
    _step(db, "root", "mine", {"kept": True})
    db.close()

    store = StateStore(path)
    try:
        assert storeschema.schema_version(store.db) == storeschema.SCHEMA_VERSION
        calls = CallJournal(store)
        (tree,) = calls.unfinished(KIND)
        assert (tree.call_id, tree.name, tree.tenant, tree.input) == (
            "root", "orch", "default", {"reach": "web-*", "by": "token web"})
        assert {k: (r.status, r.task_id) for k, r in tree.rows.items()} == {
            ("root/1", WHOLE): ("succeeded", "a"), ("root/2", WHOLE): ("running", "b"),
            ("b/x/y", WHOLE): ("running", "c")}
        assert calls.load("old") is None
        assert store.db.execute("SELECT task_id, name FROM steps").fetchall() == [
            ("root", "mine")]
        assert store.db.execute("SELECT count(*) FROM step_results").fetchone() == (1,)

        trees = SpawnTrees()
        trees.keep_in(calls)
        assert trees.lineage("c") == Lineage(2, "web-*", "token web")
        assert trees.lineage("b") == Lineage(1, "web-*", "token web")
        assert trees.child_of("b", "c") and trees.fanned == {"root": 2, "b": 1}
    finally:
        store.close()


async def test_an_orchestrator_resumed_from_the_old_journal_runs_no_child_twice(
        tmp_path: Path) -> None:
    """Its first child ran under the daemon before (its output in its task's row, not in
    the count file); its second was kept but never submitted (the daemon stopped between
    the two writes); its third was never spawned. The next daemon, migrating, runs the
    orchestrator again: the first is answered from its row, the second submitted under
    its kept id, the third spawned anew."""
    from .daemon_harness import in_process

    count = tmp_path / "count"
    path = tmp_path / "state" / "corral.db"
    db = _old_database(path)
    root = "01a20000-0000-7000-8000-0000000000a1"
    first, second = (f"01a20000-0000-7000-8000-0000000000b{i}" for i in (1, 2))
    _task(db, root, "orch", "queued", task_input={"children": 3, "count": str(count)},
          retries=1)
    _task(db, first, "leaf", "succeeded", 0)
    _step(db, root, "spawn:1", {"child": first, "agent": "leaf"})
    _step(db, root, "spawn:2", {"child": second, "agent": "leaf"})
    db.close()
    async with in_process(tmp_path, fleet()) as d:
        res = await d.sup.tasks.info(root, wait=True)
        assert res.status == "succeeded", res
        assert json.loads(bytes(res.output)) == [0, 2, 4]
        assert counted(count) == [1, 2]  # the first child not run again
        assert (await d.sup.tasks.info(second)).status == "succeeded"
        assert d.sup.tasks.spawns.stats() == {"spawned": 1, "replayed": 2}
        # and a new tree beside it is the engine's as any other
        again = await run(d, {"children": 1, "count": str(tmp_path / "c2")})
        assert again.output == [0]


async def test_a_tree_whose_tasks_ended_unseen_is_ended_by_the_next_daemon(
        tmp_path: Path) -> None:
    """A tree kept running whose root and one child ended without their ends kept in it
    (the daemon stopped first), and whose other child was kept but never submitted: the
    next daemon ends the first child's row as its task did, the other `lost` (no attempt
    of its ended parent will ask for it), and the tree with its root's status."""
    from corral.supervisor.tasks.nodespawns import RECORD_GONE

    from .daemon_harness import in_process

    path = tmp_path / "state" / "corral.db"
    db = _old_database(path)
    db.close()
    store = StateStore(path)  # the schema as it is now
    root, kid, ghost = (f"01a20000-0000-7000-8000-0000000000c{i}" for i in (1, 2, 3))
    try:
        _task(store.db, root, "orch", "succeeded", [0])
        _task(store.db, kid, "leaf", "failed")
        store.db.execute("INSERT INTO calls (call_id, kind, name, tenant, definition, input, "
                         "status, created) VALUES (?, 'spawn', 'orch', 'default', X'', "
                         "'{}', 'running', 0)", (root,))
        store.db.executemany("INSERT INTO call_steps (call_id, step, item, task_id, status, "
                             "started) VALUES (?, ?, -1, ?, 'running', 0)",
                             [(root, f"{root}/1", kid), (root, f"{root}/2", ghost)])
    finally:
        store.close()
    async with in_process(tmp_path, fleet()) as d:
        await d.sup.tasks.spawns.node.close()  # its recovery and the ends it kept
        calls = CallJournal(d.services.store)
        tree = calls.load(root)
        assert tree is not None and tree.status == "succeeded"
        assert {k[0]: (r.status, r.error) for k, r in tree.rows.items()} == {
            f"{root}/1": ("failed", None), f"{root}/2": ("lost", RECORD_GONE)}


async def test_a_kept_child_never_submitted_is_submitted_at_its_parents_max_children(
        tmp_path: Path) -> None:
    """Its row is one of the parent's `max_children` already: submitted under its kept id
    when the parent's next attempt spawns its key, not refused as a child more."""
    from .daemon_harness import in_process

    count = tmp_path / "count"
    path = tmp_path / "state" / "corral.db"
    _old_database(path).close()
    store = StateStore(path)  # the schema as it is now
    root, first, second = (f"01a20000-0000-7000-8000-0000000000d{i}" for i in (1, 2, 3))
    try:
        _task(store.db, root, "orch", "queued", task_input={"children": 2, "count": str(count)},
              retries=1)
        _task(store.db, first, "leaf", "succeeded", 0)
        store.db.execute("INSERT INTO calls (call_id, kind, name, tenant, definition, input, "
                         "status, created) VALUES (?, 'spawn', 'orch', 'default', X'', "
                         "'{}', 'running', 0)", (root,))
        store.db.executemany("INSERT INTO call_steps (call_id, step, item, task_id, status, "
                             "started) VALUES (?, ?, -1, ?, ?, 0)",
                             [(root, f"{root}/1", first, "succeeded"),
                              (root, f"{root}/2", second, "running")])
    finally:
        store.close()
    async with in_process(tmp_path, fleet("max_children = 2")) as d:
        res = await d.sup.tasks.info(root, wait=True)
        assert res.status == "succeeded", res
        assert json.loads(bytes(res.output)) == [0, 2]
        assert counted(count) == [1]  # the first child not run again
        assert (await d.sup.tasks.info(second)).status == "succeeded"
        assert d.sup.tasks.spawns.stats() == {"spawned": 0, "replayed": 2}
