"""Approvals: a task's tool calls that the policy (the agent's `approve` and its tenant's,
which the agent cannot take away) names wait for a person (docs/approvals.md); an
interceptor of the task path, so every live call passes it, a gateway client's that is
no agent's too (the rules and its tenant's policy, decision 1641).

An ask is keyed by its tool, its arguments' hash and how many such calls came before it in
the attempt, so that a retried attempt making the same calls finds the same asks.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

from ... import jsonrpc
from ...askviews import Ask, AskEnd, AskKind, AskRequest
from ...jsonrpc import RpcError
from ...mcp.pool import allowed
from ...taskviews import TaskFailure
from ..labels import HANDED, STARTER
from ..policy import PolicyGuard
from .call import Call, GatewayClient
from .chain import give_back_tool_call, take_tool_call
from .interceptors import AGENT_TOOL, StepReplay, TaskInterceptor, TaskPath, TraceStart
from .personwait import waiting
from .replicacalls import ReplicaAsk, ReplicaCalls, is_replica_owner
from .steps import CallOrdinals, args_hash

if TYPE_CHECKING:
    from ..replica import Replica
    from .model import Task


class ApprovalPolicy(NamedTuple):
    """What a replica's agent (and its tenant) say of its tasks' tool calls."""

    patterns: list[str]
    timeout: float | None
    on_deny: str
    on_timeout: str


def policy_of(r: Replica, tenant: str | None) -> ApprovalPolicy | None:
    """None when no call of the replica's tasks waits for a person."""
    own: list[str] = getattr(r.spec, "approve", [])
    held = r.host.tenant_spec(tenant) if tenant is not None else None
    if not (own or (held is not None and held.approve)):
        return None  # (most calls: no list made)
    return terms_of(r, [*own, *(held.approve if held is not None else ())])


def terms_of(r: Replica, patterns: list[str]) -> ApprovalPolicy:
    spec = r.spec
    timeout = getattr(spec, "approve_timeout", 0.0)
    return ApprovalPolicy(patterns, timeout or None, getattr(spec, "on_deny", "error"),
                          getattr(spec, "on_timeout", "error"))


def tool_error(text: str) -> dict[str, Any]:
    """A tools/call result the agent reads as the tool's error (MCP's isError)."""
    return {"content": [{"type": "text", "text": text}], "isError": True}


