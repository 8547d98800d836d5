"""The tenants' quotas on the engine's tasks: their admission check and dispatch gate are
in place only while some tenant sets that quota (a host using none pays nothing per task)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..quotas import BUDGET_PREFIX
from .endings import EndingEngine

if TYPE_CHECKING:
    from ..quotas import QuotasChanged, Tenancy
    from .budget import Budgets
    from .host import AgentLike


class QuotaEngine(EndingEngine, Protocol):
    """What the quotas' hooks need of the TaskManager, besides what a task's end does."""

    tenancy: Tenancy | None
    budgets: Budgets

    def running(self, agent_name: str) -> int: ...


class QuotaHooks:
    """Its engine's hooks of the tenants' quotas (made with it, one each)."""

    def __init__(self, engine: QuotaEngine) -> None:
        self.engine = engine
        # the tenants' quotas a task's admission checks: None while no tenant sets one
        self.admitting: Tenancy | None = None

    def reopen(self, key: str) -> None:
        """A budget has room again: its agent's tasks go, or its tenant's agents' when shared."""
        e = self.engine
        if key.startswith(BUDGET_PREFIX) and e.tenancy is not None:
            for a in e.tenancy.members(key.removeprefix(BUDGET_PREFIX)):
                e.dispatch.pump(a.name)
        else:
            e.dispatch.pump(key)

    def changed(self, _: QuotasChanged | None = None) -> None:
        """The tenants' quotas changed: a quota's hooks stay only while some tenant sets it; a gate
        taken away or widened lets the waiting tasks go."""
        e = self.engine
        tenancy = e.tenancy
        assert tenancy is not None
        specs = tenancy.specs.values()
        e.dispatch.gated = any(s.max_concurrent_tasks for s in specs)
        admits = any(s.max_queue or s.rate_per_minute or s.max_task_seconds for s in specs)
        self.admitting = tenancy if admits else None
        e.budgets.sharing = any(s.tokens_per_minute for s in specs)
        # a tenant's shared window goes with its tokens_per_minute (or the tenant): no
        # longer fed, it would show a use that only fades (`corral tenants`)
        for key in [k for k in e.budgets.windows if k.startswith(BUDGET_PREFIX)]:
            spec = tenancy.specs.get(key.removeprefix(BUDGET_PREFIX))
            if spec is None or not spec.tokens_per_minute:
                e.budgets.forget(key)
        for name in list(e.by_agent):
            e.dispatch.pump(name)  # (at once when none waits)

    def tenant_full(self, agent: AgentLike) -> bool:
        e = self.engine
        assert e.tenancy is not None
        return e.tenancy.full(agent, e.running)

    def freed(self, agent_name: str) -> None:
        """A task of the agent ended: where its tenant bounds the tasks running at once,
        the tenant's other agents' waiting tasks may start."""
        e = self.engine
        tenancy = e.tenancy
        assert tenancy is not None  # installed by `changed` only
        tenant = tenancy.tenant_of(agent_name)
        if tenant is None or not tenancy.spec(tenant).max_concurrent_tasks:
            return
        for a in tenancy.members(tenant):
            if a.name != agent_name:
                e.dispatch.pump(a.name)
