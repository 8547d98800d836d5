"""A team's definition checked whole against the agents, teams and MCP servers beside it,
with the first thing wrong said exactly (docs/teams.md lists the messages)."""

from __future__ import annotations

from collections.abc import Callable, Collection

from ..workflows.refs import SHAPE, parse
from .definition import TeamError, TeamMissing, TeamSpec

TOOL_SEP = "__"  # a leader's tool for a member is TEAM__MEMBER, as SERVER__TOOL


def check_team(name: str, spec: TeamSpec, *, tenant_of: Callable[[str], str | None],
               teams: Collection[str] = (), servers: Collection[str] = ()) -> str:
    """Raise TeamError, or answer the team's tenant. `tenant_of`: an agent's tenant, None
    when there is no such agent; `teams`, `servers`: the names of the others."""
    where = f"team {name}"
    if TOOL_SEP in name:
        raise TeamError(f"{where}: a team name may not contain '__' (it separates team and "
                        "member in a leader's tool TEAM__MEMBER)")
    if tenant_of(name) is not None:
        raise TeamError(f"{where}: an agent has its name (a task names one or the other)")
    if name in servers:
        raise TeamError(f"{where}: an MCP server has its name (a leader's tools "
                        f"{name}__MEMBER would shadow the server's)")
    seen: set[str] = set()
    for member in spec.members:
        _agent(where, "member", member, name, teams, tenant_of)
        if member in seen:
            raise TeamError(f"{where}: member {member} is named twice")
        seen.add(member)
    _mode(where, name, spec, teams, tenant_of)
    tenants = {tenant_of(a) for a in spec.agents}
    if spec.tenant is not None:
        stray = sorted(a for a in spec.agents if tenant_of(a) != spec.tenant)
        if stray:
            raise TeamError(f"{where}: of tenant {spec.tenant}, names agent {stray[0]} of "
                            f"tenant {tenant_of(stray[0])} (a team's agents are its "
                            "tenant's)")
        return spec.tenant
    if len(tenants) > 1:
        shown = ", ".join(sorted(f"{a} ({tenant_of(a)})" for a in spec.agents))
        raise TeamError(f"{where}: its agents are of more than one tenant: {shown}")
    tenant = tenants.pop()
    assert tenant is not None
    return tenant


def _agent(where: str, role: str, agent: str, name: str, teams: Collection[str],
           tenant_of: Callable[[str], str | None]) -> None:
    if agent == name:
        raise TeamError(f"{where}: {role} {agent} is the team itself (a team cannot call "
                        "itself)")
    if agent in teams:
        raise TeamError(f"{where}: {role} {agent} is a team (a team's {role} is an agent; "
                        "teams do not nest)")
    if tenant_of(agent) is None:
        raise TeamMissing(f"{where}: {role} {agent}: no such agent")


def _mode(where: str, name: str, spec: TeamSpec, teams: Collection[str],
          tenant_of: Callable[[str], str | None]) -> None:
    mode = spec.mode
    if mode != "route":
        for key, given in (("rules", bool(spec.rules)), ("default", spec.default is not None),
                           ("router", spec.router is not None)):
            if given:
                raise TeamError(f"{where}: {key} is for mode route, not {mode}")
    if mode != "coordinate" and spec.leader is not None:
        raise TeamError(f"{where}: leader is for mode coordinate, not {mode}")
    if mode == "route":
        if spec.router is not None and (spec.rules or spec.default is not None):
            raise TeamError(f"{where}: a route team has rules or a router, not both")
        if spec.router is None and not spec.rules:
            raise TeamError(f"{where}: a route team needs rules or a router (what picks the "
                            "member)")
        if spec.router is not None:
            _agent(where, "router", spec.router, name, teams, tenant_of)
        for i, rule in enumerate(spec.rules, 1):
            if rule.member not in spec.members:
                raise TeamError(f"{where}, rule {i}: {rule.member} is not a member (members: "
                                f"{', '.join(spec.members)})")
            ref = parse(rule.ref)
            if ref is None or ref.root != "input":
                raise TeamError(f"{where}, rule {i}: ref {rule.ref} is not a reference to "
                                f"the input ($input followed by .key or [N] parts; {SHAPE})")
            if rule.equals is not None and rule.contains is not None:
                raise TeamError(f"{where}, rule {i}: equals or contains, not both")
        if spec.default is not None and spec.default not in spec.members:
            raise TeamError(f"{where}: default {spec.default} is not a member (members: "
                            f"{', '.join(spec.members)})")
    if mode == "coordinate":
        if spec.leader is None:
            raise TeamError(f"{where}: a coordinate team needs a leader (the agent that "
                            "calls its members)")
        _agent(where, "leader", spec.leader, name, teams, tenant_of)
        if spec.leader in spec.members:
            raise TeamError(f"{where}: its leader {spec.leader} is also a member (a leader "
                            "calls its members, not itself)")
