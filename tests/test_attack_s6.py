"""The reviewer's and attacker's pass over session 6's landed changes (decisions 1690,
1691 and 1692: an agent called at /mcp/corral judged by the chain's view link alone, a
skill read a Call of the one chain, a gateway door's limits). Each test is a behaviour
the tree before (3ce62fd6) had, or a hole either tree has, read with real daemons and a
replica's own token; a hole not yet closed in its owner's file is a strict xfail that
names it (docs/security.md, /work/notes's note to its owner)."""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc

from .conftest import ROOT
from .daemon_harness import PY, Daemon, running_daemon, shared_tmpdir
from .mcp_post import rpc as post

SKILLS = "io.modelcontextprotocol/skills"
AGENT = ROOT / "tests" / "doors" / "door_agent.py"
EXAMPLE = ROOT / "examples" / "skills"
NOTES = "skill://corral/release-notes/SKILL.md"
MISBEHAVE = ROOT / "examples" / "misbehave.py"
# a tokens-file client of one call a minute, its allowlist one of the operator's skills
RATED, RATED_TOKEN = "rated", "attack-s6-token-of-a-client-of-one-call-a-minute"
# a tokens-file client whose allowlist names one agent
PLAIN, PLAIN_TOKEN = "plain", "attack-s6-token-of-a-client-of-one-agent"


