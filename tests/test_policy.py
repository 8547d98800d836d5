"""Policy rules on every call (docs/security.md#policy-rules): a real daemon, a real SDK
agent (examples/misbehave.py) calling a real MCP server (tests/servers/policy_mcp.py)
under `[[policy]]` rules on the tool's arguments. A rule's `deny` is the tool's error
naming the rule; its `approve` asks a person (approved: the call is made; denied: the
tool's error); a tenant's `default_deny` closes what no rule of its allows, and the
operator's `allow` does not open it; a benign agent's calls all pass 20 rules."""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.supervisor.config import ConfigError
from corral.supervisor.configload import load_config

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon, shared_tmpdir
from .test_daemon_cli import wait_until

HERE = Path(__file__).parent


def agent(name: str, tenant: str = "default") -> str:
    return textwrap.dedent(f"""
        [agents.{name}]
        command = ["{PY}", "{EXAMPLES}/misbehave.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tools = ["pol__*"]
        tenant = "{tenant}"
        stop_timeout = 10.0
    """)


SERVER = textwrap.dedent(f"""
    [mcp_servers.pol]
    command = ["{PY}", "{HERE}/servers/policy_mcp.py"]
    shared = true
""")

RULES = textwrap.dedent("""
    [[policy]]
    name = "writes stay in the workspace"
    match = { tool = "pol__write_file" }
    when = { "arguments.path" = { under = "/workspace" } }
    effect = "allow"

    [[policy]]
    name = "no write elsewhere"
    match = { tool = "pol__write_file" }
    effect = "deny"

    [[policy]]
    name = "small payments"
    match = { tool = "pol__pay" }
    when = { "arguments.amount" = { below = 100 } }
    effect = "allow"

    [[policy]]
    name = "a person pays the rest"
    match = { tool = "pol__pay" }
    effect = "approve"
""")


def call(tool: str, **arguments: Any) -> dict[str, Any]:
    return {"do": "tools", "tool": f"pol__{tool}", "arguments": arguments}


def made(tool: str, **arguments: Any) -> str:
    """What the server answers of a call it was given."""
    return f"{tool.removeprefix('pol__')} {json.dumps(arguments, sort_keys=True)}"


def text_of(done: dict[str, Any]) -> tuple[bool, str]:
    assert done["status"] == "succeeded", done
    [result] = done["output"]
    return bool(result.get("isError")), result["content"][0]["text"]


def wait_for(fn: Callable[[], Any], what: str) -> Any:
    return wait_until(fn, 30.0, what)


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = Daemon(shared_tmpdir(), agent("worker") + SERVER + RULES)
    try:
        d.start()
        yield d
    finally:
        d.close()


def run(d: Daemon, input: dict[str, Any], agent: str = "worker") -> tuple[bool, str]:
    return text_of(d.ask("tasks.run", {"agent": agent, "input": input}))


@pytest.mark.deadline(180)
def test_a_rule_on_an_argument_denies_and_approves_as_written(daemon: Daemon) -> None:
    d = daemon
    # inside the prefix: allowed, made as asked
    assert run(d, call("write_file", path="/workspace/a.txt", text="hi")) == (
        False, made("write_file", path="/workspace/a.txt", text="hi"))
    # a `..` out of it, another path, no path at all: the next rule denies, named
    for args in ({"path": "/workspace/../etc/passwd"}, {"path": "/etc/passwd"},
                 {"text": "no path"}, {"path": 7}):
        assert run(d, call("write_file", **args)) == (
            True, "tool call pol__write_file is denied by policy rule no write elsewhere"
        ), args
    assert d.ask("approvals.list")["asks"] == []
    # the log says which rule, and the arguments' shape, never their values
    wait_for(lambda: "policy: deny tool call pol__write_file by no write elsewhere for "
                     in d.cli("logs", "worker").stdout, "the decision in the log")
    logged = d.cli("logs", "worker").stdout
    assert '{"arguments": {"path": "str"}}' in logged and "/etc/passwd" not in logged
    # below the bound: allowed; at or above it: a person decides
    assert run(d, call("pay", amount=99.5)) == (False, made("pay", amount=99.5))
    task_id = d.ask("tasks.submit", {"agent": "worker",
                                     "input": call("pay", amount=100)})["task_id"]
    [ask] = wait_for(lambda: d.ask("approvals.list")["asks"], "the payment's ask")
    assert ask["task_id"] == task_id
    assert ask["subject"] == {"tool": "pol__pay", "arguments": {"amount": 100},
                              "policy": "a person pays the rest"}
    assert d.cli("approvals", "approve", ask["id"]).returncode == 0
    assert text_of(d.ask("tasks.get", {"task_id": task_id, "wait": True})) == (
        False, made("pay", amount=100))
    # denied: the agent reads the tool's error, nothing is paid
    task_id = d.ask("tasks.submit", {"agent": "worker",
                                     "input": call("pay", amount=5000)})["task_id"]
    [ask] = wait_for(lambda: d.ask("approvals.list")["asks"], "the second ask")
    assert d.cli("approvals", "deny", ask["id"], "--reason", "too much").returncode == 0
    error, said = text_of(d.ask("tasks.get", {"task_id": task_id, "wait": True}))
    assert error and re.fullmatch(rf"tool call pol__pay was denied by uid \d+ pid \d+ "
                                  rf"\(ask {ask['id']}\): too much", said), said


