"""Code-first orchestration: a running task starts tasks of other agents (`task/spawn`)
and waits for their outcomes (`task/wait`), from a worker in any language
(docs/protocol.md, docs/workflows.md#spawn).

A spawn tree is one durable call (spawntree.py, decision 618): each spawn a keyed step of
it (the parent's id and the spawn's key), the child's id kept *before* the child is
submitted, so a resumed attempt of the parent (its worker killed, the daemon restarted)
that spawns under the same key is answered with that child, never a second one; a child
the engine never had (the daemon stopped between the two writes) is submitted then under
the kept id. A child is a task of an agent the parent's agent lists in `spawns`, of the
same tenant (another tenant's agent is no agent to it), within the reach of the token that
submitted the tree's root (REACH, kept as the tree's input), within `max_spawn_depth` and
`max_children` per parent; a child's depth is its place in the tree, read back whole after
a restart.

A cluster task's spawns are kept in the cluster's Redis instead (its `spawns_kept`,
corral.cluster.clusterspawns, decision 740): its children cluster tasks, run on any node,
each spawn's row kept with its child's submit in one script fenced by the parent's claim,
so that the parent's attempt on another node, after its node died, spawns under the same
key that same child; the bounds are the same, `max_children` counted where the rows are.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from ... import jsonrpc
from ...jsonrpc import RpcError
from ...mcp.pool import allowed
from ...taskoptions import TaskOptions, step_options
from ...taskviews import TaskInfo
from ...text import plural
from ...workerproto import TaskSpawnParams, TaskWaitParams
from ..stream import Stream
from ..workercalls import on_request
from .admission import admit
from .host import TaskHost
from .model import SpawnOrder, SpawnsElsewhere, Task, TaskFinished
from .queue import Queue
from .spawntree import Lineage, SpawnTrees, parent_of
from .steps import TaskSteps
from .taskmachine import TERMINAL
from .worker import WorkerMethods

if TYPE_CHECKING:
    from ..durable.store import DurableStore
    from ..quotas import Tenancy
    from ..replica import Replica

# who submits tasks now, when a glob limits the agents they reach (a token's `--agents`),
# as (who, glob): set by the daemon's Dispatcher around a limited caller's call; the tasks
# submitted under it, and every task they spawn, reach no agent outside the glob
REACH: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "corral_reach", default=None)
SPAWN_STEP = "spawn:"  # a replayed spawn's name, as a replayed step's span shows it
# a task of a tree that no engine has: kept but never submitted (the process stopped
# between the two writes), or pruned since
NOT_KEPT = "no task of this id is kept (never submitted, or pruned)"


class Engine(Protocol):
    """What spawning needs of the TaskManager."""

    sup: TaskHost
    stream: Stream
    tenancy: Tenancy | None
    worker: WorkerMethods
    queue: Queue
    steps: TaskSteps

    def submit(self, agent_name: str, task_input: Any, options: TaskOptions = ..., *,
               task_id: str | None = None) -> Task: ...

    async def committed(self) -> None: ...

    async def info(self, task_id: str, *, wait: bool = False) -> TaskInfo: ...

    def holds(self, task_id: str) -> bool:
        """Whether the task is unfinished here (a suspended one kept compact too)."""

    def live(self, task_id: str) -> Task | None: ...


class Spawns:
    """The handlers of `task/spawn` and `task/wait` over the engine's tasks."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.trees = SpawnTrees()
        self.spawned = 0  # children submitted
        self.replayed = 0  # spawns answered from the tree
        self._recovering: asyncio.Future[None] | None = None
        # told of a task's end while a tree is held here (`_held`)
        self._ends = engine.stream.subscribe(self._finished, TaskFinished, listening=False)
        on_request(engine.sup.worker_methods, TaskSpawnParams, self.on_spawn)
        on_request(engine.sup.worker_methods, TaskWaitParams, self.on_wait)

    def _finished(self, e: TaskFinished) -> None:
        t = e.task
        self.trees.finished(t.id, str(t.status), t.error.message if t.error else None)
        if not self.trees.holds():
            self.engine.stream.listen(self._ends, False)

    def _held(self) -> None:
        """The trees hold a task now: its end is to be heard."""
        self.engine.stream.listen(self._ends)

    def limit(self, task: Task, who: str, reach: str) -> None:
        """A task submitted by a caller limited to the agents `reach`: so is its tree
        (kept with its task journal row, or the next commit: a crash between loses the
        bound of that one task)."""
        self.trees.tree(task.id, task.agent, task.tenant, Lineage(0, reach, who))
        self._held()

    # -- the daemon's store ---------------------------------------------------------------
    def keep_in(self, store: DurableStore) -> None:
        """The daemon's store, before any task is accepted: the running trees read back."""
        self.trees.keep_in(store)
        if self.trees.holds():
            self._held()

    def recover(self) -> None:
        """Once the task journal's tasks are back: a task of a tree that ended while no
        daemon ran (or whose end was not kept) ended in its tree now; a child no engine
        ever had (the process stopped between its row and its submission) ended lost
        when its parent has ended too (no attempt will ask for it again)."""
        self._recovering = asyncio.ensure_future(self._recover())

    async def _recover(self) -> None:
        engine = self.engine
        for task_id, place in list(self.trees.places.items()):
            if engine.holds(task_id) or self.trees.ended(task_id):
                continue
            try:
                info = await engine.info(task_id)
            except RpcError as exc:
                if exc.code != jsonrpc.NOT_FOUND:
                    raise
                if place.step is None or not engine.holds(parent_of(place.step)):
                    self.trees.finished(task_id, "lost", NOT_KEPT)
                continue
            self.trees.finished(task_id, str(info.status),
                                info.error.message if info.error is not None else None)

    async def close(self) -> None:
        if self._recovering is not None:
            await asyncio.gather(self._recovering, return_exceptions=True)
        await self.trees.close()

    # -- task/spawn -----------------------------------------------------------------------
    def on_spawn(self, r: Replica, p: TaskSpawnParams) -> Any:
        parent = self.engine.worker.running_on(r, "task/spawn", p.task_id)
        if parent.spawns_kept is not None:
            return self._spawn_kept(parent, parent.spawns_kept, r, p)
        if not parent.journal_here:
            # a cluster task with no stores of its claim (one made to be given back): its
            # children made here would be no other node's to find
            raise RpcError(jsonrpc.REFUSED, f"task/spawn: task {parent.id} is the "
                                            "cluster's and its spawns are not kept here")
        return self._spawn(parent, r, p)

    def _replayed(self, parent: Task, p: TaskSpawnParams, child_id: str) -> dict[str, Any]:
        self.replayed += 1
        if parent.attempt > 1:  # (a key asked twice in one attempt is no replay)
            self.engine.steps.count_replay(parent, "step", SPAWN_STEP + p.key)
        return {"child": child_id, "replayed": True}

    async def _spawn(self, parent: Task, r: Replica, p: TaskSpawnParams) -> dict[str, Any]:
        trees = self.trees
        row = trees.row(parent.id, p.key)
        if row is not None:
            # the same key again (a retry here, or an attempt after a restart): the same
            # child, submitted now if no engine ever had it
            assert row.task_id is not None
            await self._ensure(row.task_id, parent, r, p)
            return self._replayed(parent, p, row.task_id)
        tree = trees.tree(parent.id, parent.agent, parent.tenant, Lineage(0))
        self._held()
        await trees.planted(tree)
        child = trees.deeper(trees.lineage(parent.id))
        self._check(parent, r, p, child)  # before the child's id is the tree's
        row = await trees.begin(tree, parent.id, p.key, child)
        self._held()
        assert row.task_id is not None
        await self._submit(row.task_id, p)
        self.spawned += 1
        return {"child": row.task_id, "replayed": False}

    async def _spawn_kept(self, parent: Task, kept: SpawnsElsewhere, r: Replica,
                          p: TaskSpawnParams) -> dict[str, Any]:
        """A spawn of a task whose spawns are kept elsewhere (a cluster's): checked as
        here, its agent's tenant the parent's; the row and the child kept there at once,
        where `max_children` is counted."""
        had, mine = await kept.placed(parent, p.key)
        if had is not None:
            return self._replayed(parent, p, had)
        spec = r.spec
        if not await kept.serves(p.agent, spec.tenant):
            raise jsonrpc.not_found("agent", p.agent)
        child = self.trees.deeper(mine)
        self._bounds(parent, r, p, child)
        raw = msgspec.json.encode(p.input)
        engine = self.engine
        agent = engine.sup.agents.get(p.agent)
        if agent is not None and agent.spec.tenant != spec.tenant:
            agent = None  # another tenant's of the name: its quotas are not the child's
        timeout = admit(agent, len(raw), p.timeout, tenancy=engine.tenancy,
                        depth=engine.queue.depth)
        fan = getattr(spec, "max_children", 0)
        got = await kept.spawn(parent, SpawnOrder(
            p.agent, spec.tenant, p.key, raw, timeout, p.retries, child, fan,
            agent.spec.max_queue if agent is not None else 0))
        if got.child is None:
            raise _fanned_out(parent, got.children, fan)
        if got.had:  # (the key spawned by another attempt between the read and here)
            return self._replayed(parent, p, got.child)
        self.spawned += 1
        return {"child": got.child, "replayed": False}

    def _check(self, parent: Task, r: Replica, p: TaskSpawnParams, child: Lineage) -> None:
        engine = self.engine
        tenancy = engine.tenancy
        if (p.agent not in engine.sup.agents or (tenancy is not None
                and tenancy.tenant_of(p.agent) != tenancy.tenant_of(parent.agent))):
            raise jsonrpc.not_found("agent", p.agent)
        self._bounds(parent, r, p, child)
        fan = getattr(r.spec, "max_children", 0)
        had = self.trees.fanned.get(parent.id, 0)
        if had >= fan:
            raise _fanned_out(parent, had, fan)

    def _bounds(self, parent: Task, r: Replica, p: TaskSpawnParams, child: Lineage) -> None:
        """The bounds of a spawn but its parent's fan-out: the parent's `spawns`, its
        tree's reach, `max_spawn_depth`."""
        spec = r.spec
        listed: list[str] = list(getattr(spec, "spawns", []))
        if not allowed(p.agent, listed):
            raise RpcError(jsonrpc.REFUSED,
                           f"task/spawn: agent {parent.agent} may not spawn tasks of agent "
                           f"{p.agent} (its spawns list: {listed})")
        if child.reach is not None and not fnmatchcase(p.agent, child.reach):
            # as the caller would be told: no such agent for it
            raise RpcError(jsonrpc.NOT_FOUND,
                           f"task/spawn: no agent {p.agent} within the reach of {child.by}, "
                           f"whose task this one descends from (agents {child.reach})")
        most = getattr(spec, "max_spawn_depth", 0)
        if child.depth > most:
            raise RpcError(jsonrpc.REFUSED,
                           f"task/spawn: spawn depth exceeded: a child of task {parent.id} "
                           f"would be at depth {child.depth} (max_spawn_depth {most} of "
                           f"agent {parent.agent})")

    async def _ensure(self, child_id: str, parent: Task, r: Replica,
                      p: TaskSpawnParams) -> None:
        """The child submitted under its id, unless the engine has (or had) it: checked
        as a new spawn is (its agent, depth and fan-out), as of now."""
        engine = self.engine
        if engine.holds(child_id):
            return
        try:
            await engine.info(child_id)
            return
        except RpcError as exc:
            if exc.code != jsonrpc.NOT_FOUND:
                raise
        self._check(parent, r, p, self.trees.lineage(child_id))
        await self._submit(child_id, p)

    async def _submit(self, child_id: str, p: TaskSpawnParams) -> None:
        engine = self.engine
        engine.submit(p.agent, p.input, step_options(p.timeout, p.retries),
                      task_id=child_id)
        await engine.committed()

    # -- task/wait ------------------------------------------------------------------------
    def on_wait(self, r: Replica, p: TaskWaitParams) -> Any:
        parent = self.engine.worker.running_on(r, "task/wait", p.task_id)
        if parent.spawns_kept is not None:
            return self._wait_kept(parent, parent.spawns_kept, p.children)
        _named(parent, p.children, lambda c: self.trees.child_of(parent.id, c))
        return self._wait(p.children)

    async def _wait_kept(self, parent: Task, kept: SpawnsElsewhere, children: list[str]
                         ) -> dict[str, Any]:
        mine = await kept.children(parent)
        _named(parent, children, mine.__contains__)
        # one after another: each waits for its child's end, and those that ended while
        # it waited are read at once (all at once, a wait of a thousand children would
        # hold a thousand reads)
        return {"results": [await kept.outcome(c) for c in children]}

    async def _wait(self, children: list[str]) -> dict[str, Any]:
        infos = await asyncio.gather(*(self._outcome(c) for c in children))
        return {"results": infos}

    async def _outcome(self, child_id: str) -> dict[str, Any]:
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

    def stats(self) -> dict[str, int]:
        return {"spawned": self.spawned, "replayed": self.replayed}


def _fanned_out(parent: Task, had: int, fan: int) -> RpcError:
    return RpcError(jsonrpc.REFUSED,
                    f"task/spawn: fan-out exceeded: task {parent.id} has spawned "
                    f"{plural(had, 'child', 'children')} (max_children {fan} of "
                    f"agent {parent.agent})")


def _named(parent: Task, children: list[str], child_of: Callable[[str], bool]) -> None:
    """`task/wait`'s children, each a child of the parent and named once."""
    named: set[str] = set()
    for c in children:
        if not child_of(c):
            raise RpcError(jsonrpc.INVALID_PARAMS,
                           f"task/wait: task {c} is not a child of task {parent.id}")
        if c in named:
            # each name is a wait held and the child's output copied into the answer: a
            # line of one id repeated would make an answer a thousand times the line
            raise RpcError(jsonrpc.INVALID_PARAMS,
                           f"task/wait: task {c} is named more than once")
        named.add(c)
