"""One chain for every door's tool call (DESIGN section 28, docs/architecture.md "One
door per call"): a door reads its wire into a `Call` (call.py) and gives it to `enter`;
what comes back is the call's outcome, which the door writes in its wire.

The links, in their order:
- identity and view: the replica's allowlist (a team's leader's members included) and,
  for an agent called as a tool, its `spawns`; or a gateway client's that is no agent's
  (`Call.client`: the operator, a token's holder), with its tenant's view; refused in
  one form (`not_allowed`) whoever calls, at whatever door;
- the owner: a call of no task is its replica's, and, where the replica runs one task,
  that task's (`sole_task`), so that every link after sees the task;
- journal: a task's call is its step (steps.py), answered from the journal on a retry
  (this link, the budget and the labels need a task or a replica: a client's call,
  having neither, passes none of them);
- budget: a task's call made live counts in its max_tool_calls_per_task (a call of no
  task counts in its replica's incarnation's, approvals.gate);
- the interceptors (startup.py `interceptors`): trace, then policy rules, labels
  (taint) and approval (approvals.py), then pins (pingate.py), then a team's members;
- dispatch: an agent as a tool is its spawn (or the door's own submission, at
  /mcp/corral of no task), any other tool the engine's pool.
Around them all, audit (daemon/audit.py `AuditLink`, an interceptor's `intercept_call`):
one row a call whatever its door and whichever link answered it. The gateway's client
limits are its door's.

A skill read (`call.skill`, at /mcp and /mcp/NAME; decision 1691) passes identity and
view (its SERVER__SKILL as an allowlist admits it), the interceptors'
`intercept_skill_read` (trace), and the door's read; audit around it as around every
call. It is of no task and asks nothing of a person: the journal, budget, rules, labels,
approval and pins are a tool call's.

A model call (its door the model gateway, `call.model` its request) passes its own
links: its view (modelview.py), the journal, then the interceptors' `intercept_model_call`
(trace, policy rules, labels and approval, budget: startup.py), then the door's dispatch
(its upstream's answer, `call.wire.made`).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from ... import jsonrpc
from ...jsonrpc import RpcError
from ...mcp.pool import allowed, no_server
from ...text import plural
from ...tracecontext import CALLER
from .call import Call
from .interceptors import AGENT_TOOL, Interceptors, TaskInterceptor, ToolPorts
from .modelview import model_in_view
from .steps import MODEL_STEP

if TYPE_CHECKING:
    from ..replica import Replica
    from .model import Task
    from .steps import TaskSteps


def not_allowed(tool: str, caller: str, allow: list[str] | None, why: str = "",
                what: str = "tool") -> RpcError:
    """The view link's refusal, in one form at every door: the tool (`what`: or the
    skill), its caller (`agent NAME`, `gateway client NAME`) and its allowlist (None:
    every tool, `why` then saying what else keeps it out)."""
    return RpcError(jsonrpc.TOOL_NOT_ALLOWED,
                    f"{what} {tool} is not allowed for {caller} (its tools allowlist: "
                    f"{['*'] if allow is None else allow}{why})")


def out_of_view(call: Call) -> RpcError | None:
    """A gateway client's refusal by its view, None when it sees the tool: its allowlist,
    and its tenant's servers judged now (an allowlist made when its session began may
    predate a server another tenant added)."""
    client = call.client
    assert client is not None
    caller = f"gateway client {client.name}"
    what = "tool" if call.skill is None else "skill"
    if client.allow is not None and not allowed(call.name, client.allow):
        return not_allowed(call.name, caller, client.allow, what=what)
    if not client.sees(call.name):  # (a client of no tenant, not the operator: default's)
        # a server its tenant does not see is none there is, in the pool's words: another
        # tenant's is not told from one that is not there (decision 1694)
        return no_server(call.name, call.name.partition("__")[0], what)
    return None


def sole_task(active: Mapping[str, Task], replica: Any) -> Task | None:
    """The task a call of `replica` that names none is: the one it runs, when it runs one
    and can run no other at once (one running beside a free slot could be joined by
    another at any moment); else None, the call its replica's."""
    if replica.tasks_running != 1 or getattr(replica.spec, "max_concurrent_tasks", 1) != 1:
        return None
    last = replica.last_task
    task = active.get(last) if last is not None else None
    return task if task is not None and task.replica is replica and task.running else None


def take_tool_call(task: Task, r: Replica) -> None:
    """A call the task makes now counts against its agent's max_tool_calls_per_task;
    TOOL_BUDGET_EXCEEDED when it has made them all."""
    budget = getattr(r.spec, "max_tool_calls_per_task", 0)
    if task.tool_calls >= budget:
        raise RpcError(jsonrpc.TOOL_BUDGET_EXCEEDED,
                       f"tool budget exceeded: task {task.id} has made "
                       f"{plural(task.tool_calls, 'tool call')} "
                       f"(max_tool_calls_per_task {budget})")
    task.tool_calls += 1


def give_back_tool_call(task: Task) -> None:
    """A call counted that is not made now (held for a person): taken again when it is."""
    task.tool_calls -= 1