class Approvals(TaskInterceptor):
    """The approval policy applied to every live tool call of a task, and the policy
    rules and taint (`guard`: supervisor/policy.py's)."""

    def __init__(self, guard: PolicyGuard | None = None) -> None:
        self._path: TaskPath | None = None
        # task id -> (its attempt, how many calls of each (tool, arguments) it made)
        self._calls = CallOrdinals()
        self._guard = guard

    def bind(self, path: TaskPath) -> None:
        self._path = path

    def intercept_tool_call(self, call: Call, next: Callable[[Call], Any]) -> Any:
        r = call.replica
        if r is None:  # a gateway client's, no agent's: its rules, not a replica's budget
            return self._client_call(call, next)
        task = call.task
        if task is None:
            assert self._path is not None  # bound as the engine was made
            return self._replica_call(self._path.replica_calls, call, r, next, self._guard)
        guard = self._guard
        if guard is not None and guard.reads_labels(task):
            return self._loaded(guard, call, r, task, next)
        return self._task_call(call, r, task, next)

    async def _loaded(self, guard: PolicyGuard, call: Call, r: Replica, task: Task,
                      next: Callable[[Call], Any]) -> Any:
        """The task's first call here: its labels read from its home first (a retry's,
        after a restart or on another node; labels.py)."""
        await guard.labels.load(task, r)
        answer = self._task_call(call, r, task, next)
        return await answer if inspect.isawaitable(answer) else answer

    def _task_call(self, call: Call, r: Replica, task: Task, next: Callable[[Call], Any]
                   ) -> Any:
        # a claim of a cluster's carries no tenant: its agent's here is its (the cluster
        # routes a task to its tenant's agent)
        tenant = task.tenant if task.tenant is not None else getattr(r.spec, "tenant", None)
        policy = policy_of(r, tenant)
        guard = self._guard
        if guard is not None:
            verdict = guard.judge(task.id, r, tenant, "tool", call.name,
                                  {"arguments": call.arguments}, task)
            if verdict.effect == "deny":
                return tool_error(verdict.said(f"tool call {call.name}"))
            guard.labels.mark(r, task, ())  # (what its replica read is its)
            unkept = guard.labels.unkept(task, r)
            if unkept:  # kept before the call is made: its answer is the untrusted text
                return self._kept(task, unkept, lambda: self._made(
                    call, r, task, policy, next, verdict.rule
                    if verdict.effect == "approve" else None))
            if verdict.effect == "approve":
                return self._held(call, r, task, policy or terms_of(r, []), next,
                                  verdict.rule)
        return self._made(call, r, task, policy, next, None)

    def _made(self, call: Call, r: Replica, task: Task, policy: ApprovalPolicy | None,
              next: Callable[[Call], Any], why: str | None) -> Any:
        """`why`: the rule (or taint) holding the call, None when none does."""
        if why is not None:
            return self._held(call, r, task, policy or terms_of(r, []), next, why)
        if policy is None or not allowed(call.name, policy.patterns):
            return next(call)
        return self._held(call, r, task, policy, next)

    def _client_call(self, call: Call, next: Callable[[Call], Any]) -> Any:
        """A gateway client's call under the operator's rules and its tenant's (their
        deny, their approve, its tenant's default_deny and `approve`: decision 1641)."""
        client = call.client
        assert client is not None  # (a Call's caller is a replica or a client)
        why = ""
        if self._guard is not None:
            verdict = self._guard.judge_client(client, call.name,
                                               {"arguments": call.arguments})
            if verdict.effect == "deny":
                return tool_error(verdict.said(f"tool call {call.name}"))
            why = verdict.rule if verdict.effect == "approve" else ""
        held = client.spec.approve if client.spec is not None else []
        if not why and not (held and allowed(call.name, held)):
            return next(call)
        return self._client_held(call, client, next, why)

    async def _client_held(self, call: Call, client: GatewayClient,
                           next: Callable[[Call], Any], why: str) -> Any:
        """A client's call held for a person: its ask the call's own (withdrawn if the
        call ends first, as a pin's), with no timeout but the client's own patience."""
        assert self._path is not None  # bound as the engine was made
        with waiting():  # the person's time, not the call's (personwait.py)
            ask = await self._path.replica_calls.client_ask(call, ReplicaAsk(
                AskKind.APPROVAL, "tool", subject(call, why), None))
        decided = decide(ask, call, None, self._guard, client.name, None, client.tenant, why)
        if isinstance(decided, str):
            return tool_error(decided)
        answer = next(decided)
        return await answer if inspect.isawaitable(answer) else answer

    @staticmethod
    async def _kept(task: Task, unkept: list[tuple[str, tuple[str, ...]]],
                    then: Callable[[], Any]) -> Any:
        for key, labels in unkept:
            await task.home.labels.mark(key, labels)
        answer = then()
        return await answer if inspect.isawaitable(answer) else answer

    @staticmethod
    def _replica_call(calls: ReplicaCalls, call: Call, r: Replica,
                      next: Callable[[Call], Any], guard: PolicyGuard | None) -> Any:
        gated = gate(calls, call, r, guard)
        if isinstance(gated, dict):
            return gated
        if not isinstance(gated, Call) or call.name.startswith(AGENT_TOOL):
            return Approvals._handed(gated, r, next, guard)
        return next(gated)  # (most calls: no coroutine of this link's)

    @staticmethod
    async def _handed(gated: Call | Awaitable[Call | dict[str, Any]], r: Replica,
                      next: Callable[[Call], Any], guard: PolicyGuard | None) -> Any:
        """A call a person is asked about first (`gated` its ask, awaited), or an agent's
        called of no task, which starts a task of its own (the door's submission): what
        the replica read is handed on to it (labels.py), read as it is made."""
        if not isinstance(gated, Call):
            asked = await gated
            if isinstance(asked, dict):
                return asked
            gated = asked
        handed = HANDED.set(guard.labels.of(r, None)) if guard is not None \
            and gated.name.startswith(AGENT_TOOL) else None
        try:
            answer = next(gated)
            return await answer if inspect.isawaitable(answer) else answer
        finally:
            if handed is not None:
                HANDED.reset(handed)

    def intercept_task_end(self, task: Task, next: Callable[[Task], None]) -> None:
        self._calls.forget(task.id)
        if self._guard is not None:
            self._guard.labels.forget(task)
        next(task)

    def intercept_task_start(self, start: TraceStart, next: Callable[[TraceStart], None]
                             ) -> None:
        handed = HANDED.get()
        if handed and self._guard is not None:  # (a spawn's, an agent call's: labels.py)
            self._guard.labels.handed(start.task, handed, STARTER.get())
        next(start)

    def intercept_step_replay(self, replay: StepReplay,
                              next: Callable[[StepReplay], None]) -> None:
        # an untrusted tool's output replayed from the step journal taints as the live call did
        if replay.kind == "tool" and self._guard is not None:
            self._guard.replayed(replay.task, replay.name)
        next(replay)

    async def _held(self, call: Call, r: Replica, task: Task, policy: ApprovalPolicy,
                    next: Callable[[Call], Any], why: str = "") -> Any:
        assert self._path is not None  # bound as the engine was made
        # a held call is no call of the task's budget until it is made (its attempt may
        # be lost or suspended while it waits, and the next one make it again)
        give_back_tool_call(task)
        with waiting():  # the person's time, not the call's (personwait.py)
            ask = await self._path.ask_person(AskRequest(
                AskKind.APPROVAL, task.tenant, task.id, task.attempt, task.agent,
                # (its agent in the hash: a person's yes to one agent's spawn is none to
                # another's the task makes under the same key and input)
                f"spawn:{call.key}:{args_hash([call.name, call.arguments]).hex()}"
                if call.spawn else
                f"tool:{self._calls.key(task, call.name, call.arguments)}", subject(call, why),
                policy.timeout))
        decided = decide(ask, call, policy.timeout, self._guard, r.name, task, task.tenant,
                         why)
        if isinstance(decided, str):
            if (policy.on_timeout if ask.end is AskEnd.TIMED_OUT else policy.on_deny) == "fail":
                self._path.fail_task(task, TaskFailure(jsonrpc.TASK_FAILED, decided))
                raise RpcError(jsonrpc.TASK_FAILED, decided)
            return tool_error(decided)
        take_tool_call(task, r)
        answer = next(decided)
        return await answer if inspect.isawaitable(answer) else answer