@pytest.mark.deadline(180)
def test_a_tenants_default_deny_closes_what_its_rules_do_not_allow() -> None:
    tenant = textwrap.dedent("""
        [tenants.acme]
        default_deny = true

        [[tenants.acme.policy]]
        match = { tool = "pol__http_get" }
        when = { "arguments.host" = { in = ["api.example.com"] } }
        effect = "allow"
    """)
    # the operator allows every pay: that does not open the tenant's default deny
    everything = '\n[[policy]]\nname = "pay"\nmatch = { tool = "pol__pay" }\n' \
                 'effect = "allow"\n'
    d = Daemon(shared_tmpdir(), agent("worker") + agent("inside", "acme") + SERVER +
               tenant + everything)
    try:
        d.start()
        assert run(d, call("http_get", host="API.example.com"), "inside") == (
            False, made("http_get", host="API.example.com"))
        assert run(d, call("http_get", host="evil.example"), "inside") == (
            True, "tool call pol__http_get is denied: its tenant's policy is default_deny")
        assert run(d, call("pay", amount=1), "inside") == (
            True, "tool call pol__pay is denied: its tenant's policy is default_deny")
        # another tenant's agent is not under acme's rules
        assert run(d, call("http_get", host="evil.example")) == (
            False, made("http_get", host="evil.example"))
    finally:
        d.close()


@pytest.mark.deadline(180)
def test_a_benign_agents_calls_all_pass_twenty_rules() -> None:
    """The rules of an operator guarding other tools and other agents, and the benign
    agent's own calls inside what they allow: none is blocked, none asks."""
    others = "".join(
        f'\n[[policy]]\nname = "guard {i}"\nmatch = {{ agent = "other{i}*", '
        f'tool = "pol__*" }}\neffect = "deny"\n' for i in range(16))
    d = Daemon(shared_tmpdir(), agent("worker") + SERVER + RULES + others)
    try:
        d.start()
        calls = [call("write_file", path="/workspace/x/y.txt", text="t"),
                 call("pay", amount=3), call("http_get", host="example.com"),
                 call("send_mail", to="me@example.com", body="report"),
                 call("fetch", url="https://example.com"), call("read_mail")]
        for c in calls:
            assert run(d, c) == (False, made(c["tool"], **c["arguments"])), c
        assert d.ask("approvals.list")["asks"] == []
    finally:
        d.close()


