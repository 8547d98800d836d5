"""The policy rules, labels (taint) and approval links of a model call (DESIGN section 28,
docs/approvals.md#approvals-of-model-calls): a rule's deny refuses it; a rule or taint
holding it, a model `approve_models` names, or a call whose most cost (its estimate at
the model's prices; none without a bound on output, so it waits whenever a ceiling is
set) may pass `approve_cost_over` waits for a person.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

from ... import jsonrpc
from ...askviews import Ask, AskEnd, AskKind, AskRequest
from ...jsonrpc import RpcError
from ...mcp.pool import allowed
from ...taskviews import TaskFailure
from ..policy import PolicyGuard
from .approvals import not_approved
from .call import Call
from .interceptors import TaskInterceptor, TaskPath
from .modelcall import ModelCall, ModelRefusal
from .replicacalls import ReplicaAsk
from .steps import CallOrdinals

if TYPE_CHECKING:
    from ..config import AgentSpec, TenantSpec
    from .model import Task


class ModelPolicy(NamedTuple):
    models: list[str]
    cost_over: float
    timeout: float | None
    on_deny: str
    on_timeout: str


def model_policy_of(spec: AgentSpec, held: TenantSpec | None, held_by_rule: bool = False
                    ) -> ModelPolicy | None:
    """None when no model call of the agent's (`spec`) tasks waits for a person, its
    tenant's [tenants.NAME] being `held` (None: none), unless `held_by_rule`: a policy
    rule or taint holds this one (supervisor/policy.py)."""
    own, cost_over = spec.approve_models, spec.approve_cost_over
    if not (own or cost_over or held_by_rule or (held is not None and held.approve_models)):
        return None  # (most calls: no list made)
    models = [*own, *(held.approve_models if held is not None else ())]
    return ModelPolicy(models, cost_over, spec.approve_timeout or None, spec.on_deny,
                       spec.on_timeout)


def why_held(policy: ModelPolicy, name: str, cost: float | None) -> str | None:
    if policy.models and allowed(name, policy.models):
        return "approve_models"
    if policy.cost_over and (cost is None or cost > policy.cost_over):
        return "approve_cost_over"
    return None


def subject(name: str, model: ModelCall, why: str) -> dict[str, Any]:
    """What the ask shows a person (askviews.what_it_asks reads `model` and `cost`)."""
    return {"model": name, "endpoint": model.endpoint, "cost": model.most_cost(),
            "why": why}


class ModelApprovals(TaskInterceptor):
    """The links above, over the policy rules and labels of `guard` (supervisor/policy.py)."""

    def __init__(self, guard: PolicyGuard | None = None) -> None:
        self._guard = guard
        self._path: TaskPath | None = None
        # a held call's ask key: its place among its attempt's same calls
        self._ordinals = CallOrdinals()

    def bind(self, path: TaskPath) -> None:
        self._path = path

    def intercept_task_end(self, task: Task, next: Callable[[Task], None]) -> None:
        self._ordinals.forget(task.id)
        next(task)

    def intercept_model_call(self, call: Call, next: Callable[[Call], Any]) -> Any:
        task, guard = call.task, self._guard
        if task is not None and guard is not None and guard.reads_labels(task):
            return self._loaded(guard, task, call, next)  # (a turn's first call: labels.py)
        asking = self._asking(call)
        if asking is None:  # (most calls: judged here, without a coroutine of its own)
            return next(call)
        return self._held(call, next, *asking)

    async def _loaded(self, guard: PolicyGuard, task: Task, call: Call,
                      next: Callable[[Call], Any]) -> Any:
        await guard.labels.load(task, call.agent)
        asking = self._asking(call)
        if asking is not None:
            return await self._held(call, next, *asking)
        return await next(call)

    def _asking(self, call: Call) -> tuple[ModelPolicy, str] | None:
        """Whether the call waits for a person: its policy and why, or None; ModelRefusal
        when a rule denies it."""
        task, model, r = call.task, call.model, call.replica
        assert model is not None and r is not None  # (a model call's: its agent's)
        spec = r.spec
        tenant = task.tenant if task is not None and task.tenant is not None \
            else spec.tenant
        # its tenant's settings, read once for the rules and the approval both
        held = r.host.tenant_spec(tenant) if tenant is not None else None
        rule = ""
        guard = self._guard
        if guard is not None:
            assert self._path is not None  # bound as the engine was made
            owner = task.id if task is not None else partial(
                self._path.replica_calls.owner_of, r)  # (found if a verdict is kept)
            verdict = guard.judge(owner, r, tenant, "model", call.name,
                                  {"max_tokens": model.ask.bound}, task, held)
            if verdict.effect == "deny":
                raise ModelRefusal(403, verdict.said(f"model call {call.name}"))
            rule = verdict.rule if verdict.effect == "approve" else ""
        policy = model_policy_of(spec, held, bool(rule))
        if policy is None:
            return None
        why = rule or why_held(policy, call.name, model.most_cost())
        return None if why is None else (policy, why)

    async def _held(self, call: Call, next: Callable[[Call], Any], policy: ModelPolicy,
                    why: str) -> Any:
        """The call once a person approved it; ModelRefusal when one did not, or it cannot
        be asked (a cluster's)."""
        task, model, path = call.task, call.model, self._path
        assert model is not None and path is not None
        asked = subject(call.name, model, why)
        ask: Ask
        if task is None:
            # the replica's: its incarnation asks, the call waiting meanwhile
            try:
                ask = await path.replica_calls.ask(call.agent, ReplicaAsk(
                    AskKind.APPROVAL, "model", asked, policy.timeout))
            except RpcError as exc:  # a bound of the inbox's
                raise ModelRefusal(429, exc.message) from None
        else:
            key = "model:" + self._ordinals.key(task, call.name, model.ask.digest)
            ask = await path.ask_person(AskRequest(
                AskKind.APPROVAL, task.tenant, task.id, task.attempt, task.agent, key,
                asked, policy.timeout))
        if ask.end is AskEnd.APPROVED:
            if model.gone():
                raise ModelRefusal(409, f"model call {call.name} was approved after its "
                                        f"agent hung up: not made (ask {ask.id})")
            return await next(call)
        words = not_approved(ask, f"model call {call.name}", policy.timeout)
        if ask.end is not AskEnd.WITHDRAWN and self._guard is not None:
            self._guard.not_approved(call.agent.name, task, task.tenant if task is not None
                                     else getattr(call.agent.spec, "tenant", None),
                                     call.name, why, ask.end is AskEnd.TIMED_OUT)
        how = policy.on_timeout if ask.end is AskEnd.TIMED_OUT else policy.on_deny
        if how == "fail" and ask.end is not AskEnd.WITHDRAWN and task is not None:
            path.fail_task(task, TaskFailure(jsonrpc.TASK_FAILED, words))
        raise ModelRefusal(403, words)