def gate(calls: ReplicaCalls, call: Call, r: Replica, guard: PolicyGuard | None = None
         ) -> Call | dict[str, Any] | Awaitable[Call | dict[str, Any]]:
    """A replica's call of no task under its agent's and tenant's policy, counted in its
    incarnation's tool budget, held for a person when `approve` or a rule names it: the call
    to make, or the tool error the caller reads (RpcError when the policy says `fail`), or,
    held, an awaitable of either."""
    tenant = getattr(r.spec, "tenant", None)
    why = ""
    if guard is not None:
        verdict = guard.judge(partial(calls.owner_of, r), r, tenant, "tool", call.name,
                              {"arguments": call.arguments})
        if verdict.effect == "deny":
            return tool_error(verdict.said(f"tool call {call.name}"))
        why = verdict.rule if verdict.effect == "approve" else ""
    calls.take_tool_call(r)
    policy = policy_of(r, tenant)
    if why:  # a policy rule's, or taint's (supervisor/policy.py)
        policy = policy or terms_of(r, [])
    elif policy is None or not allowed(call.name, policy.patterns):
        return call
    calls.give_back_tool_call(r)  # (held: counted once it is made)
    return _asked(calls, call, r, guard, tenant, policy, why)


async def _asked(calls: ReplicaCalls, call: Call, r: Replica, guard: PolicyGuard | None,
                 tenant: str | None, policy: ApprovalPolicy, why: str
                 ) -> Call | dict[str, Any]:
    """A replica's call held: the person's answer, as `gate`'s."""
    with waiting():  # the person's time, not the call's (personwait.py)
        ask = await calls.ask(r, ReplicaAsk(
            AskKind.APPROVAL, "tool", subject(call, why), policy.timeout))
    decided = decide(ask, call, policy.timeout, guard, r.name, None, tenant, why)
    if isinstance(decided, str):
        if (policy.on_timeout if ask.end is AskEnd.TIMED_OUT else policy.on_deny) == "fail":
            raise RpcError(jsonrpc.TOOL_NOT_ALLOWED, decided)
        return tool_error(decided)
    calls.take_tool_call(r)
    return decided


def decide(ask: Ask, call: Call, timeout: float | None, guard: PolicyGuard | None,
           who: str, task: Task | None, tenant: str | None, why: str) -> Call | str:
    """A held tool call once its ask ended: the call to make (its arguments as the
    person edited them), or the words of its refusal, told to `guard`; RpcError when
    the ask was withdrawn (its caller gone)."""
    if ask.end is AskEnd.APPROVED:
        edited = ask.data.get("arguments") if isinstance(ask.data, dict) else None
        return call if edited is None else call._replace(arguments=edited)
    said = not_approved(ask, f"tool call {call.name}", timeout)
    if ask.end is AskEnd.WITHDRAWN:
        raise RpcError(jsonrpc.REQUEST_CANCELLED, said)
    if guard is not None:
        guard.not_approved(who, task, tenant, call.name, why, ask.end is AskEnd.TIMED_OUT)
    return said


def subject(call: Call, why: str) -> dict[str, Any]:
    """What a person is shown of a held call (`why`: the policy rule or taint holding it)."""
    shown: dict[str, Any] = {"tool": call.name, "arguments": call.arguments}
    if why:
        shown["policy"] = why
    return shown


def not_approved(ask: Ask, call: str, timeout: float | None) -> str:
    """What the agent (or the task's error) is told of a call that was not approved."""
    if ask.end is AskEnd.TIMED_OUT:
        return (f"{call} was not approved within {timeout or 0:g} s "
                f"(approve_timeout; ask {ask.id})")
    if ask.end is AskEnd.WITHDRAWN:
        whose = "replica exited" if is_replica_owner(ask.task_id) else "task ended"
        return f"{call} was not decided before its {whose} (ask {ask.id})"
    reason = ask.data.get("reason") if isinstance(ask.data, dict) else None
    return f"{call} was denied by {ask.by} (ask {ask.id})" + (f": {reason}" if reason else "")
