"""The identity and view link of a model call (DESIGN section 28): the model it names is
one its agent may use at this endpoint. Another tenant's model is not found, as one that
does not exist.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from .call import Call
from .modelcall import ModelRefusal


def model_in_view(call: Call) -> None:
    """Nothing when the call's agent may use its model; else ModelRefusal (404 for a model
    it cannot see, 400 for another endpoint's format, 403 for one not for its agent)."""
    model, replica = call.model, call.replica
    assert model is not None and replica is not None  # (a model call's: its agent's)
    spec, name = model.spec, call.name
    tenant = replica.spec.tenant
    if spec is None or not (spec.shared or spec.tenant == tenant):
        mine = sorted(n for n, s in model.served.items() if s.shared or s.tenant == tenant)
        raise ModelRefusal(404, f"model {name!r:.80} is not served by corral to agent "
                                f"{replica.name} (its models: {', '.join(mine) or 'none'})")
    if spec.format != model.format:
        model.counter.refused += 1
        raise ModelRefusal(400, f"model {name} speaks the {spec.format} format, not that "
                                f"of {model.endpoint}")
    # an agent's name is its tenant's caller's to choose: a glob naming agents (not `*`)
    # names the model's own tenant's, so that a tenant's agent named to fit a shared
    # model's `ops-*` uses it no more than an unnamed one
    agents = spec.agents
    if "*" not in agents and not (tenant == spec.tenant and any(
            fnmatchcase(replica.name, glob) for glob in agents)):
        model.counter.refused += 1
        raise ModelRefusal(403, f"model {name} is not for agent {replica.name} "
                                f"(models.{name}.agents: {', '.join(spec.agents)})")
