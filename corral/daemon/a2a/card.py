"""An agent's A2A card (spec 4.4.1), built from its config: its name, description, a skill
for each of its tools and declared skills, the capabilities corral serves, corral's bearer
tokens as its security scheme, and the two bindings at `/a2a/AGENT`."""

from __future__ import annotations

from typing import Any

from ...supervisor.config import AgentSpec
from .wire import VERSION

BINDINGS = ("JSONRPC", "HTTP+JSON")
SCHEME = "corral"  # the security scheme's name: a corral bearer token (`corral token`)
MODES = ["application/json", "text/plain"]


def skills_of(spec: AgentSpec) -> list[dict[str, Any]]:
    """The agent itself as its first skill, then one per tool pattern it may call."""
    described = spec.description or f"Runs a task on corral agent {spec.name}."
    skills = [{"id": spec.name, "name": spec.name, "description": described,
               "tags": ["corral", "agent"]}]
    for tool in spec.tools:
        skills.append({"id": f"tool:{tool}", "name": tool,
                       "description": f"Calls the tools {tool} through corral's gateway.",
                       "tags": ["corral", "tool"]})
    return skills


def card_of(spec: AgentSpec, base: str, *, anonymous: bool) -> dict[str, Any]:
    """`base`: the agent's URL, `/a2a/AGENT` on the server as the caller reached it."""
    card: dict[str, Any] = {
        "name": spec.name,
        "description": spec.description or f"corral agent {spec.name}",
        "supportedInterfaces": [{"url": base, "protocolBinding": b,
                                 "protocolVersion": VERSION} for b in BINDINGS],
        "provider": {"organization": "corral", "url": base},
        "version": spec.version or "1",
        "capabilities": {"streaming": True, "pushNotifications": True,
                         "extendedAgentCard": True},
        "securitySchemes": {SCHEME: {"httpAuthSecurityScheme": {
            "scheme": "Bearer", "description": "a corral token (`corral token create`) "
            "with the tasks:run, tasks:read and approvals scopes"}}},
        "defaultInputModes": MODES,
        "defaultOutputModes": MODES,
        "skills": skills_of(spec),
    }
    if not anonymous:
        card["securityRequirements"] = [{"schemes": {SCHEME: {"list": []}}}]
    return card
