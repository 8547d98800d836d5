"""Policy on every call (docs/security.md#policy-rules): the `[[policy]]` rules of the
operator and of a call's tenant, and the taint marks (`untrusted`, `sensitive`), compiled
once per config. Each list's first matching rule is its verdict, the two judged apart, the
stricter holding (deny > approve > allow) so neither loosens the other. An argument a
rule's `when` tests that is absent or of another type fails the test.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable
from operator import methodcaller
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from .canonical import addressed, canonical_host, canonical_path, host_text
from .config import DEFAULT_TENANT, PolicyMatch, PolicyRule, PolicyTest, TenantSpec
from .labels import Labels
from .refusals import BoundaryRefusals

if TYPE_CHECKING:
    from .config import Config
    from .replica import Replica
    from .tasks.call import GatewayClient
    from .tasks.model import Task

EFFECTS = ("allow", "approve", "deny")  # each stricter than the one before
OPERATORS = "policy"  # where the operator's list is written ([[policy]])
CACHED = 4096  # (tenant, agent, tool) triples whose matching rules are kept
# a tool's name is the agent's to choose (one that names no tool is judged all the same):
# one longer than this is judged without being kept, so the caches' bytes are bounded as
# their entries are (4,096 names of 2 MB each were 8 GB)
NAME_CACHED = 256
TAINT = "taint"  # a call held by taint: its rule's words begin so
_NUMBERS = (int, float)
# a tenant's [tenants.NAME] its caller did not read (`PolicyGuard.judge` reads it)
UNREAD: Any = object()


class RuleEffect(NamedTuple):
    effect: str  # "allow" | "approve" | "deny"
    rule: str  # the rule's name (or where it is written), "" when none matched

    def said(self, call: str) -> str:
        """What the agent reads of a call this verdict refuses (`call`: "tool call
        NAME", "model call NAME")."""
        if self.rule:
            return f"{call} is denied by policy rule {self.rule}"
        return f"{call} is denied: its tenant's policy is default_deny"


def _glob(pattern: str | None) -> Callable[[str], bool]:
    return (lambda _: True) if pattern is None else _any([pattern])


def _test(path: str, test: PolicyTest, strict: bool) -> Callable[[dict[str, Any]], bool]:
    """One `when` entry as a function of the call's facts (a tool call's
    {"arguments": ...}, a model call's {"max_tokens": ...}). `strict`: the rule denies
    or holds, so a path it cannot place (a relative one) is taken to be under its prefix;
    an `allow` takes it to be outside."""
    first, *rest = path.split(".")

    def value(facts: dict[str, Any]) -> Any:
        v: Any = facts.get(first)  # (the facts are a dict: the link's own)
        for k in rest:
            if not isinstance(v, dict) or k not in v:
                return None
            v = v[k]
        return v

    # (a top-level fact, a model call's: read with no Python frame a test)
    read: Callable[[dict[str, Any]], Any] = value if rest else methodcaller("get", first)

    if test.under is not None:
        prefix = canonical_path(test.under) or test.under  # (absolute: PolicyTest.check)
        inside = prefix.rstrip("/") + "/"

        def under(arguments: dict[str, Any]) -> bool:
            v = read(arguments)
            if not isinstance(v, str):
                return False
            p = canonical_path(v)  # a `..` leaves the prefix as the file system would
            if p is None:
                return strict
            return p == prefix or p.startswith(inside)
        return under
    if test.in_ is not None:
        among = frozenset(canonical_host(x) for x in test.in_)
        # a list naming no address (no host of it `addressed`) has no value's address
        # among it, whatever the address: a value is not parsed as one (text of digits
        # was, at each call, an inet_aton spelling tried)
        host = canonical_host if any(map(addressed, among)) else host_text

        def in_(arguments: dict[str, Any]) -> bool:
            v = read(arguments)
            return isinstance(v, str) and host(v) in among
        return in_
    bound = test.below
    assert bound is not None  # (a test is exactly one of the three: PolicyTest.check)

    def below(arguments: dict[str, Any]) -> bool:
        v = read(arguments)
        return type(v) in _NUMBERS and v < bound  # (JSON's numbers: a bool is none)
    return below


class _Rule(NamedTuple):
    verdict: RuleEffect
    tenant: Callable[[str], bool]
    agent: Callable[[str], bool]
    tool: Callable[[str], bool]  # a rule naming a model matches no tool call
    model: Callable[[str], bool]  # and one naming a tool no model call
    tests: tuple[Callable[[dict[str, Any]], bool], ...]

    def named(self, kind: str, name: str) -> bool:
        return self.tool(name) if kind == "tool" else self.model(name)


def _never(_: str) -> bool:
    return False


def _tenant_glob(match: PolicyMatch, operators: bool) -> Callable[[str], bool]:
    """The tenants a rule matches. An agent's name is its tenant's caller's to choose: an
    operator's rule naming agents (other than `*`) and no tenant matches the operator's
    own agents, the default tenant's, alone — else a tenant naming its agent to fit an
    `allow` written for the operator's (`ops-*`) took that allow."""
    if operators and match.tenant is None and match.agent not in (None, "*"):
        return _glob(DEFAULT_TENANT)
    return _glob(match.tenant)


def _compile(rules: list[PolicyRule], where: str) -> tuple[_Rule, ...]:
    return tuple(_Rule(
        RuleEffect(r.effect, r.name or f"{where}[{i}]"),
        _tenant_glob(r.match, where == OPERATORS), _glob(r.match.agent),
        _never if r.match.model is not None and r.match.tool is None
        else _glob(r.match.tool),
        _never if r.match.tool is not None and r.match.model is None
        else _glob(r.match.model),
        tuple(_test(k, t, r.effect != "allow") for k, t in r.when.items()))
        for i, r in enumerate(rules))


class _List:
    """One list of rules, its first match the verdict."""

    def __init__(self, rules: tuple[_Rule, ...], default: str) -> None:
        self.rules = rules
        self.default = RuleEffect(default, "")

    def could(self, tenant: str, agent: str, kind: str, name: str) -> tuple[_Rule, ...]:
        """The rules that could match a call of (tenant, agent, kind, name): a call tests
        only their `when`."""
        return tuple(r for r in self.rules
                     if r.tenant(tenant) and r.agent(agent) and r.named(kind, name))


def _first(cands: tuple[_Rule, ...], facts: dict[str, Any], default: RuleEffect
           ) -> RuleEffect:
    for r in cands:
        for test in r.tests:
            if not test(facts):
                break
        else:
            return r.verdict
    return default


class _Plan(NamedTuple):
    """What judges a call of one (tenant, agent, kind, name), found once: the operator's
    rules that could match it, its tenant's list and theirs (`spec` the tenant's
    [tenants.NAME] they were found under: another spec finds them again), and the name's
    marks."""

    spec: TenantSpec | None
    operator: tuple[_Rule, ...]
    own: _List | None
    theirs: tuple[_Rule, ...]
    sensitive: bool
    untrusted: bool  # (a tool's alone)

    def judge(self, facts: dict[str, Any], default: RuleEffect) -> RuleEffect:
        """`default`: the operator's list's."""
        verdict = default
        for r in self.operator:  # (`_first`'s, inline: every call judged passes here)
            for test in r.tests:
                if not test(facts):
                    break
            else:
                verdict = r.verdict
                break
        own = self.own
        if own is not None:
            theirs = _first(self.theirs, facts, own.default)
            if EFFECTS.index(theirs.effect) > EFFECTS.index(verdict.effect):
                return theirs
        return verdict


class RuleBook:
    """A config's rules and marks, compiled."""

    def __init__(self, cfg: Config) -> None:
        self.operator = _List(_compile(cfg.policy, OPERATORS), "allow")
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
        self._sensitive_models = frozenset(n for n, m in cfg.models.items() if m.sensitive)
        # a label changes no verdict where nothing is sensitive: none is read then
        self.any_sensitive = bool(sensitive or self._sensitive_models)
        # a tool's marks by its name, (untrusted, sensitive), read once
        self._marks: dict[str, tuple[bool, bool]] = {}
        # (tenant, agent, kind, name) -> its _Plan
        self._plans: dict[tuple[str, str, str, str], _Plan] = {}

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

    def plan(self, tenant: str, spec: TenantSpec | None, agent: str, kind: str, name: str
             ) -> _Plan:
        """A call's `_Plan`, kept for the next call of the same (`spec`: its tenant's
        [tenants.NAME] now, None if none)."""
        key = (tenant, agent, kind, name)
        plan = self._plans.get(key)
        if plan is not None and plan.spec is spec:
            return plan
        if len(self._plans) >= CACHED:
            self._plans.clear()
        own = self._tenant(tenant, spec)
        plan = _Plan(spec, self.operator.could(tenant, agent, kind, name), own,
                     own.could(tenant, agent, kind, name) if own is not None else (),
                     self.sensitive(kind, name), kind == "tool" and self.untrusted(name))
        if len(name) <= NAME_CACHED:
            self._plans[key] = plan
        return plan

    def judge(self, tenant: str | None, spec: TenantSpec | None, agent: str, kind: str,
              name: str, facts: dict[str, Any]) -> RuleEffect:
        """The call's verdict (`kind`: "tool" or "model"; `spec`: its tenant's
        [tenants.NAME], None if none)."""
        return self.plan(tenant or DEFAULT_TENANT, spec, agent, kind, name).judge(
            facts, self.operator.default)

    def _marks_of(self, tool: str) -> tuple[bool, bool]:
        marks = self._marks.get(tool)
        if marks is None:
            if len(self._marks) >= CACHED:
                self._marks.clear()
            marks = (self._untrusted(tool), self._sensitive(tool))
            if len(tool) <= NAME_CACHED:
                self._marks[tool] = marks
        return marks

    def untrusted(self, tool: str) -> bool:
        return self._marks_of(tool)[0]

    def sensitive(self, kind: str, name: str) -> bool:
        return self._marks_of(name)[1] if kind == "tool" else name in self._sensitive_models


def _any(patterns: list[str]) -> Callable[[str], bool]:
    if not patterns:
        return lambda _: False
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)
                      ).match  # type: ignore[return-value]


