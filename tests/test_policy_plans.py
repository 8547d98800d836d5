"""A call's rules are found once a (tenant, agent, kind, name) and kept (policy.py's
`RuleBook.plan`, issue 90): what is kept never changes a verdict. A tenant's policy
changed (a new [tenants.NAME], as tenants.add and a reload make one) judges the next call
by its rules; a rule's `when` is judged on each call's own facts; a name past the cache's
bound is judged all the same. The rules are compiled from real config files."""

from __future__ import annotations

import textwrap
from pathlib import Path

from corral.supervisor import policy
from corral.supervisor.config import TenantSpec
from corral.supervisor.configload import load_config
from corral.supervisor.policy import RuleBook

OPERATOR = textwrap.dedent("""
    [[policy]]
    name = "no secret"
    match = { tool = "min__echo" }
    when = { "arguments.text" = { in = ["secret"] } }
    effect = "deny"

    [[policy]]
    name = "no long secret"
    match = { tool = "long__*" }
    when = { "arguments.text" = { in = ["secret"] } }
    effect = "deny"

    [tenants.acme]
""")
ACME_DENIES = textwrap.dedent("""
    [tenants.acme]
    [[tenants.acme.policy]]
    name = "acme: no echo"
    match = { tool = "min__echo" }
    effect = "deny"
""")


def tenant(tmp_path: Path, text: str, name: str = "acme") -> tuple[RuleBook, TenantSpec]:
    path = tmp_path / f"corral-{len(list(tmp_path.iterdir()))}.toml"
    path.write_text(text)
    cfg = load_config(path)
    return RuleBook(cfg), cfg.tenants[name]


def said(rules: RuleBook, spec: TenantSpec | None, text: str, tool: str = "min__echo"
         ) -> tuple[str, str]:
    verdict = rules.judge("acme", spec, "worker", "tool", tool, {"arguments": {"text": text}})
    return verdict.effect, verdict.rule


def test_a_tenants_policy_changed_judges_its_next_call(tmp_path: Path) -> None:
    rules, plain = tenant(tmp_path, OPERATOR)
    _, denying = tenant(tmp_path, ACME_DENIES)
    assert said(rules, plain, "hello") == ("allow", "")
    assert said(rules, denying, "hello") == ("deny", "acme: no echo")
    assert said(rules, plain, "hello") == ("allow", "")
    assert said(rules, None, "hello") == ("allow", "")


def test_a_rules_when_is_judged_on_each_calls_facts(tmp_path: Path) -> None:
    rules, plain = tenant(tmp_path, OPERATOR)
    assert said(rules, plain, "hello") == ("allow", "")
    assert said(rules, plain, "secret") == ("deny", "no secret")
    assert said(rules, plain, "SECRET") == ("deny", "no secret")
    assert said(rules, plain, "hello") == ("allow", "")


def test_names_past_the_caches_bound_are_judged_all_the_same(tmp_path: Path) -> None:
    rules, plain = tenant(tmp_path, OPERATOR)
    long = "long__" + "x" * policy.NAME_CACHED
    for i in range(policy.CACHED + 1):  # (the cache emptied once on the way)
        assert said(rules, plain, "secret", f"other{i}__tool") == ("allow", "")
    assert said(rules, plain, "secret") == ("deny", "no secret")
    for text, effect in (("secret", "deny"), ("hello", "allow"), ("secret", "deny")):
        assert said(rules, plain, text, long)[0] == effect
