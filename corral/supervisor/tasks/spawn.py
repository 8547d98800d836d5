"""Code-first orchestration: a running task starts tasks of other agents (`task/spawn`)
and waits for their outcomes (`task/wait`), from a worker in any language
(docs/protocol.md, docs/workflows.md#spawn).

Each spawn is a named step of its parent (`spawn:KEY`, steps.py), journaled with the
child's id *before* the child is submitted: a resumed attempt of the parent (its worker
killed, the daemon restarted) that spawns under the same key is answered with that child,
never a second one; a child the engine never had (the daemon stopped between the two
writes) is submitted then under the journaled id. A child is a task of an agent the
parent's agent lists in `spawns`, of the same tenant (another tenant's agent is no agent
to it), within the reach of the token that submitted the tree's root (REACH), within
`max_spawn_depth` and `max_children` per parent. A child's depth and reach are kept in the
step journal on its own rows (LINEAGE), so a restart does not forget them.
"""

from __future__ import annotations

import asyncio
import contextvars
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

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
from .host import TaskHost
from .ids import ANY, new_id
from .model import Task, TaskFinished
from .stepjournal import NAMED_SEQ, Step
from .steps import RESERVED, TaskSteps
from .taskmachine import TERMINAL
from .worker import WorkerMethods

if TYPE_CHECKING:
    from ..quotas import Tenancy
    from ..replica import Replica

# a cluster task's children would be this node's tasks: another node resuming the parent
# after this one died would not find them, and would start them again
CLUSTER_SPAWN = ("task/spawn: a cluster task cannot spawn children yet (they would be "
                 "this node's tasks, not found by the node that resumes it): submit the "
                 "orchestrator with local = true (corral run --local)")
# who submits tasks now, when a glob limits the agents they reach (a token's `--agents`),
# as (who, glob): set by the daemon's Dispatcher around a limited caller's call; the tasks
# submitted under it, and every task they spawn, reach no agent outside the glob
REACH: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "corral_reach", default=None)
PREFIX = "spawn:"  # the named steps of spawns
LINEAGE = "corral/lineage"  # a spawned child's own row: its parent and depth
# names no worker may write (steps.py refuses them in a worker's step/put)
assert PREFIX.startswith(RESERVED) and LINEAGE.startswith(RESERVED)


class Engine(Protocol):
    """What spawning needs of the TaskManager."""

    sup: TaskHost
    stream: Stream
    tenancy: Tenancy | None
    active: dict[str, Task]
    steps: TaskSteps
    worker: WorkerMethods

    def submit(self, agent_name: str, task_input: Any, options: TaskOptions = ..., *,
               task_id: str | None = None) -> Task: ...

    async def committed(self) -> None: ...

    async def info(self, task_id: str, *, wait: bool = False) -> TaskInfo: ...


class Lineage(NamedTuple):
    """How deep a task is among spawns (0: nobody spawned it), and what limits its tree."""

    depth: int
    reach: str | None = None  # a glob of the agents it may spawn; None: any
    by: str | None = None  # who set the reach ("token NAME")