def _rule_said(rule: str) -> str:
    """A rule's name as a refusal's target says it ("default_deny" its own words)."""
    return rule if rule == "default_deny" else f"policy rule {rule}"


# how deep a call's arguments are shown (a shape, an audit row): below it "...", as the
# doors' decoders take arguments nested deeper than a walk of the interpreter's stack can
# go, and a denied call must still be refused with its rule's words and its row written
SHOWN_DEPTH = 32


def shape(value: Any, depth: int = 0) -> Any:
    """Arguments by shape only, for a log or a trace: keys and types, never values."""
    if isinstance(value, dict):
        return {str(k): shape(v, depth + 1) for k, v in value.items()} \
            if depth < SHOWN_DEPTH else "..."
    if isinstance(value, list):
        return [shape(v, depth + 1) for v in value[:3]] + (["..."] if len(value) > 3 else []) \
            if depth < SHOWN_DEPTH else "..."
    return type(value).__name__


class PolicyVerdict(NamedTuple):
    """A verdict a rule (or taint, or a tenant's default_deny) gave, as the trace and
    the audit log keep it: the call's facts by shape only, never their values."""

    owner: str  # the task's id, or the replica's incarnation's (replicacalls.py)
    replica: str  # its label, NAME#N
    tenant: str | None
    kind: str  # "tool" | "model"
    name: str
    effect: str
    rule: str  # the rule's name, "taint (after untrusted TOOL)", or "default_deny"
    shape: str  # JSON of the facts' shape (keys and types)


