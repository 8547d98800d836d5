"""A spawn tree on the durable engine without processes (supervisor/tasks/spawntree.py,
decision 618): one call per tree, kept before any of its rows; a spawn's row holds its
child's id before the child exists and is the same row when asked again; a child's
lineage is one deeper than its parent's, the root's reach with it; the tree ends once its
root and every child have, its rows ended as their children did; a tree read back from
its store knows every task's place in it, grandchildren too."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from corral.supervisor.durable import WHOLE, CallRecord, StepRow
from corral.supervisor.durable.store import MemoryStore
from corral.supervisor.tasks.spawntree import KIND, Lineage, SpawnTrees


async def _spawn(trees: SpawnTrees, parent: str, key: str) -> str:
    """A spawn as spawn.py makes one: the parent's tree kept, the row made."""
    tree = trees.tree(parent, "orch", "acme", trees.lineage(parent))
    await trees.planted(tree)
    row = await trees.begin(tree, parent, key, trees.deeper(trees.lineage(parent)))
    assert row.task_id is not None
    return row.task_id


async def _settled(trees: SpawnTrees) -> None:
    await trees.close()  # the ends kept


async def test_a_spawns_row_is_kept_with_its_childs_id_before_it_is_answered() -> None:
    store = MemoryStore()
    trees = SpawnTrees(store)
    trees.tree("root", "orch", "acme", Lineage(0, "web-*", "token web"))
    child = await _spawn(trees, "root", "k")
    kept = store.load("root")
    assert kept is not None
    assert (kept.kind, kept.name, kept.tenant, kept.status, kept.input) == (
        KIND, "orch", "acme", "running", {"reach": "web-*", "by": "token web"})
    assert {k: (r.status, r.task_id) for k, r in kept.rows.items()} == {
        ("root/k", WHOLE): ("running", child)}
    # the same key again: the same row, no second child
    again = trees.row("root", "k")
    assert again is not None and again.task_id == child
    assert await _spawn(trees, "root", "k") == child
    assert trees.fanned == {"root": 1}
    assert trees.lineage(child) == Lineage(1, "web-*", "token web")
    grandchild = await _spawn(trees, child, "g")
    assert trees.lineage(grandchild) == Lineage(2, "web-*", "token web")
    assert trees.lineage(grandchild) is trees.lineage(await _spawn(trees, child, "h"))
    assert trees.child_of(child, grandchild) and not trees.child_of("root", grandchild)
    assert trees.lineage("stranger") == Lineage(0)


async def test_many_spawns_at_once_keep_one_tree() -> None:
    store = MemoryStore()
    saved: list[str] = []
    save_call = store.save_call

    async def counting(record: CallRecord) -> None:
        saved.append(record.call_id)
        await save_call(record)

    store.save_call = counting  # type: ignore[method-assign]
    trees = SpawnTrees(store)
    children = await asyncio.gather(*(_spawn(trees, "root", str(i)) for i in range(20)))
    assert len(set(children)) == 20
    assert saved == ["root"]
    kept = store.load("root")
    assert kept is not None and len(kept.rows) == 20


async def test_a_tree_ends_once_its_root_and_every_child_have() -> None:
    store = MemoryStore()
    trees = SpawnTrees(store)
    a = await _spawn(trees, "root", "a")
    b = await _spawn(trees, "root", "b")
    trees.finished(a, "succeeded", None)
    trees.finished("root", "failed", "boom")  # its child b still runs
    await _settled(trees)
    kept = store.load("root")
    assert kept is not None and kept.status == "running"
    # a row is one write while its child runs: its end is kept with the tree's
    assert {k: r.status for k, r in kept.rows.items()} == {
        ("root/a", WHOLE): "running", ("root/b", WHOLE): "running"}
    assert trees.ended(a) and not trees.ended(b) and trees.ended("root")
    assert trees.child_of("root", a)  # an ended child is still its parent's to wait for
    trees.finished(b, "timed_out", "too slow")
    await _settled(trees)
    kept = store.load("root")
    assert kept is not None and (kept.status, kept.ended is not None) == ("failed", True)
    assert {k: (r.status, r.error) for k, r in kept.rows.items()} == {
        ("root/a", WHOLE): ("succeeded", None), ("root/b", WHOLE): ("timed_out", "too slow")}
    assert store.unfinished(KIND) == []
    assert not trees.child_of("root", a)  # the tree is gone from memory too


async def test_a_root_that_ends_lost_ends_its_tree_failed() -> None:
    store = MemoryStore()
    trees = SpawnTrees(store)
    await trees.planted(trees.tree("root", "orch", None, Lineage(0, "x*", "token t")))
    trees.finished("root", "lost", None)
    await _settled(trees)
    kept = store.load("root")
    assert kept is not None and kept.status == "failed"


async def test_a_tree_read_back_knows_every_tasks_place() -> None:
    store = MemoryStore()
    trees = SpawnTrees(store)
    trees.tree("root", "orch", "acme", Lineage(0, "web-*", "token web"))
    a = await _spawn(trees, "root", "a")
    b = await _spawn(trees, "root", "b")
    ga = await _spawn(trees, a, "x")
    trees.finished(b, "succeeded", None)
    await _settled(trees)

    after = SpawnTrees()
    after.keep_in(store)
    assert after.lineage("root") == Lineage(0, "web-*", "token web")
    assert after.lineage(a) == Lineage(1, "web-*", "token web")
    assert after.lineage(ga) == Lineage(2, "web-*", "token web")
    assert after.fanned == {"root": 2, a: 1}
    # b's end was not kept (the tree runs on): it is running until the daemon asks
    # the task journal (spawn.py's recovery), and ends then as here
    assert not after.ended(b) and not after.ended(a) and not after.ended("root")
    row = after.row("root", "a")
    assert row is not None and row.task_id == a
    # its ends go on from there: the tree ends with its last task
    for t in (b, ga, a, "root"):
        after.finished(t, "succeeded", None)
    await _settled(after)
    kept = store.load("root")
    assert kept is not None and kept.status == "succeeded"


class Failing(MemoryStore):
    async def save_call(self, record: CallRecord) -> None:
        raise OSError("disk full")

    async def save_steps(self, call_id: str, rows: list[StepRow]) -> None:
        raise AssertionError("a row of a call never kept")


async def test_a_tree_whose_call_was_not_kept_keeps_no_row_and_says_why() -> None:
    trees = SpawnTrees(Failing())
    for _ in range(2):  # told to every spawn, not once
        with pytest.raises(OSError, match="disk full"):
            await _spawn(trees, "root", "k")
    assert trees.row("root", "k") is None


def test_a_spawns_step_names_its_parent_and_its_key() -> None:
    from corral.supervisor.tasks.spawntree import parent_of, step_of

    step: Any = step_of("p-1", "a/b")
    assert step == ("p-1/a/b", WHOLE) and parent_of(step) == "p-1"


async def test_trees_kept_in_memory_are_forgotten_once_ended() -> None:
    """A daemon without a task journal keeps its trees in memory: an ended one goes."""
    from corral.supervisor.tasks.spawntree import Unkept

    store = Unkept()
    trees = SpawnTrees(store)
    child = await _spawn(trees, "root", "k")
    assert store.load("root") is not None and len(store.outputs) == 1
    trees.finished(child, "succeeded", None)
    trees.finished("root", "succeeded", None)
    await _settled(trees)
    assert (store.calls, store.outputs) == ({}, {})
