"""The budget link of a model call (DESIGN section 28, docs/models.md "Budgets"): its
model's rate for its tenant, and its estimate held against its agent's and tenant's token
and cost budgets while it is made; at its end, whatever the end, what the upstream said it
used counted, the estimate's hold let go at the same instant (a stream cut uncounted once
let 235k tokens billed pass a 5,000-a-minute budget).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...ratelimit import TokenBucket
from ...text import iso_time
from .call import Call
from .interceptors import TaskInterceptor, TaskPath
from .modelcall import ModelCall, ModelRefusal

if TYPE_CHECKING:
    from ..config import ModelSpec
    from .host import AgentLike


class ModelBudget(TaskInterceptor):
    def __init__(self) -> None:
        self._path: TaskPath | None = None
        # (model, tenant) -> the model's spec its bucket was made for, the bucket
        self._rates: dict[tuple[str, str], tuple[ModelSpec, TokenBucket]] = {}

    def bind(self, path: TaskPath) -> None:
        self._path = path

    def intercept_model_call(self, call: Call, next: Callable[[Call], Any]) -> Any:
        model = call.model
        assert model is not None and model.spec is not None  # (seen: modelview.py)
        if model.spec.rate_per_minute:
            self._rate(call.name, call.agent.spec.tenant, model.spec, model)
        agent = self._reserve(call, model)
        model.counter.calls += 1  # (a call made: its budgets' to count)
        return self._counted(call, model, agent, next)

    def _rate(self, name: str, tenant: str, spec: ModelSpec, model: ModelCall) -> None:
        kept = self._rates.get((name, tenant))
        if kept is None or kept[0] is not spec:  # (a bucket of its spec as it is now)
            kept = self._rates[(name, tenant)] = (spec, TokenBucket(spec.rate_per_minute))
        if not kept[1].take():
            model.counter.refused += 1
            raise ModelRefusal(429, f"rate limited: tenant {tenant} is over model "
                                    f"{name}'s rate_per_minute ({spec.rate_per_minute:g})")

    def _reserve(self, call: Call, model: ModelCall) -> AgentLike | None:
        """The call's estimate held against the agent's and its tenant's budgets, unless
        what was used and what calls in flight hold already reach one; the agent it was
        held for (None: removed)."""
        assert self._path is not None  # bound as the engine was made
        r = call.replica
        assert r is not None  # (a model call's: its agent's)
        name = r.name
        agent = self._path.agent_of(name)
        if agent is None:
            return None
        kept = self._path.budgets.reserve(agent, model.reservation)
        if kept is None:
            return agent
        model.counter.refused += 1
        if kept.reserved:
            raise ModelRefusal(429, f"budget exceeded: agent {name}'s {kept.budget} is "
                                    f"{kept.limit:g}, {kept.used:g} used and "
                                    f"{kept.reserved:g} held by its calls in flight (each "
                                    "its estimate until it ends); room again as they end")
        raise ModelRefusal(429, f"budget exceeded: agent {name}'s {kept.budget} is "
                                f"{kept.limit:g}, {kept.used:g} used; room again at "
                                f"{iso_time(kept.until)}")

    async def _counted(self, call: Call, model: ModelCall, agent: AgentLike | None,
                       next: Callable[[Call], Any]) -> Any:
        try:
            return await next(call)
        finally:  # every end: whole, cut, timed out, failed, cancelled
            self._count(call, model, agent)

    def _count(self, call: Call, model: ModelCall, agent: AgentLike | None) -> None:
        """A live call's usage, settled against its budgets, its estimate's hold let go
        at the same instant (a replayed one's was counted when it was made). Its agent's
        budgets count it only while that agent is still the one of its name: one removed
        while the call was made had its budgets forgotten, and counted anew they would be
        kept for ever, or be the next agent's of the name."""
        model.reservation.release()
        usage, ask = model.usage, model.ask
        usage.settle(ask.input_estimate, ask.output_estimate)
        if not usage.billed:
            return  # no answer, or an error's: nothing billed that corral knows of
        spec, counter = model.spec, model.counter
        assert spec is not None and self._path is not None
        counter.input_tokens += usage.input
        counter.output_tokens += usage.output
        cost = (usage.input * spec.input_usd_per_mtok +
                usage.output * spec.output_usd_per_mtok) / 1e6
        used, now = usage.model or call.name, time.time()
        budgets = self._path.budgets
        assert call.replica is not None  # (a model call's: its agent's)
        name = call.replica.name
        ours = agent is not None and self._path.agent_of(name) is agent
        if call.task is not None:
            budgets.count(call.task, usage.input, usage.output, cost, used, now,
                          agent=ours)
        elif ours:
            budgets.count_agent(name, usage.input, usage.output, cost, used, now)