@pytest.mark.deadline(180)
def test_each_decision_is_in_the_tasks_trace_and_a_denial_in_the_audit_log() -> None:
    """A rule's allow and its deny are spans of the task's attempt; the deny is the
    boundary's refusal besides (`boundary.refused` of kind policy, its one audit row:
    the agent its caller); the arguments by shape, never values."""
    d = Daemon(shared_tmpdir(), agent("worker") + SERVER + RULES +
               "\n[tracing]\nexport_interval = 0.05\n")
    try:
        d.start()
        done = d.ask("tasks.run", {"agent": "worker", "input": {"do": "sequence", "calls": [
            {"tool": "pol__write_file", "arguments": {"path": "/workspace/a", "text": "s3"}},
            {"tool": "pol__write_file", "arguments": {"path": "/etc/passwd", "text": "x"}},
        ]}})
        assert [r["isError"] for r in done["output"]] == [False, True], done

        def policy_spans() -> list[dict[str, Any]]:
            shown = d.cli("trace", done["task_id"], "--json")
            if shown.returncode != 0:
                return []
            spans = json.loads(shown.stdout)["spans"]
            return [s for s in spans if s["name"] == "policy pol__write_file"]
        spans = wait_for(lambda: len(policy_spans()) == 2 and policy_spans(), "the spans")
        shape = '{"arguments": {"path": "str", "text": "str"}}'
        assert [{k: s["attributes"][f"corral.policy.{k}"] for k in ("effect", "rule",
                                                                     "shape")}
                for s in spans] == [
            {"effect": "allow", "rule": "writes stay in the workspace", "shape": shape},
            {"effect": "deny", "rule": "no write elsewhere", "shape": shape}]
        rows = [e for e in d.json("audit")["entries"]
                if e["method"] in ("policy", "boundary.refused")]
        assert [(r["method"], r["who"], r["outcome"], r["tenant"]) for r in rows] == [
            ("boundary.refused", "agent worker", "refused", "default")], rows
        assert rows[0]["params"] == {
            "agent": "worker", "task": done["task_id"], "kind": "policy",
            "target": "pol__write_file (policy rule no write elsewhere)", "unsaid": 0}
        assert "/etc/passwd" not in json.dumps(d.json("audit"))
    finally:
        d.close()


@pytest.mark.parametrize(("table", "said"), [
    ('[[policy]]\nwhen = { "path" = { under = "/w" } }\neffect = "deny"\n',
     "policy[0]: when: 'path' is neither arguments.KEY nor max_tokens"),
    ('[[policy]]\nwhen = { "arguments.n" = { under = "/w", below = 3 } }\neffect = "deny"\n',
     "policy[0]: a when test takes exactly one of under, in, below (given: under, below)"),
    ('[[policy]]\nwhen = { "arguments.n" = {} }\neffect = "deny"\n',
     "policy[0]: a when test takes exactly one of under, in, below (given: none)"),
    ('[tenants.acme]\n[[tenants.acme.policy]]\nwhen = { "max_tokens" = { in = [] , '
     'below = 1 } }\neffect = "allow"\n',
     "tenants.acme: policy[0]: a when test takes exactly one of under, in, below "
     "(given: in, below)"),
])
def test_a_bad_rule_is_refused_at_load_naming_it(tmp_path: Path, table: str,
                                                 said: str) -> None:
    path = tmp_path / "corral.toml"
    path.write_text(table)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: {said}"


def test_a_rule_without_an_effect_or_with_another_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "corral.toml"
    path.write_text('[[policy]]\nmatch = { tool = "x" }\neffect = "maybe"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (f"{path}: policy[0].effect: Invalid enum value 'maybe' "
                              "(valid: 'allow', 'approve', 'deny')")
    path.write_text('[[policy]]\nmatch = { tool = "x" }\n\n[[policy]]\neffect = "deny"\n'
                    'match = { tol = "x" }\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).splitlines() == [
        f"{path}: policy[0]: Object missing required field `effect`",
        f"{path}: policy[1].match: Object contains unknown field `tol` (did you mean "
        f"`tool`?)"], err.value
    path.write_text("policy = 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: policy: expected an array of tables ([[policy]])"


@pytest.mark.deadline(180)
def test_a_reload_judges_by_the_new_rules(daemon: Daemon) -> None:
    """The rules are compiled from the config in force: a reload that turns the deny
    into an allow, then one that adds a tenant's default_deny, is what the next call is
    judged by."""
    d = daemon
    assert run(d, call("write_file", path="/etc/passwd"))[0] is True
    d.config.write_text(d.config.read_text().replace('effect = "deny"', 'effect = "allow"'))
    reloaded = d.cli("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert run(d, call("write_file", path="/etc/passwd")) == (
        False, made("write_file", path="/etc/passwd"))
    d.config.write_text(d.config.read_text() + '\n[tenants.default]\ndefault_deny = true\n')
    reloaded = d.cli("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert run(d, call("http_get", host="a")) == (
        True, "tool call pol__http_get is denied: its tenant's policy is default_deny")