class Chain:
    """The links above, over the engine's tasks in flight (`active`)."""

    def __init__(self, active: Mapping[str, Task], tools: ToolPorts,
                 interceptors: Interceptors, steps: TaskSteps,
                 agent_call: Callable[[Call], Awaitable[Any]]) -> None:
        """`agent_call`: a task's call of an agent as a tool, its spawn."""
        self.active = active
        self.tools = tools
        self.steps = steps
        self.agent_call = agent_call
        # the pool's tools behind the interceptors' (a team's leader's members, its spans)
        self.router = interceptors.compose(TaskInterceptor.intercept_tool_call, self._made)
        self.allow_of = interceptors.compose(TaskInterceptor.intercept_allowed_tools,
                                             tools.allowed)
        self.model_router = interceptors.compose(TaskInterceptor.intercept_model_call,
                                                 _dispatched)
        self.skill_router = interceptors.compose(TaskInterceptor.intercept_skill_read,
                                                 _dispatched)
        # the call's outcome (or an awaitable of it), past every link
        self.enter = interceptors.compose(TaskInterceptor.intercept_call, self._linked)

    def _linked(self, call: Call) -> Any:
        if call.model is not None:
            return self._model_call(call)
        refusal = self.refused(call)
        if refusal is not None:
            raise refusal
        if call.skill is not None:  # a skill read: its trace, then the door's read
            return self._routed(call, self.skill_router)
        r = call.replica
        if r is None:  # a gateway client's, no agent's: of no task, ever
            # (budget, journal and labels are a task's or a replica's: a client has
            # neither, so its call goes on to the interceptors as a call of no task)
            return self._routed(call)
        task = call.task
        if task is None:
            task = sole_task(self.active, r)
            if task is None:
                return self._routed(call)
            call = call._replace(task=task)
        # (a key the caller sent, /mcp/corral's, is its own: the same call sent again is
        # the same spawn, where the journal's is the call's place in the attempt)
        return self.steps.tool_call(task, r, call.name, call.arguments,
                                    lambda key: self.live(call._replace(key=call.key or key)))

    def refused(self, call: Call) -> RpcError | None:
        """The identity and view link's verdict: the caller's refusal, None when it may
        call the tool (asked by a door too, where it must know before the call what a
        tool is to its caller: the gateway's tasks extension)."""
        r = call.replica
        if r is None:
            return out_of_view(call)
        allow = self.allow_of(r)
        if not allowed(call.name, allow):
            return not_allowed(call.name, f"agent {r.name}", allow,
                               what="tool" if call.skill is None else "skill")
        if call.skill is None and call.name.startswith(AGENT_TOOL):
            # an agent called as a tool starts a task of it: one its `spawns` names
            # (decision 1690: at every door, before any other link counts or holds it);
            # the operator's own skills share the name's server, and a read starts none
            agent = call.name[len(AGENT_TOOL):]
            listed: list[str] = list(getattr(r.spec, "spawns", []))
            if not allowed(agent, listed):
                return not_allowed(call.name, f"agent {r.name}", allow,
                                   f"; its spawns list {listed} does not name agent {agent}")
        return None

    def _model_call(self, call: Call) -> Any:
        """A model call's outcome, an awaitable: a task's is its step (the same call of a
        retry known by its endpoint and its body's hash), answered from the journal on a
        retry."""
        model_in_view(call)
        task = call.task
        if task is None:
            return self.model_router(call)
        return self.steps.tool_call(task, call.agent, MODEL_STEP + call.name,
                                    call.arguments,
                                    lambda key: self.model_router(call._replace(key=key)))

    async def live(self, call: Call) -> Any:
        """A task's tool call made (not answered from its steps): counted in its budget,
        then past the interceptors (a spawn judged as its call of `corral__AGENT` enters
        here: its own journal is its spawns')."""
        task, r = call.task, call.replica
        assert task is not None and r is not None  # (a task's alone is journaled)
        take_tool_call(task, r)
        result = self._routed(call)
        return await result if inspect.isawaitable(result) else result

    def _routed(self, call: Call, router: Callable[[Call], Any] | None = None) -> Any:
        """The router's call (or `router`'s), the caller's trace context (`_meta`) set as
        its span starts."""
        route = self.router if router is None else router
        if call.meta is None:
            return route(call)
        said = CALLER.set(call.meta)
        try:
            return route(call)
        finally:
            CALLER.reset(said)

    def _made(self, call: Call) -> Any:
        """Dispatch: an agent's call is its spawn (or the door's submission), else the pool's."""
        if call.name.startswith(AGENT_TOOL):
            if call.task is not None:
                return self.agent_call(call)
            if call.wire is not None and call.wire.made is not None:
                return call.wire.made(call)
        return self.tools.call(call)


def _dispatched(call: Call) -> Any:
    """A model call made, or a skill read: the door's own (its upstream's answer, the
    skill as its server gives it, checked against its digest)."""
    assert call.wire is not None and call.wire.made is not None  # (the door's, always)
    return call.wire.made(call)
