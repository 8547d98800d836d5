"""The isolation an agent runs with, as its config and its tenant's say: the sandbox,
the network and the egress (docs/sandbox.md), and the gateway's unix socket a sandbox
binds in."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .config import AgentSpec, GatewaySettings, TenantSpec


class Isolation(NamedTuple):
    sandbox: str  # "none" | "bwrap"
    network: str  # "host" | "none" | "gateway" | "gateways" (egress: sandbox.py)
    egress: str = "any"  # what set them: "any" (sandbox and network), else egress


EGRESS_ORDER = ("any", "gateways", "none")  # each stricter than the one before


def egress_of(spec: AgentSpec, tenant: TenantSpec | None = None) -> str:
    """The agent's egress: the stricter of its own and its tenant's (a floor its agents
    cannot lower)."""
    asked = [e for e in (spec.egress, tenant.egress if tenant else None) if e]
    return max(asked, key=EGRESS_ORDER.index) if asked else "any"


def isolation(spec: AgentSpec, tenant: TenantSpec | None = None) -> Isolation:
    """With an egress of "gateways" or "none", a sandbox with that network; else its own
    keys, else its tenant's, else none and the host's network."""
    egress = egress_of(spec, tenant)
    if egress != "any":
        return Isolation("bwrap", egress, egress)
    return Isolation(spec.sandbox or (tenant.sandbox if tenant else None) or "none",
                     spec.network or (tenant.network if tenant else None) or "host")


def gateway_socket(gateway: GatewaySettings) -> str | None:
    """The MCP gateway's unix socket as configured (`listen = "unix:PATH"`), or None."""
    listen = gateway.listen
    return listen[len("unix:"):] if listen and listen.startswith("unix:") else None
