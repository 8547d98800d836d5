"""A spawn tree as one durable call: its id is its root task's, its input the reach the
root was submitted under, each spawn a keyed step (the parent's id and the spawn's key),
its child's id kept before the child is submitted; the planner is the agent's own code."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import NamedTuple

import msgspec

from ..durable import CALL_ENDED, WHOLE, CallRecord, StepRow
from ..durable.engine import StepEngine
from ..durable.record import StepKey
from ..durable.store import DurableStore, MemoryStore

KIND = "spawn"
log = logging.getLogger(__name__)


class Lineage(NamedTuple):
    """How deep a task is among spawns (0: nobody spawned it), and what limits its tree."""

    depth: int
    reach: str | None = None  # a glob of the agents it may spawn; None: any
    by: str | None = None  # who set the reach ("token NAME")


def step_of(parent_id: str, key: str) -> StepKey:
    """A spawn's row: the parent's id (a task id, never holding a slash) and its key."""
    return (f"{parent_id}/{key}", WHOLE)


def parent_of(step: StepKey) -> str:
    return step[0].split("/", 1)[0]


class SpawnTree(msgspec.Struct):
    """A tree as the engine drives it (durable.record.Durable)."""

    call_id: str  # the root task's id
    agent: str  # the root's
    tenant: str | None
    created: float
    reach: str | None = None
    by: str | None = None
    status: str = "running"
    error: str | None = None
    ended: float | None = None
    deadline: float | None = None  # none: a tree lasts as long as its tasks
    rows: dict[StepKey, StepRow] = msgspec.field(default_factory=dict)
    running: int = 0  # its rows whose child has not ended (known here, not kept)
    root_ended: str | None = None  # the root's status once it ended
    unsaved: list[StepRow] = msgspec.field(default_factory=list)  # ended here, kept at its end

    def record(self) -> CallRecord:
        return CallRecord(self.call_id, KIND, self.agent, b"",
                          {"reach": self.reach, "by": self.by}, self.status, self.created,
                          self.tenant, self.ended)

    def end(self) -> None:
        """Its root and every child ended: it ends as its root did (a root lost: failed)."""
        root = self.root_ended or "failed"
        self.status = root if root in CALL_ENDED else "failed"
        self.ended = time.time()

    @classmethod
    def kept(cls, rec: CallRecord) -> SpawnTree:
        given = rec.input if isinstance(rec.input, dict) else {}
        tree = cls(rec.call_id, rec.name, rec.tenant, rec.created, given.get("reach"),
                   given.get("by"), rows=rec.rows)
        tree.running = sum(1 for r in rec.rows.values() if r.status == "running")
        return tree


class Unkept(MemoryStore):
    """Trees in memory (no task journal): an ended one forgotten, read by no one."""

    async def save_call(self, record: CallRecord) -> None:
        if record.status == "running":
            return await super().save_call(record)
        kept = self.calls.pop(record.call_id, None)
        for step, item in kept.rows if kept is not None else ():
            self.outputs.pop((record.call_id, step, item), None)
        return None


class Place(NamedTuple):
    """A task's place in its tree: the tree, its lineage, and its row (None: the root)."""

    tree: SpawnTree
    lineage: Lineage
    step: StepKey | None


