"""Code-first orchestration: a running task starts tasks of other agents (`task/spawn`)
and waits for their outcomes (`task/wait`) (docs/workflows.md#spawn).

Written once over the parent's home (`home.spawns`), where each spawn's row is kept with
its child: the parent's next attempt spawning under the same key is answered that child.
"""

from __future__ import annotations

import contextvars
import secrets
from collections.abc import Container
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from ... import jsonrpc
from ...jsonrpc import RpcError
from ...mcp.pool import allowed
from ...text import plural
from ...tracecontext import current_context
from ...workerproto import TaskSpawnParams, TaskWaitParams
from ..workercalls import on_request
from .admission import admit
from .call import Call
from .interceptors import AGENT_TOOL
from .model import SpawnOrder, Task
from .nodespawns import NodeSpawns, TreeEngine
from .payload import encode_input
from .queue import Queue
from .spawntree import Lineage
from .steps import TaskSteps
from .worker import WorkerMethods

if TYPE_CHECKING:
    from ..labels import Labels
    from ..replica import Replica

# (who, glob) of a caller a glob limits the agents of (a token's `--agents`), set by the
# daemon's Dispatcher around its call: its tasks, and every task they spawn, reach no agent
# outside the glob
REACH: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "corral_reach", default=None)
SPAWN_STEP = "spawn:"  # a replayed spawn's name, as a replayed step's span shows it


class Engine(TreeEngine, Protocol):
    """What spawning needs of the TaskManager."""

    worker: WorkerMethods
    queue: Queue
    steps: TaskSteps
    labelled: Labels