def rpc(url: str, token: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """One request at `url` with `token` (none: anonymous), skills' extension declared."""
    return post(url, token, method, params, {"extensions": {SKILLS: {}}})


def replica_env(d: Daemon, agent: str) -> tuple[str, str]:
    """The gateway address and token the agent's replica was given (its task tells)."""
    env = d.ask("tasks.run", {"agent": agent, "input": {"env": True}})["output"]
    return env["CORRAL_MCP_URL"], env["CORRAL_MCP_TOKEN"]


def api_tokens(d: Daemon, prefix: str) -> dict[str, str]:
    """Two API tokens of scope mcp:call, as `token ops-glob` (agents `ops-*`) and `token
    acme` (tenant acme): the callers a less trusted party holds by the operator's hand."""
    made = {"ops-glob": ("--agents", "ops-*"), "acme": ("--tenant", "acme")}
    return {f"token {name}": d.json("token", "create", f"{prefix}-{name}", "--scope",
                                    "mcp:call", *how)["token"] for name, how in made.items()}


@pytest.fixture(scope="module")
def skills_daemon() -> Iterator[Daemon]:
    """A daemon serving the operator's own skills (examples/skills, server `corral`); an
    agent `reader` whose allowlist admits every tool and which spawns no agent, and one,
    `caller`, whose allowlist names more agents than its `spawns`; three agents to call,
    one of them tenant acme's; two tokens-file clients."""
    tmp = shared_tmpdir()
    skills = tmp / "skills"
    shutil.copytree(EXAMPLE, skills)
    tokens = tmp / "tokens.toml"
    tokens.write_text(f"[clients.{RATED}]\n"
                      f'token_sha256 = "{hashlib.sha256(RATED_TOKEN.encode()).hexdigest()}"\n'
                      'tools = ["corral__release-notes"]\nrate_per_minute = 1\n\n'
                      f"[clients.{PLAIN}]\n"
                      f'token_sha256 = "{hashlib.sha256(PLAIN_TOKEN.encode()).hexdigest()}"\n'
                      'tools = ["corral__target"]\n')
    echo = f'command = ["{PY}", "{MISBEHAVE}"]\nenv = {{ PYTHONPATH = "{ROOT}" }}\n'
    with running_daemon(tmp, f"""
[agents.reader]
command = ["{PY}", "{AGENT}"]
env = {{ PYTHONPATH = "{ROOT}" }}
stop_timeout = 10.0
tools = ["*"]

[agents.caller]
command = ["{PY}", "{AGENT}"]
env = {{ PYTHONPATH = "{ROOT}" }}
stop_timeout = 10.0
tools = ["corral__target", "corral__ops-*"]
spawns = ["target"]

[agents.target]
{echo}
[agents.ops-1]
{echo}
[tenants.acme]

[agents.acme-1]
{echo}tenant = "acme"

[gateway]
listen = "127.0.0.1:0"
skills_dir = "{skills}"
tokens_file = "{tokens}"
anonymous_tools = ["*"]
""") as d:
        yield d
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.deadline(120)
def test_an_agent_reads_the_operators_skills_its_allowlist_admits_whatever_it_spawns(
        skills_daemon: Daemon) -> None:
    """The operator's own skills are the server `corral`'s (OWN = AGENTS_VIEW), so a skill
    read is a Call named `corral__SKILL`, the name an agent called as a tool has. Decision
    1690 judges a replica's `spawns` in the view link for every `corral__` name, and 1691
    sends skill reads through that link: an agent whose allowlist admits the skill, and
    which spawns nothing, was refused its read (and its list left it out) as though it
    had asked to start a task of an agent named `release-notes`. On 3ce62fd6 it read it."""
    url, token = replica_env(skills_daemon, "reader")
    listed = rpc(url, token, "skills/list", {})
    assert [s["uri"] for s in listed["result"]["skills"]] == [
        "skill://corral/incident-review/SKILL.md", NOTES], listed
    got = rpc(url, token, "skills/get", {"uri": NOTES})
    assert got.get("result", {}).get("skill", {}).get("uri") == NOTES, got
    file = rpc(url, token, "resources/read", {"uri": NOTES})
    assert file.get("result", {}).get("contents", [{}])[0].get("uri") == NOTES, file


@pytest.mark.deadline(120)
def test_a_skill_read_takes_a_token_of_its_clients_rate_as_every_audited_call_does(
        skills_daemon: Daemon) -> None:
    """Decision 1691 made a skill read a call whose audit link writes a `gateway.call`
    row (a refused one a daemon log line too); decision 1692 says every gateway door's
    part is one `_limited`: a slot and a token of the client's rate. A read takes its
    slot but no token, so a client of one call a minute reads (and is audited) as fast
    as it likes: its rows join its party's share of tool-call rows (store.py `_prune`),
    whose oldest they push out, past the bound its operator set."""
    d = skills_daemon
    url = d.ask("gateway.status", {})["url"]
    first = rpc(url, RATED_TOKEN, "skills/get", {"uri": NOTES})
    assert first.get("result", {}).get("skill", {}).get("uri") == NOTES, first
    again = rpc(url, RATED_TOKEN, "skills/get", {"uri": NOTES})
    assert again.get("error") == {
        "code": jsonrpc.REFUSED,
        "message": f"gateway client {RATED} is over its rate of 1 call a minute"}, again


def test_the_importers_sandbox_binds_no_etc_and_no_more_of_the_system(
        tmp_path: Path) -> None:
    """5801b2be wrote the system's binds once (sandbox.system_args) and the importer's
    node sandbox calls it with its own names, which leave /etc (the host's secrets) out.
    Its JavaScript tests cannot tell: node's permission model refuses a read of
    /etc/passwd before the sandbox is reached, so a jsbox that bound the agents'
    names would pass them all. Read from its command line: what it binds of the system."""
    jsbox = pytest.importorskip("corral.importer.jsbox")
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    node = shutil.which("node") or "/usr/bin/node"
    args = jsbox.argv(node, tmp_path, "--permission", "0", "file:///x.js", 3)
    bound = [args[i + 2] for i, a in enumerate(args)
             if a in ("--ro-bind", "--ro-bind-try", "--bind", "--symlink", "--dev-bind")]
    assert not [b for b in bound if b == "/etc" or b.startswith("/etc/")], args
    system = {b for b in bound if b.count("/") == 1 and b != str(tmp_path)}
    assert system <= {f"/{n}" for n in jsbox.SYSTEM}, (system, args)
    assert {"/usr", "/bin", "/lib"} <= system, args


@pytest.mark.parametrize("package", ["corral.supervisor", "corral.supervisor.tasks"])
def test_a_star_import_of_a_lazy_package_gives_every_name_it_lists(package: str) -> None:
    """39489905 took the lazy packages' `__all__` away (their names listed once in
    MODULES, re-exported to mypy by TYPE_CHECKING imports): with no `__all__`, `import *`
    takes only the names a module's globals already hold, and a lazy package holds none
    until each is asked for, so `from corral.supervisor import *` gave no Supervisor,
    State or AgentSpec (docs/guide.md's embedding names) while mypy, reading the
    re-exports, said it did. On 3ce62fd6 it gave them all."""
    got: dict[str, Any] = {}
    exec(f"from {package} import *", got)  # (the statement under test, in a fresh namespace)
    listed = {n for names in importlib.import_module(package).MODULES.values() for n in names}
    assert sorted(listed - set(got)) == []


AGENTS = ("target", "ops-1", "acme-1", "caller")


@pytest.mark.deadline(180)
def test_the_agents_listed_to_each_caller_are_those_its_calls_may_start(
        skills_daemon: Daemon) -> None:
    """Decision 1690: /mcp/corral's listing reads the view link's verdict, which alone
    judges the call. For each kind of caller a less trusted party holds (a tokens file's
    allowlist, an API token's agent glob, a tenant's token, an anonymous caller, a replica
    whose `spawns` name fewer agents than its allowlist), the agents listed are exactly
    those its call may start, and these are the ones the tree before (3ce62fd6) let it
    start (review's probe of both trees: the same verdicts, in other words)."""
    d = skills_daemon
    url = d.ask("gateway.status", {})["url"]
    tokens = api_tokens(d, "s6")
    callers = {PLAIN: PLAIN_TOKEN, "glob": tokens["token ops-glob"],
               "tenant": tokens["token acme"], "anonymous": "",
               "replica": replica_env(d, "caller")[1]}
    started = {"plain": ["target"], "glob": ["ops-1"], "tenant": ["acme-1"],
               "anonymous": [], "replica": ["target"]}
    for who, token in callers.items():
        listed = rpc(url + "/corral", token, "tools/list", {})
        names = sorted(t["name"] for t in listed.get("result", {}).get("tools", []))
        ran = []
        for agent in AGENTS:
            got = rpc(url + "/corral", token, "tools/call",
                      {"name": agent, "arguments": {"do": "echo"}})
            if "result" in got:
                ran.append(agent)
            else:
                assert got["error"]["code"] in (jsonrpc.TOOL_NOT_ALLOWED, jsonrpc.NOT_FOUND,
                                                jsonrpc.UNAUTHORIZED), (who, agent, got)
        assert (names, sorted(ran)) == (started[who], started[who]), (who, listed)


STAR, STAR_TOKEN = "star", "attack-s6-token-of-a-client-whose-allowlist-admits-all"


@pytest.fixture(scope="module")
def views_daemon() -> Iterator[Daemon]:
    """Tenant acme's MCP server `mine`; a tokens-file client of no tenant (the default
    tenant's) whose allowlist admits every name; an operator's rule denying `*__fetch`."""
    tmp = shared_tmpdir()
    tokens = tmp / "tokens.toml"
    tokens.write_text(f"[clients.{STAR}]\n"
                      f'token_sha256 = "{hashlib.sha256(STAR_TOKEN.encode()).hexdigest()}"\n'
                      'tools = ["*"]\n')
    with running_daemon(tmp, f"""
[tenants.acme]

[mcp_servers.mine]
command = ["{PY}", "{ROOT / "tests" / "servers" / "policy_mcp.py"}"]
tenant = "acme"

[[policy]]
name = "no fetch"
match = {{ tool = "*__fetch" }}
effect = "deny"

[gateway]
listen = "127.0.0.1:0"
tokens_file = "{tokens}"
""") as d:
        yield d
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.deadline(120)
def test_a_client_tells_no_other_tenants_server_from_none_under_a_rule_naming_both(
        views_daemon: Daemon) -> None:
    """Decision 1022 hides another tenant's servers from a gateway client; an allowlist
    of `*` (a tokens file's, an anonymous one) admits every name to the view link, which
    refuses one of another tenant's server there. A name of no server at all goes on past
    it to the rules: under a rule matching both names, the two answers differ, so one
    call a guess tells which servers another tenant has."""
    url = views_daemon.ask("gateway.status", {})["url"]
    said = {server: rpc(url, STAR_TOKEN, "tools/call",
                        {"name": f"{server}__fetch", "arguments": {}})
            for server in ("mine", "nosuch")}
    shown = {server: json.dumps({k: v for k, v in got.items() if k != "id"}).replace(
        server, "S") for server, got in said.items()}
    assert shown["mine"] == shown["nosuch"], said


@pytest.mark.deadline(180)
def test_the_skills_listed_to_each_caller_are_those_it_may_read(
        skills_daemon: Daemon) -> None:
    """Decision 1691: the skills' lists read the view link's verdict, which alone judges
    a read. For each kind of caller (a tokens file's allowlist, an API token's agent glob,
    a tenant's token, an anonymous caller, replicas), the operator's skills it is listed
    in skills/list and resources/list are exactly those its skills/get and resources/read
    are answered, whatever the view decides of a replica's `spawns`."""
    d = skills_daemon
    url = d.ask("gateway.status", {})["url"]
    callers = api_tokens(d, "s6-skills")
    callers.update({PLAIN: PLAIN_TOKEN, "anonymous": "",
                    "caller": replica_env(d, "caller")[1],
                    "reader": replica_env(d, "reader")[1]})
    both = ["skill://corral/incident-review/SKILL.md", NOTES]
    expected = {"token ops-glob": [], "token acme": both, PLAIN: [], "anonymous": both,
                "caller": [], "reader": both}
    for who, token in callers.items():
        listed = sorted(s["uri"] for s in rpc(url, token, "skills/list", {})["result"][
            "skills"])
        resources = sorted(r["uri"] for r in rpc(url, token, "resources/list", {})[
            "result"]["resources"] if r["uri"].startswith("skill://"))
        read = [uri for uri in both
                if "result" in rpc(url, token, "skills/get", {"uri": uri})
                and "result" in rpc(url, token, "resources/read", {"uri": uri})]
        assert listed == resources == read, (who, listed, resources, read)
        assert read == expected[who], (who, read)