class Spawns:
    """The handlers of `task/spawn` and `task/wait` over the engine's tasks."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # a running parent's children by their spawn's key, in the order spawned
        self.children: dict[str, dict[str, str]] = {}
        self.lineage: dict[str, Lineage] = {}  # of unfinished tasks, as known
        self._reading: dict[str, asyncio.Future[Lineage]] = {}  # lineage reads under way
        # a lineage's children's, shared (as many as depths times limited tokens)
        self._shared: dict[Lineage, Lineage] = {}
        self.spawned = 0  # children submitted
        self.replayed = 0  # spawns answered from the journal
        engine.stream.subscribe(self._finished, TaskFinished)
        on_request(engine.sup.worker_methods, TaskSpawnParams, self.on_spawn)
        on_request(engine.sup.worker_methods, TaskWaitParams, self.on_wait)

    def _finished(self, e: TaskFinished) -> None:
        self.children.pop(e.task.id, None)
        self.lineage.pop(e.task.id, None)

    def limit(self, task: Task, who: str, reach: str) -> None:
        """A task submitted by a caller limited to the agents `reach`: so is its tree."""
        self._keep(task.id, Lineage(0, reach, who))

    def _keep(self, task_id: str, lineage: Lineage) -> None:
        self.lineage[task_id] = lineage
        journal = self.engine.steps.journal
        if journal is not None:
            # for when it spawns after a restart (committed with its task journal row, or
            # the next steps: a crash between loses the bound of that one task)
            journal.put(Step(task_id, NAMED_SEQ, LINEAGE, 1, b"", msgspec.json.encode(
                {k: v for k, v in lineage._asdict().items() if v is not None})))

    # -- task/spawn -----------------------------------------------------------------------
    def on_spawn(self, r: Replica, p: TaskSpawnParams) -> Any:
        parent = self.engine.worker.running_on(r, "task/spawn", p.task_id)
        if not parent.journal_here:
            raise RpcError(jsonrpc.REFUSED, CLUSTER_SPAWN)
        return self._spawn(parent, r, p)

    async def _spawn(self, parent: Task, r: Replica, p: TaskSpawnParams) -> dict[str, Any]:
        known = self.children.get(parent.id, {}).get(p.key)
        if known is not None:  # the same key again (a retry here): the same child
            self.replayed += 1
            return {"child": known, "replayed": True}
        steps = self.engine.steps
        name = PREFIX + p.key
        got = await steps.get(parent, name)
        if got.get("found"):
            old = msgspec.json.decode(got["result"])
            child_id = old["child"] if isinstance(old, dict) else None
            # (corral's own id, written by the branch below: a step a worker could not
            # write, and an id checked again all the same before a task is made of it)
            if isinstance(child_id, str) and ANY.fullmatch(child_id):
                await self._ensure(child_id, parent, r, p,
                                   self._deeper(await self._lineage_of(parent)))
                self._adopt(parent.id, p.key, child_id)
                self.replayed += 1
                return {"child": child_id, "replayed": True}
        child = self._deeper(await self._lineage_of(parent))
        self._check(parent, r, p, child)
        child_id = new_id()
        # the child's id is the parent's before the child exists (module docstring)
        await steps.put(parent, r, name, {"child": child_id, "agent": p.agent})
        await self._submit(child_id, p, child)
        self._adopt(parent.id, p.key, child_id)
        self.spawned += 1
        return {"child": child_id, "replayed": False}

    def _deeper(self, mine: Lineage) -> Lineage:
        """A child's lineage: one object for every child of the same lineage (10,000
        pending children hold one, not 10,000)."""
        child = self._shared.get(mine)
        if child is None:
            child = self._shared[mine] = mine._replace(depth=mine.depth + 1)
        return child

    def _check(self, parent: Task, r: Replica, p: TaskSpawnParams, child: Lineage) -> None:
        spec = r.spec
        engine = self.engine
        tenancy = engine.tenancy
        if (p.agent not in engine.sup.agents or (tenancy is not None
                and tenancy.tenant_of(p.agent) != tenancy.tenant_of(parent.agent))):
            raise jsonrpc.not_found("agent", p.agent)
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
        fan = getattr(spec, "max_children", 0)
        had = len(self.children.get(parent.id, ()))
        if had >= fan:
            raise RpcError(jsonrpc.REFUSED,
                           f"task/spawn: fan-out exceeded: task {parent.id} has spawned "
                           f"{plural(had, 'child', 'children')} (max_children {fan} of "
                           f"agent {parent.agent})")

    def _adopt(self, parent_id: str, key: str, child_id: str) -> None:
        self.children.setdefault(parent_id, {})[key] = child_id

    async def _ensure(self, child_id: str, parent: Task, r: Replica, p: TaskSpawnParams,
                      child: Lineage) -> None:
        """The child submitted under its id, unless the engine has (or had) it: checked
        as a new spawn is (its agent, depth and fan-out), as of now."""
        engine = self.engine
        if child_id in engine.active:
            self.lineage[child_id] = child
            return
        try:
            await engine.info(child_id)
            return
        except RpcError as exc:
            if exc.code != jsonrpc.NOT_FOUND:
                raise
        self._check(parent, r, p, child)
        await self._submit(child_id, p, child)

    async def _submit(self, child_id: str, p: TaskSpawnParams, child: Lineage) -> None:
        engine = self.engine
        engine.submit(p.agent, p.input, step_options(p.timeout, p.retries),
                      task_id=child_id)
        self._keep(child_id, child)
        await engine.committed()

    async def _lineage_of(self, task: Task) -> Lineage:
        """Nobody spawned it and nobody limited it; or its lineage from memory, else from
        its row (read once per task, however many spawns ask at once)."""
        known = self.lineage.get(task.id)
        if known is not None:
            return known
        reading = self._reading.get(task.id)
        if reading is None:
            reading = self._reading[task.id] = asyncio.ensure_future(self._read(task))
        try:
            return await asyncio.shield(reading)
        finally:
            if reading.done():
                self._reading.pop(task.id, None)

    async def _read(self, task: Task) -> Lineage:
        found = Lineage(0)
        journal = self.engine.steps.journal
        if journal is not None and task.journal_here:
            for step in await journal.history(task.id):
                if step.seq == NAMED_SEQ and step.name == LINEAGE and step.body is not None:
                    found = Lineage(**msgspec.json.decode(step.body, type=dict[str, Any]))
        self.lineage[task.id] = found
        return found

    # -- task/wait ------------------------------------------------------------------------
    def on_wait(self, r: Replica, p: TaskWaitParams) -> Any:
        parent = self.engine.worker.running_on(r, "task/wait", p.task_id)
        kids = set(self.children.get(parent.id, {}).values())
        named: set[str] = set()
        for c in p.children:
            if c not in kids:
                raise RpcError(jsonrpc.INVALID_PARAMS,
                               f"task/wait: task {c} is not a child of task {parent.id}")
            if c in named:
                # each name is a wait held and the child's output copied into the answer:
                # a line of one id repeated would make an answer a thousand times the line
                raise RpcError(jsonrpc.INVALID_PARAMS,
                               f"task/wait: task {c} is named more than once")
            named.add(c)
        return self._wait(p.children)

    async def _wait(self, children: list[str]) -> dict[str, Any]:
        infos = await asyncio.gather(*(self._outcome(c) for c in children))
        return {"results": infos}

    async def _outcome(self, child_id: str) -> dict[str, Any]:
        engine = self.engine
        task = engine.active.get(child_id)
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