class Spawns:
    """The handlers of `task/spawn` and `task/wait`, and the engine's own spawn store (`node`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.node = NodeSpawns(engine)
        self.spawned = 0  # children submitted
        self.replayed = 0  # spawns answered from where they are kept
        on_request(engine.sup.worker_methods, TaskSpawnParams, self.on_spawn)
        on_request(engine.sup.worker_methods, TaskWaitParams, self.on_wait)

    # -- task/spawn -----------------------------------------------------------------------
    def on_spawn(self, r: Replica, p: TaskSpawnParams) -> Any:
        return self._spawn(self.engine.worker.running_on(r, "task/spawn", p.task_id), r, p,
                           judged=False)

    def _replayed(self, parent: Task, p: TaskSpawnParams, child_id: str) -> dict[str, Any]:
        self.replayed += 1
        if parent.attempt > 1:  # (a key asked twice in one attempt is no replay)
            self.engine.steps.count_replay(parent, "step", SPAWN_STEP + p.key)
        return {"child": child_id, "replayed": True}

    async def _spawn(self, parent: Task, r: Replica, p: TaskSpawnParams, judged: bool = True
                     ) -> dict[str, Any]:
        """Checked where the parent runs; `max_children` counted where its spawns are.
        `judged`: as a call of `corral__AGENT` already (`as_tool`'s), else here."""
        kept = parent.home.spawns
        had, child = await kept.placed(parent, p.key)
        if had is not None:
            return self._replayed(parent, p, had)
        spec = r.spec
        if not await kept.serves(p.agent, spec.tenant):
            raise jsonrpc.not_found("agent", p.agent)
        self._bounds(parent, r, p, child)
        if not judged:
            p = await self._judge(parent, r, p)
        raw = encode_input(p.input)  # (the engine's: a small input is kept at its size)
        engine = self.engine
        agent = engine.sup.agents.get(p.agent)
        if agent is not None and agent.spec.tenant != spec.tenant:
            agent = None  # another tenant's of the name: its quotas are not the child's
        timeout = admit(agent, len(raw), p.timeout, tenancy=engine.tenancy,
                        depth=engine.queue.depth)
        fan = getattr(spec, "max_children", 0)
        # what the parent read, as its call of `corral__AGENT` kept it (approvals.py)
        labels = await parent.home.labels.read(parent.id)
        got = await kept.spawn(parent, SpawnOrder(
            p.agent, spec.tenant, p.key, raw, timeout, p.retries, child, fan, labels,
            *current_context()))
        if got.child is None:
            raise RpcError(jsonrpc.REFUSED,
                           f"task/spawn: fan-out exceeded: task {parent.id} has spawned "
                           f"{plural(got.children, 'child', 'children')} (max_children "
                           f"{fan} of agent {parent.agent})")
        if got.had:  # (the key's row came first: another attempt's, or a child kept unsubmitted)
            return self._replayed(parent, p, got.child)
        if labels:  # handed on, kept in its home before its first call is made
            await parent.home.labels.mark(got.child, labels)
        self.spawned += 1
        return {"child": got.child, "replayed": False}

    def _bounds(self, parent: Task, r: Replica, p: TaskSpawnParams, child: Lineage) -> None:
        """The bounds of a spawn but its parent's fan-out."""
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

    async def _judge(self, parent: Task, r: Replica, p: TaskSpawnParams) -> TaskSpawnParams:
        """A spawn its tree did not answer, as its task's call of `corral__AGENT` (the tool
        router's interceptors: policy rules, `approve`, taint; the tool budget): the spawn
        to make (its input as a person approved it), else refused as that call would be."""
        got = await self.engine.worker.chain.live(Call(
            r, AGENT_TOOL + p.agent, p.input, parent, p.key, spawn=True))
        if got.get("isError"):  # the tool's error its call would read
            raise RpcError(jsonrpc.REFUSED, f"task/spawn: {got['content'][0]['text']}")
        return msgspec.structs.replace(p, input=got["input"])

    # -- an agent called as a tool ----------------------------------------------------------
    async def as_tool(self, call: Call) -> dict[str, Any]:
        """A running task's call of an agent as a tool (`corral__AGENT`): its spawn under
        the call's key (a retry's same call gets the same child), then its wait."""
        parent = call.task
        assert parent is not None  # (a call of no task is the gateway's to refuse)
        if call.spawn:  # a spawn's judgement passed (`_judge`): it makes the spawn
            return {"input": call.arguments}
        key = call.key if call.key is not None else secrets.token_hex(16)
        got = await self._spawn(parent, call.agent, TaskSpawnParams(
            task_id=parent.id, agent=call.name.removeprefix(AGENT_TOOL), key=key,
            input=call.arguments))
        child = got["child"]
        end = await parent.home.spawns.outcome(child)
        await self.engine.labelled.read_from(parent, (child,))  # (what it read: labels.py)
        output = end.get("output")
        if isinstance(output, msgspec.Raw):
            output = msgspec.json.decode(output)
        ok = end["status"] == "succeeded"
        text = msgspec.json.encode(output).decode() if ok else (
            f"task {child} {end['status']}: {end.get('error') or 'no output'}")
        result: dict[str, Any] = {"content": [{"type": "text", "text": text}],
                                  "isError": not ok, "_meta": {"corral/task": child}}
        if ok and isinstance(output, dict):
            result["structuredContent"] = output
        return result

    # -- task/wait ------------------------------------------------------------------------
    def on_wait(self, r: Replica, p: TaskWaitParams) -> Any:
        return self._wait(self.engine.worker.running_on(r, "task/wait", p.task_id),
                          p.children)

    async def _wait(self, parent: Task, children: list[str]) -> dict[str, Any]:
        kept = parent.home.spawns
        _named(parent, children, await kept.children(parent))
        # one after another: at once, a wait of a thousand children would hold a thousand reads
        results = [await kept.outcome(c) for c in children]
        await self.engine.labelled.read_from(parent, children)  # (what it read: labels.py)
        return {"results": results}

    def stats(self) -> dict[str, int]:
        return {"spawned": self.spawned, "replayed": self.replayed}


def _named(parent: Task, children: list[str], mine: Container[str]) -> None:
    named: set[str] = set()
    for c in children:
        if c not in mine:
            raise RpcError(jsonrpc.INVALID_PARAMS,
                           f"task/wait: task {c} is not a child of task {parent.id}")
        if c in named:
            # each name is a wait held and the child's output copied into the answer: a
            # line of one id repeated would make an answer a thousand times the line
            raise RpcError(jsonrpc.INVALID_PARAMS,
                           f"task/wait: task {c} is named more than once")
        named.add(c)
