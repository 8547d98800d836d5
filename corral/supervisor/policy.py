"""Policy on every call (DESIGN section 27, docs/security.md#policy-rules): the `[[policy]]`
rules of the operator and of a call's tenant (`[tenants.NAME] policy`), and the marks that
taint a task (`untrusted`, `sensitive` on `[mcp_servers.NAME]`), compiled once per config
(`compiled`) into what a call is judged by without parsing anything again.

A list's first rule that matches a call is its verdict (`allow`, `deny` or `approve`); the
operator's list and the tenant's are judged apart, and the stricter verdict holds
(deny > approve > allow), so that neither can loosen the other: a tenant's `allow` does
not open what the operator denies, and the operator's `allow` does not open what a
tenant's `default_deny` closes. Nothing matching: allow, or deny for a tenant with
`default_deny`. Agents have no rules of their own: a rule matches agents by name.

An argument a rule's `when` tests that is absent or of another type fails the test (the
rule does not match): a rule `allow` under a prefix followed by a `deny` of the tool
closes every other path, a missing one too.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from .config import DEFAULT_TENANT, PolicyRule, PolicyTest, TenantSpec

if TYPE_CHECKING:
    from .config import Config

EFFECTS = ("allow", "approve", "deny")  # each stricter than the one before
CACHED = 4096  # (tenant, agent, tool) triples whose matching rules are kept


class Verdict(NamedTuple):
    effect: str  # "allow" | "approve" | "deny"
    rule: str  # the rule's name (or where it is written), "" when none matched

    def said(self, tool: str) -> str:
        """What the agent reads of a call this verdict refuses."""
        if self.rule:
            return f"tool call {tool} is denied by policy rule {self.rule}"
        return f"tool call {tool} is denied: its tenant's policy is default_deny"


ALLOWED = Verdict("allow", "")


def _glob(pattern: str | None) -> Callable[[str], bool]:
    if pattern is None:
        return lambda _: True
    return re.compile(fnmatch.translate(pattern)).match  # type: ignore[return-value]


def _test(path: str, test: PolicyTest) -> Callable[[dict[str, Any]], bool]:
    """One `when` entry as a function of the call's arguments."""
    keys = path.split(".")
    if keys[0] == "arguments":
        keys = keys[1:]

    def value(arguments: dict[str, Any]) -> Any:
        v: Any = arguments
        for k in keys:
            if not isinstance(v, dict) or k not in v:
                return None
            v = v[k]
        return v

    if test.under is not None:
        prefix = os.path.normpath(test.under)
        inside = prefix.rstrip("/") + "/"

        def under(arguments: dict[str, Any]) -> bool:
            v = value(arguments)
            if not isinstance(v, str):
                return False
            p = os.path.normpath(v)  # a `..` leaves the prefix as the file system would
            return p == prefix or p.startswith(inside)
        return under
    if test.in_ is not None:
        among = frozenset(x.lower() for x in test.in_)

        def in_(arguments: dict[str, Any]) -> bool:
            v = value(arguments)
            return isinstance(v, str) and v.lower() in among
        return in_
    bound = test.below

    def below(arguments: dict[str, Any]) -> bool:
        v = value(arguments)
        return (isinstance(v, (int, float)) and not isinstance(v, bool)
                and bound is not None and v < bound)
    return below


class _Rule(NamedTuple):
    name: str
    effect: str
    tenant: Callable[[str], bool]
    agent: Callable[[str], bool]
    tool: Callable[[str], bool]
    tests: tuple[Callable[[dict[str, Any]], bool], ...]


def _compile(rules: list[PolicyRule], where: str) -> tuple[_Rule, ...]:
    return tuple(_Rule(
        r.name or f"{where}[{i}]", r.effect, _glob(r.match.tenant), _glob(r.match.agent),
        _glob(r.match.tool), tuple(_test(k, t) for k, t in r.when.items()))
        for i, r in enumerate(rules))


class _List:
    """One list of rules, its first match the verdict; the rules that could match a
    (tenant, agent, tool) kept, so that a call tests only their arguments."""

    def __init__(self, rules: tuple[_Rule, ...], default: str) -> None:
        self.rules = rules
        self.default = Verdict(default, "")
        self._cands: dict[tuple[str, str, str], tuple[_Rule, ...]] = {}

    def judge(self, tenant: str, agent: str, tool: str, arguments: dict[str, Any]
              ) -> Verdict:
        key = (tenant, agent, tool)
        cands = self._cands.get(key)
        if cands is None:
            if len(self._cands) >= CACHED:
                self._cands.clear()
            cands = self._cands[key] = tuple(
                r for r in self.rules if r.tenant(tenant) and r.agent(agent) and r.tool(tool))
        for r in cands:
            if all(t(arguments) for t in r.tests):
                return Verdict(r.effect, r.name)
        return self.default


