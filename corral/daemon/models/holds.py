"""Which model calls wait for a person (docs/approvals.md#approvals-of-model-calls): those
of a model `approve_models` names, and those whose most cost (their estimate at the model's
prices; none without a bound on output, so they wait whenever a ceiling is set) may pass
`approve_cost_over`. The ask and what its decision does are the gateway's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from ...mcp.pool import allowed
from ...supervisor.config import ModelSpec
from .request import ModelRequest

if TYPE_CHECKING:
    from ...supervisor.replica import Replica


class ModelPolicy(NamedTuple):
    models: list[str]
    cost_over: float
    timeout: float | None
    on_deny: str
    on_timeout: str


def model_policy_of(r: Replica, tenant: str | None, held_by_rule: bool = False
                    ) -> ModelPolicy | None:
    """None when no model call of the replica's tasks waits for a person (unless
    `held_by_rule`: a policy rule or taint holds this one, supervisor/policy.py)."""
    spec = r.spec
    held = r.host.tenant_spec(tenant) if tenant is not None else None
    models = [*getattr(spec, "approve_models", []),
              *(held.approve_models if held is not None else ())]
    cost_over: float = getattr(spec, "approve_cost_over", 0.0)
    if not models and not cost_over and not held_by_rule:
        return None
    timeout = getattr(spec, "approve_timeout", 0.0)
    return ModelPolicy(models, cost_over, timeout or None, getattr(spec, "on_deny", "error"),
                       getattr(spec, "on_timeout", "error"))


def most_cost(request: ModelRequest, spec: ModelSpec) -> float | None:
    """The most the call may cost, in dollars; None: its output has no bound."""
    if request.bound is None:
        return None
    return request.cost_estimate(spec.input_usd_per_mtok, spec.output_usd_per_mtok)


def why_held(policy: ModelPolicy, name: str, cost: float | None) -> str | None:
    if policy.models and allowed(name, policy.models):
        return "approve_models"
    if policy.cost_over and (cost is None or cost > policy.cost_over):
        return "approve_cost_over"
    return None


def subject(name: str, path: str, cost: float | None, why: str) -> dict[str, Any]:
    """What the ask shows a person (askviews.what_it_asks reads `model` and `cost`)."""
    return {"model": name, "endpoint": path, "cost": cost, "why": why}