class VerdictSink(Protocol):
    def policy_decision(self, task: Task, decision: PolicyVerdict) -> None: ...


class PolicyGuard:
    """The daemon's policy in force and the labels its untrusted tools gave (labels.py):
    one for every path a call comes by, so a tool's output read by one path taints a call
    made by another. `audit`: where a decision that holds a call is written, and one
    that denies it when there is no `refusals`; `refusals`: the boundary's recorder, told
    of each call a rule denies (its audit row that one's: one row a refusal) and of each
    held call a person did not approve (`not_approved`)."""

    def __init__(self, cfg: Config, tracer: VerdictSink | None = None,
                 audit: Callable[[PolicyVerdict], None] | None = None,
                 refusals: BoundaryRefusals | None = None) -> None:
        self.rules = RuleBook(cfg)  # of the config in force
        self.labels = Labels()
        self._tracer = tracer
        self._audit = audit
        self._refusals = refusals

    def configure(self, cfg: Config) -> None:
        """A reload's config in force from now on: its rules compiled now, not looked
        for at each call."""
        self.rules = RuleBook(cfg)

    def reads_labels(self, task: Task) -> bool:
        """Whether the task's labels are to be read from its home before its call is
        judged: not read yet, and some tool or model of the config in force sensitive."""
        if self.labels.loaded(task):
            return False
        return self.rules.any_sensitive

    def judge(self, owner: str | Callable[[], str], replica: Replica, tenant: str | None,
              kind: str, name: str, facts: dict[str, Any], task: Task | None = None,
              spec: TenantSpec | None = UNREAD) -> RuleEffect:
        """A call's verdict by the rules, and taint's: a sensitive call by an owner an
        untrusted tool's output reached waits for a person though the rules allow it. An
        untrusted tool's call taints its owner as it is made. `owner`: its name, or how
        to find it, where a verdict is kept (most calls' is not); `spec`: the tenant's
        [tenants.NAME] (None: none) where the caller read it already, else read here."""
        rules = self.rules
        if spec is UNREAD:
            spec = replica.host.tenant_spec(tenant) if tenant is not None else None
        plan = rules.plan(tenant or DEFAULT_TENANT, spec, replica.name, kind, name)
        verdict = plan.judge(facts, rules.operator.default)
        if plan.sensitive and verdict.effect == "allow":  # (most names are neither marked)
            read = self.labels.of(replica, task)
            if read:
                verdict = RuleEffect("approve", f"{TAINT} (after untrusted {read[0]})")
        if plan.untrusted and verdict.effect != "deny":
            self.labels.mark(replica, task, (name,))
        # an allow by no rule is no decision, and a traced allow's span needs a tracer
        if verdict.effect != "allow" or (task is not None and verdict.rule
                                         and self._tracer is not None):
            self._record(PolicyVerdict(
                owner if isinstance(owner, str) else owner(), replica.label, tenant, kind,
                name, verdict.effect, verdict.rule or "default_deny",
                json.dumps(shape(facts), sort_keys=True)), replica, task)
        return verdict

    def judge_client(self, client: GatewayClient, name: str, facts: dict[str, Any]
                     ) -> RuleEffect:
        """A gateway client's tool call (no agent's: decision 1641) by the operator's
        rules and its tenant's, as the agent it speaks as (`client.agent`, "" for none:
        a rule naming agents matches no other client). No label: taint is a task's or
        a replica's, and a client has neither."""
        verdict = self.rules.judge(client.tenant, client.spec, client.agent, "tool", name,
                                   facts)
        if verdict.effect == "allow":
            return verdict
        rule = verdict.rule or "default_deny"
        if verdict.effect == "deny" and self._refusals is not None:
            self._refusals.refused(client.name, "policy", f"{name} ({_rule_said(rule)})",
                                   tenant=client.tenant)
        elif self._audit is not None:
            self._audit(PolicyVerdict(client.owner or client.name, client.name,
                                      client.tenant, "tool", name, verdict.effect, rule,
                                      json.dumps(shape(facts), sort_keys=True)))
        return verdict

    def _record(self, d: PolicyVerdict, replica: Replica, task: Task | None) -> None:
        if task is not None and self._tracer is not None:
            self._tracer.policy_decision(task, d)
        if d.effect == "allow":
            return
        replica.note(f"policy: {d.effect} {d.kind} call {d.name} by {d.rule} for "
                     f"{d.owner}; {d.shape}")
        if d.effect == "deny" and self._refusals is not None:
            self._refusals.refused(replica.name, "policy", f"{d.name} ({_rule_said(d.rule)})",
                                   task=task.id if task is not None else None,
                                   tenant=d.tenant)
        elif self._audit is not None:
            self._audit(d)

    def not_approved(self, caller: str, task: Task | None, tenant: str | None,
                     name: str, why: str, timed_out: bool) -> None:
        """A call held for a person (`why`: the rule or taint holding it, "" when the
        agent's `approve`) that a person denied, or did not decide in time: the
        boundary's refusal, naming its `caller` (its agent's name, or a gateway client's),
        of kind taint when taint held it."""
        if self._refusals is not None:
            end = "not approved in time" if timed_out else "denied"
            self._refusals.refused(caller, "taint" if why.startswith(TAINT) else
                                   "policy", f"{name} ({why or 'approve'}: {end})",
                                   task=task.id if task is not None else None,
                                   tenant=tenant)

    def replayed(self, task: Task, tool: str) -> None:
        """A tool call's answer given back from a task's step journal (a retry after a
        restart): an untrusted one taints as the live call did."""
        if self.rules.untrusted(tool):
            self.labels.mark(task.replica, task, (tool,))