class Policy:
    """A config's rules and marks, compiled."""

    def __init__(self, cfg: Config) -> None:
        self.operator = _List(_compile(cfg.policy, "policy"), "allow")
        # a tenant's list, by its name, with the spec it was compiled from (a tenant
        # added or changed at run time, tenants.add, is compiled when next judged by)
        self._tenants: dict[str, tuple[TenantSpec, _List | None]] = {}
        untrusted: list[str] = []
        sensitive: list[str] = []
        for name, s in cfg.mcp_servers.items():
            untrusted += [f"{name}__*"] if s.untrusted else [
                f"{name}__{t}" for t in s.tools_untrusted]
            sensitive += [f"{name}__*"] if s.sensitive else [
                f"{name}__{t}" for t in s.tools_sensitive]
        self._untrusted = _any(untrusted)
        self._sensitive = _any(sensitive)

    def _tenant(self, name: str, spec: TenantSpec | None) -> _List | None:
        if spec is None:
            return None
        held = self._tenants.get(name)
        if held is None or held[0] is not spec:
            rules = _List(_compile(spec.policy, f"tenants.{name}.policy"),
                          "deny" if spec.default_deny else "allow") \
                if spec.policy or spec.default_deny else None
            held = self._tenants[name] = (spec, rules)
        return held[1]

    def judge(self, tenant: str | None, spec: TenantSpec | None, agent: str, tool: str,
              arguments: dict[str, Any]) -> Verdict:
        """The call's verdict (`spec`: its tenant's [tenants.NAME], None if none)."""
        tenant = tenant or DEFAULT_TENANT
        verdict = self.operator.judge(tenant, agent, tool, arguments)
        own = self._tenant(tenant, spec)
        if own is not None:
            theirs = own.judge(tenant, agent, tool, arguments)
            if EFFECTS.index(theirs.effect) > EFFECTS.index(verdict.effect):
                return theirs
        return verdict

    def untrusted(self, tool: str) -> bool:
        return self._untrusted(tool)

    def sensitive(self, tool: str) -> bool:
        return self._sensitive(tool)


def _any(patterns: list[str]) -> Callable[[str], bool]:
    if not patterns:
        return lambda _: False
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)
                      ).match  # type: ignore[return-value]


class Compiled:
    """The policy of the config in force, compiled when it is first judged by: a reload's
    new config is compiled anew (the config is read through `current`, the daemon's)."""

    def __init__(self, current: Callable[[], Config | None]) -> None:
        self._current = current
        self._last: tuple[Config, Policy] | None = None

    def __call__(self) -> Policy | None:
        cfg = self._current()
        if cfg is None:
            return None
        last = self._last
        if last is None or last[0] is not cfg:
            last = self._last = (cfg, Policy(cfg))
        return last[1]


def shape(value: Any) -> Any:
    """Arguments by shape only, for a log or a trace: keys and types, never values."""
    if isinstance(value, dict):
        return {str(k): shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:3]] + (["..."] if len(value) > 3 else [])
    return type(value).__name__


class Taints:
    """Which owners (a task's id, a replica incarnation's) an untrusted tool's output
    reached, and the first such tool; a task's forgotten as it ends, a replica's
    incarnations the oldest dropped past a bound (an exited one is never asked of)."""

    def __init__(self, bound: int = CACHED) -> None:
        self._by: dict[str, str] = {}
        self._replicas = 0
        self._bound = bound

    def mark(self, owner: str, tool: str) -> None:
        if owner in self._by:
            return
        if owner.startswith("replica:"):  # (a task's is never dropped before its end)
            if self._replicas >= self._bound:
                oldest = next(o for o in self._by if o.startswith("replica:"))
                del self._by[oldest]
                self._replicas -= 1
            self._replicas += 1
        self._by[owner] = tool

    def of(self, owner: str) -> str | None:
        return self._by.get(owner)

    def forget(self, owner: str) -> None:
        if self._by.pop(owner, None) is not None and owner.startswith("replica:"):
            self._replicas -= 1