class SpawnTrees:
    """Every running tree and the place of each of its tasks in it."""

    def __init__(self, store: DurableStore | None = None) -> None:
        # (a daemon without a task journal keeps its trees in memory: keep_in)
        self.steps = StepEngine(store or Unkept(), self)
        self.places: dict[str, Place] = {}  # every task of a running tree
        self.fanned: dict[str, int] = {}  # a parent's children (of running parents)
        # a lineage's children's, shared (as many as depths times limited tokens)
        self._shared: dict[Lineage, Lineage] = {}
        self._planting: dict[str, asyncio.Future[None]] = {}  # trees being kept
        self._ending: list[SpawnTree] = []  # trees whose end is to be kept
        self._ender: asyncio.Future[None] | None = None

    # -- what the engine asks -------------------------------------------------------------
    def holds(self) -> bool:
        """Whether a task's end may concern a tree (`finished` has something to do)."""
        return bool(self.places or self.fanned or self._planting)

    def cancel_task(self, task_id: str) -> None:
        """A tree is never abandoned (its children outlive a parent that fails): no
        step of it is ended by the engine, so no task is cancelled from here."""

    # -- lineage --------------------------------------------------------------------------
    def lineage(self, task_id: str) -> Lineage:
        place = self.places.get(task_id)
        return place.lineage if place is not None else Lineage(0)

    def deeper(self, mine: Lineage) -> Lineage:
        """A child's lineage: one object for every child of the same lineage."""
        child = self._shared.get(mine)
        if child is None:
            child = self._shared[mine] = mine._replace(depth=mine.depth + 1)
        return child

    # -- a tree's rows --------------------------------------------------------------------
    def tree(self, task_id: str, agent: str, tenant: str | None,
             lineage: Lineage) -> SpawnTree:
        """The task's tree; a task in none is the root of a new one, being kept (`planted`)."""
        place = self.places.get(task_id)
        if place is not None:
            return place.tree
        tree = SpawnTree(task_id, agent, tenant, time.time(), lineage.reach, lineage.by)
        self.places[task_id] = Place(tree, lineage, None)
        planting = asyncio.ensure_future(self.steps.store.save_call(tree.record()))
        planting.add_done_callback(_told)
        self._planting[task_id] = planting
        return tree

    async def planted(self, tree: SpawnTree) -> None:
        """The tree's call kept before any of its rows (a row of an unkept call is read by none)."""
        planting = self._planting.get(tree.call_id)
        if planting is not None:
            await asyncio.shield(planting)
            if planting.done() and planting.exception() is None:
                self._planting.pop(tree.call_id, None)

    def row(self, parent_id: str, key: str) -> StepRow | None:
        place = self.places.get(parent_id)
        return place.tree.rows.get(step_of(parent_id, key)) if place is not None else None

    async def begin(self, tree: SpawnTree, parent_id: str, key: str,
                    child: Lineage) -> StepRow:
        """The spawn's row, made and kept with its child's id when it is new."""
        step = step_of(parent_id, key)
        made = step not in tree.rows
        row = await self.steps.begin(tree, step)
        assert row.task_id is not None
        if made:
            tree.running += 1
            self.fanned[parent_id] = self.fanned.get(parent_id, 0) + 1
        self.places[row.task_id] = Place(tree, child, step)
        return row

    def child_of(self, parent_id: str, task_id: str) -> bool:
        place = self.places.get(task_id)
        return place is not None and place.step is not None and parent_of(place.step) == parent_id

    # -- ends -----------------------------------------------------------------------------
    def finished(self, task_id: str, status: str, error: str | None) -> None:
        """A task of a tree ended: its row ended here, kept with the tree's end; its place
        kept until then (a parent waits for a child that has ended)."""
        self.fanned.pop(task_id, None)
        self._planting.pop(task_id, None)
        place = self.places.get(task_id)
        if place is None:
            return
        tree = place.tree
        if place.step is None:
            if tree.root_ended is not None:
                return
            tree.root_ended = status
        else:
            row = tree.rows.get(place.step)
            if row is None or row.status != "running":
                return
            ended = StepRow(row.step, row.item, status, row.task_id, row.started, time.time(),
                            None, error)
            tree.rows[place.step] = ended
            tree.unsaved.append(ended)
            tree.running -= 1
        if tree.root_ended is not None and tree.running == 0:
            self._ending.append(tree)
            if self._ender is None or self._ender.done():
                self._ender = asyncio.ensure_future(self._end_trees())

    def ended(self, task_id: str) -> bool:
        """Whether the task has ended in its tree (or is in none)."""
        place = self.places.get(task_id)
        if place is None:
            return True
        if place.step is None:
            return place.tree.root_ended is not None
        row = place.tree.rows.get(place.step)
        return row is None or row.status != "running"

    async def _end_trees(self) -> None:
        while self._ending:
            trees, self._ending = self._ending, []
            for tree in trees:
                try:
                    await self._end(tree)
                except Exception as exc:  # the store failed: read back at the next start
                    log.warning("spawn tree %s: its end was not kept (%s)", tree.call_id, exc)

    async def _end(self, tree: SpawnTree) -> None:
        if tree.unsaved:
            await self.steps.save(tree, tree.unsaved)
            tree.unsaved = []
        tree.end()
        await self.steps.store.save_call(tree.record())
        self.places.pop(tree.call_id, None)
        for r in tree.rows.values():
            if r.task_id is not None:
                self.places.pop(r.task_id, None)

    async def close(self) -> None:
        if self._ender is not None:
            await asyncio.gather(self._ender, return_exceptions=True)

    # -- after a restart ------------------------------------------------------------------
    def keep_in(self, store: DurableStore) -> None:
        """The daemon's store (before any task is accepted): its running trees read back."""
        self.steps.store = store
        for rec in store.unfinished(KIND):
            tree = SpawnTree.kept(rec)
            self.places[tree.call_id] = Place(tree, Lineage(0, tree.reach, tree.by), None)
            under: dict[str, list[StepRow]] = {}
            for r in tree.rows.values():
                under.setdefault(parent_of((r.step, r.item)), []).append(r)
            for parent_id, rows in under.items():
                self.fanned[parent_id] = len(rows)
            self._place(tree, tree.call_id, under)

    def _place(self, tree: SpawnTree, parent_id: str, under: dict[str, list[StepRow]]) -> None:
        """Each child under a placed parent, its lineage one deeper."""
        todo = [parent_id]
        while todo:
            parent = todo.pop()
            lineage = self.deeper(self.places[parent].lineage)
            for r in under.get(parent, []):
                if r.task_id is None or r.task_id in self.places:
                    continue
                self.places[r.task_id] = Place(tree, lineage, (r.step, r.item))
                todo.append(r.task_id)


def _told(planting: asyncio.Future[None]) -> None:
    if not planting.cancelled() and planting.exception() is not None:
        log.warning("spawn tree not kept: %s", planting.exception())
