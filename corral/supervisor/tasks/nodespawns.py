"""The engine's own spawn store (model.SpawnStore): its spawn trees (spawntree.py), each
spawn's child's id kept *before* the child is submitted, so a resumed parent spawning under
the same key is answered that child (submitted then under the kept id if it never was)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Container
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from ... import jsonrpc
from ...jsonrpc import RpcError
from ...taskoptions import TaskOptions, step_options
from ...taskviews import TaskInfo
from ..labels import HANDED
from ..stream import Stream
from .model import SpawnOrder, SpawnReply, Task, TaskFinished
from .spawntree import Lineage, SpawnTrees, parent_of
from .taskmachine import TERMINAL

if TYPE_CHECKING:
    from ..durable.store import DurableStore
    from ..quotas import Tenancy
    from .host import TaskHost

# a tree's task no engine has (never submitted: the process stopped between the two writes)
RECORD_GONE = "no task of this id is kept (never submitted, or pruned)"


class TreeEngine(Protocol):
    """What the trees need of the TaskManager."""

    sup: TaskHost
    stream: Stream
    tenancy: Tenancy | None

    def submit(self, agent_name: str, task_input: Any, options: TaskOptions = ..., *,
               traceparent: str | None = None, tracestate: str | None = None,
               task_id: str | None = None) -> Task: ...

    def committed(self) -> Awaitable[None]: ...

    async def info(self, task_id: str, *, wait: bool = False) -> TaskInfo: ...

    def holds(self, task_id: str) -> bool: ...

    def live(self, task_id: str) -> Task | None: ...


class NodeSpawns:
    def __init__(self, engine: TreeEngine) -> None:
        self.engine = engine
        self.trees = SpawnTrees()
        self._recovering: asyncio.Future[None] | None = None
        # told of a task's end while a tree is held here (`_held`)
        self._ends = engine.stream.subscribe(self._finished, TaskFinished, listening=False)

    def _finished(self, e: TaskFinished) -> None:
        t = e.task
        self.trees.finished(t.id, str(t.status), t.error.message if t.error else None)
        if not self.trees.holds():
            self.engine.stream.listen(self._ends, False)

    def _held(self) -> None:
        self.engine.stream.listen(self._ends)

    def limit(self, task: Task, who: str, reach: str) -> None:
        """A task submitted by a caller limited to the agents `reach`: so is its tree."""
        self.trees.tree(task.id, task.agent, task.tenant, Lineage(0, reach, who))
        self._held()

    # -- the daemon's store ---------------------------------------------------------------
    def keep_in(self, store: DurableStore) -> None:
        """The daemon's store, before any task is accepted: the running trees read back."""
        self.trees.keep_in(store)
        if self.trees.holds():
            self._held()

    def recover(self) -> None:
        """Once the journal's tasks are back: a tree's task that ended while no daemon ran ends in
        its tree; a child no engine had ends lost if its parent has ended (none will ask for it)."""
        self._recovering = asyncio.ensure_future(self._recover())

    async def _recover(self) -> None:
        engine = self.engine
        for task_id, place in list(self.trees.places.items()):
            if engine.holds(task_id) or self.trees.ended(task_id):
                continue
            info = await self._had(task_id)
            if info is None:
                if place.step is None or not engine.holds(parent_of(place.step)):
                    self.trees.finished(task_id, "lost", RECORD_GONE)
                continue
            self.trees.finished(task_id, str(info.status),
                                info.error.message if info.error is not None else None)

    async def _had(self, task_id: str) -> TaskInfo | None:
        try:
            return await self.engine.info(task_id)
        except RpcError as exc:
            if exc.code != jsonrpc.NOT_FOUND:
                raise
            return None

    async def close(self) -> None:
        if self._recovering is not None:
            await asyncio.gather(self._recovering, return_exceptions=True)
        await self.trees.close()

    # -- the SpawnStore -------------------------------------------------------------------
    async def placed(self, task: Task, key: str) -> tuple[str | None, Lineage]:
        """A row whose child the engine never had is no spawn yet: `spawn` submits it."""
        trees = self.trees
        row = trees.row(task.id, key)
        if row is not None and row.task_id is not None and (
                self.engine.holds(row.task_id) or await self._had(row.task_id) is not None):
            return row.task_id, trees.lineage(row.task_id)
        return None, trees.deeper(trees.lineage(task.id))

    async def serves(self, agent: str, tenant: str) -> bool:
        a = self.engine.sup.agents.get(agent)
        return a is not None and (self.engine.tenancy is None or a.spec.tenant == tenant)

    async def spawn(self, task: Task, order: SpawnOrder) -> SpawnReply:
        trees = self.trees
        row = trees.row(task.id, order.key)
        had = row is not None
        if row is None:
            tree = trees.tree(task.id, task.agent, task.tenant, Lineage(0))
            self._held()
            await trees.planted(tree)
            fanned = trees.fanned.get(task.id, 0)
            if fanned >= order.max_children:
                return SpawnReply(None, fanned)
            row = await trees.begin(tree, task.id, order.key, order.lineage)
            self._held()
        assert row.task_id is not None
        engine = self.engine
        handed = HANDED.set(order.labels)  # (the child's from its acceptance)
        try:
            engine.submit(order.agent, msgspec.Raw(order.raw_input),
                          step_options(order.timeout, order.retries), task_id=row.task_id,
                          traceparent=order.traceparent, tracestate=order.tracestate)
        finally:
            HANDED.reset(handed)
        await engine.committed()
        return SpawnReply(row.task_id, had=had)

    async def children(self, task: Task) -> Container[str]:
        return _Children(self.trees, task.id)

    async def outcome(self, child_id: str) -> dict[str, Any]:
        engine = self.engine
        task = engine.live(child_id)
        if task is not None:
            await asyncio.shield(task.done)
        info = await engine.info(child_id)
        if info.status not in TERMINAL:  # pragma: no cover - waited for above
            info = await engine.info(child_id, wait=True)
        out: dict[str, Any] = {"task_id": child_id, "status": str(info.status),
                               "output": info.output}
        if info.error is not None:
            out["error"] = info.error.message
        return out


class _Children:
    """A parent's children as its tree places them (a lookup each, not a set made)."""

    __slots__ = ("parent", "trees")

    def __init__(self, trees: SpawnTrees, parent: str) -> None:
        self.trees = trees
        self.parent = parent

    def __contains__(self, task_id: object) -> bool:
        return isinstance(task_id, str) and self.trees.child_of(self.parent, task_id)
