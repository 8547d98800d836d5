"""Which member a route team's call goes to: its rule table read against the input, or
what its router agent answered. No I/O."""

from __future__ import annotations

from typing import Any

from ..workflows.refs import Missing, Scope, parse, resolve
from .definition import Rule, TeamError, TeamSpec


def _holds(rule: Rule, value: Any) -> bool:
    if rule.equals is not None:
        return bool(value == rule.equals)
    if rule.contains is not None:
        if isinstance(value, str):
            return isinstance(rule.contains, str) and rule.contains in value
        return isinstance(value, list) and rule.contains in value
    return True  # the reference exists


def by_rules(name: str, spec: TeamSpec, call_input: Any) -> str:
    """The member the first holding rule names, else the default (TeamError if none)."""
    scope = Scope(call_input, {})
    for rule in spec.rules:
        ref = parse(rule.ref)
        assert ref is not None  # checked on load (check.py)
        try:
            value = resolve(ref, scope)
        except Missing:
            continue
        if _holds(rule, value):
            return rule.member
    if spec.default is not None:
        return spec.default
    raise TeamError(f"team {name}: no rule matched the input and the team has no default")


def router_input(spec: TeamSpec, call_input: Any) -> dict[str, Any]:
    """What the router agent is sent: the call's input and the members to pick from."""
    return {"input": call_input, "members": list(spec.members)}


def named(name: str, spec: TeamSpec, output: Any) -> str:
    """The member a router's output names: the name as a text, or {"member": NAME}."""
    member = output.get("member") if isinstance(output, dict) else output
    if not isinstance(member, str):
        raise TeamError(f"team {name}: router {spec.router} answered no member name (a "
                        "text, or {\"member\": NAME})")
    if member not in spec.members:
        raise TeamError(f"team {name}: router {spec.router} named {member[:80]!r}, not a "
                        f"member (members: {', '.join(spec.members)})")
    return member
