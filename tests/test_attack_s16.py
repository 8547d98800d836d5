"""An attacker's pass over session 15's changes (docs/security.md keeps them): decision
2025's allowlist pattern compared as a name where it has no wildcard, against names that
spell a pattern's glob characters; and the allowlist's promise for a resource (docs/
protocol.md: `fs__file:///srv/*` admits only its resources under /srv) against a URI that
spells its way out. Real daemons, a real MCP server of files that serves a URI as a
naive one does (tests/servers/files_mcp.py), a tokens-file client at the gateway. A hole
not yet closed is a strict xfail that names it; one closed, a test of its refusal."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc
from corral.mcp.pool import allowed

from .cluster.harness import STEADY_TTL
from .conftest import ROOT
from .contract.home import KINDS, Home, made
from .daemon_harness import PY, Daemon, free_port, running_daemon, shared_tmpdir
from .mcp_post import rpc
from .test_daemon_cli import wait_until

SERVERS = Path(__file__).parent / "servers"
AGENT = Path(__file__).parent / "attack_s16_agent.py"
SPENDER = Path(__file__).parent / "attack_s16_spender.py"
SECRET = "the key of a file outside every allowlist"
# a tokens-file client and an agent of each allowlist: the files under pub/, pub/'s
# numbered reports
READER, READER_TOKEN = "reader", "attack-s16-token-of-a-reader-of-pub"
MONTHS, MONTHS_TOKEN = "months", "attack-s16-token-of-a-reader-of-numbered-reports"
TOKENS = {READER: READER_TOKEN, MONTHS: MONTHS_TOKEN}
# the doors a resource is read at: the agent's task on the worker link, a client at /mcp
READ_DOORS = ("worker", "/mcp client")


def client(name: str, token: str, tools: list[str]) -> str:
    return (f"[clients.{name}]\n"
            f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
            f"tools = {json.dumps(tools)}\n\n")


@pytest.fixture(scope="module")
def files() -> Iterator[tuple[Daemon, Path]]:
    """A daemon of MCP server `files` (tests/servers/files_mcp.py) over a directory whose
    pub/ two clients may read some of, and whose private/ holds SECRET; its gateway."""
    tmp = shared_tmpdir()
    (tmp / "pub").mkdir()
    (tmp / "private").mkdir()
    (tmp / "pub" / "readme.txt").write_text("public")
    (tmp / "pub" / "report-3.txt").write_text("the third report")
    (tmp / "pub" / "report-[0-9].txt").write_text("a file no pattern of reports admits")
    (tmp / "private" / "key.txt").write_text(SECRET)
    lists = {READER: [f"files__file://{tmp}/pub/*"],
             MONTHS: [f"files__file://{tmp}/pub/report-[0-9].txt"]}
    tokens = tmp / "tokens.toml"
    tokens.write_text("".join(client(n, TOKENS[n], tools) for n, tools in lists.items()))
    agents = "".join(f'[agents.{n}]\ncommand = ["{PY}", "{AGENT}"]\n'
                     f'env = {{ PYTHONPATH = "{ROOT}" }}\ntools = {json.dumps(tools)}\n\n'
                     for n, tools in lists.items())
    with running_daemon(tmp, agents + f"""
[mcp_servers.files]
command = ["{PY}", "{SERVERS}/files_mcp.py", "{tmp}"]

[gateway]
listen = "127.0.0.1:0"
tokens_file = "{tokens}"
""") as d:
        yield d, tmp


def read(d: Daemon, door: str, who: str, uri: str) -> dict[str, Any]:
    """`who`'s read of `uri` at `door`: by its agent's task, or by its client."""
    if door == "worker":
        said: dict[str, Any] = d.ask("tasks.run", {"agent": who, "input": {
            "server": "files", "uri": uri}})["output"]
        if "error" in said:  # (the agent's {"error": code, "message"}, as JSON-RPC's)
            return {"error": {"code": said["error"], "message": said["message"]}}
        return {"result": said}
    return rpc(d.ask("gateway.status", {})["url"], TOKENS[who], "resources/read",
               {"uri": uri})


def text_of(said: dict[str, Any]) -> str:
    text: str = said["result"]["contents"][0]["text"]
    return text


@pytest.mark.deadline(120)
@pytest.mark.parametrize("climb", ["pub/../private/key.txt", "pub/%2e%2e/private/key.txt",
                                   "pub/./../private/key.txt", "pub/%2e%2e%2fprivate/key.txt",
                                   "pub/%252e%252e/private/key.txt"])
@pytest.mark.parametrize("door", READ_DOORS)
def test_a_resource_uri_that_climbs_out_of_its_allowlists_directory_is_refused(
        files: tuple[Daemon, Path], door: str, climb: str) -> None:
    """docs/protocol.md: `fs__file:///srv/*` admits only a server's resources under /srv.
    The allowlist link matched the pattern on the URI as the caller wrote it, and
    fnmatch's `*` takes `/` and `..`: `file://ROOT/pub/../private/key.txt` was admitted by
    `files__file://ROOT/pub/*`, and a server that reads the path it is given (as a naive
    one does) answered the file outside pub/. At /mcp the URI must be one a server lists,
    or expand a template it lists (`file://ROOT/pub/{name}`, whose expression takes any
    characters); on the worker link, any URI of the server named. A URI with a dot
    segment, raw or escaped (twice, too), is refused for its caller's allowlist, naming
    the segment (decision 2051)."""
    d, tmp = files
    assert text_of(read(d, door, READER, f"file://{tmp}/pub/readme.txt")) == "public"
    said = read(d, door, READER, f"file://{tmp}/{climb}")
    assert said["error"] == {"code": jsonrpc.TOOL_NOT_ALLOWED, "message": (
        f"resource files__file://{tmp}/{climb} is not allowed: its URI has the dot segment "
        f"'{'.' if climb.startswith('pub/./') else '..'}', which no allowlist admits")}, said


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", READ_DOORS)
def test_a_uri_that_spells_its_allowlists_bracket_pattern_is_not_admitted_by_it(
        files: tuple[Daemon, Path], door: str) -> None:
    """Decision 2025 compared a name with the allowlist (`qualified in patterns`) before it
    matched the patterns with a wildcard, so a name that is a pattern's own text was
    admitted whether or not the pattern matches it: `report-[0-9].txt` admits report-3.txt
    and, after 2025, the file named `report-[0-9].txt`, which its class matches not (on
    the tree before, 5737a617, refused: fnmatch's semantics, which the decision says it
    keeps for a pattern with `*`, `?` or `[`). A name that spells a wildcard is now only
    matched (decision 2050): refused on the worker link by the allowlist, and at /mcp not
    listed to the client, so no server it may use lists it."""
    d, tmp = files
    assert text_of(read(d, door, MONTHS, f"file://{tmp}/pub/report-3.txt")) == \
        "the third report"
    uri = f"file://{tmp}/pub/report-[0-9].txt"
    said = read(d, door, MONTHS, uri)
    if door == "worker":
        assert said["error"] == {"code": jsonrpc.TOOL_NOT_ALLOWED, "message": (
            f"resource files__{uri} is not allowed (allowlist: "
            f"['files__{uri}'])")}, said
    else:
        assert said["error"] == {"code": jsonrpc.INVALID_PARAMS, "data": {"uri": uri},
                                 "message": f"resource {uri}: no server this client may "
                                            "use lists it"}, said


# names against patterns where a name's own text is a pattern: fnmatch's verdict is the one
# `allowed` keeps (a bracket class, a negated one, an unclosed bracket, `?`, `*`, case, and
# a name that is another spelling of the same letters, which neither normalizes)
CASES = [("srv__a[b]", "srv__a[b]"), ("srv__ab", "srv__a[b]"), ("srv__a[!b]", "srv__a[!b]"),
         ("srv__a[", "srv__a["), ("srv__a]", "srv__a]"), ("srv__a?", "srv__a?"),
         ("srv__a*", "srv__a*"), ("srv__[[]", "srv__[[]"), ("srv__[", "srv__[[]"),
         ("SRV__A", "srv__a"), ("srv__é", "srv__e\u0301"), ("srv__e\u0301", "srv__e\u0301"),
         ("srv__x\n", "srv__x"), ("srv__x", "srv__x\n"), ("srv__a[]b]", "srv__a[]b]")]


def test_allowed_is_fnmatchs_verdict_for_every_name_and_pattern() -> None:
    """`allowed` compares a pattern with no wildcard as a name (decision 2025): for every
    name, whatever characters it spells, its verdict is fnmatchcase's (a name that is the
    text of a bracket pattern was admitted by it: decision 2050)."""
    differ = [(name, p) for name, p in CASES
              if allowed(name, [p]) != fnmatch.fnmatchcase(name, p)]
    assert differ == [], differ


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[Daemon, str]]:
    """A daemon of MCP server `pol` (tests/servers/policy_mcp.py, shared), its HTTP API
    and /mcp on one address (its base URL given), a policy rule denying `pol__pay`, agent
    `web-1` whose allowlist is `pol__http_get`, and tenant acme of default_deny."""
    tmp, port = shared_tmpdir(), free_port()
    with running_daemon(tmp, f"""
[agents.web-1]
command = ["{PY}", "{ROOT}/examples/misbehave.py"]
env = {{ PYTHONPATH = "{ROOT}" }}
tools = ["pol__http_get"]

[mcp_servers.pol]
command = ["{PY}", "{SERVERS}/policy_mcp.py"]
shared = true

[[policy]]
name = "no pay"
match = {{ tool = "pol__pay" }}
effect = "deny"

[tenants.acme]
default_deny = true
""", extra=f'[http]\nlisten = "127.0.0.1:{port}"\n') as d:
        yield d, f"http://127.0.0.1:{port}"


def rest_call(base: str, token: str, tool: str, arguments: dict[str, Any]
              ) -> tuple[int, dict[str, Any]]:
    """POST /api/v1/tools/TOOL/call with `token`: the status and the JSON answered."""
    req = urllib.request.Request(f"{base}/api/v1/tools/{tool}/call", method="POST",
                                 data=json.dumps({"arguments": arguments}).encode(),
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


# each token's calls at both doors: (tool, arguments, what both answer), the answer a
# refusal of the view link (its code and words) or the tool's result (its text, isError)
WEB_GLOB = "tool {tool} is not allowed for gateway client token {name} (its tools " \
    "allowlist: ['pol__http_get'])"
DEFAULT_DENY = "tool call {tool} is denied: its tenant's policy is default_deny"
NO_PAY = "tool call pol__pay is denied by policy rule no pay"
REST_CASES = {
    "glob": (("--agents", "web-*"), [
        ("pol__write_file", {"path": "/x"}, (jsonrpc.TOOL_NOT_ALLOWED, WEB_GLOB)),
        ("pol__http_get", {"host": "a.example"}, ('http_get {"host": "a.example"}', False)),
        ("pol__pay", {"amount": 1}, (jsonrpc.TOOL_NOT_ALLOWED, WEB_GLOB))]),
    "tenant": (("--tenant", "acme"), [
        ("pol__http_get", {"host": "a.example"}, (DEFAULT_DENY, True)),
        ("pol__pay", {"amount": 1}, (NO_PAY, True))]),
    "operator": ((), [
        ("pol__write_file", {"path": "/x"}, ('write_file {"path": "/x"}', False)),
        ("pol__pay", {"amount": 1}, (NO_PAY, True))]),
}


@pytest.mark.deadline(120)
@pytest.mark.parametrize("who", sorted(REST_CASES))
def test_a_tokens_rest_tool_call_is_judged_by_the_chain_as_at_mcp(
        api: tuple[Daemon, str], who: str) -> None:
    """The HTTP API's POST /tools/NAME/call (tools.call, `corral tools call`) called the
    pool itself, past the chain: an API token of `mcp:call` with an agent glob called a
    tool its agents' allowlists do not admit (docs/guide.md, decision 172: the glob
    narrows the tools at each call), a tenant's token one its tenant's default_deny
    refuses, and the operator's token one a policy rule denies (decision 1641: the rules
    bind the operator's calls at the gateway); each was answered by the server. Now the
    control method is a door of the one chain for the caller /mcp makes of its token
    (decision 2052): each call is answered at REST as at /mcp, and each made or refused
    is the audit link's `gateway.call` row naming the token."""
    d, base = api
    how, cases = REST_CASES[who]
    name = f"rest-{who}"
    token = d.json("token", "create", name, "--scope", "mcp:call", *how)["token"]

    def rows() -> int:
        return sum(1 for e in d.ask("audit.list", {"limit": 1000})["entries"]
                   if e["method"] == "gateway.call"
                   and e["params"].get("client") == f"token {name}")
    before = rows()
    for tool, arguments, (said, error) in cases:
        at_mcp = rpc(f"{base}/mcp", token, "tools/call", {"name": tool,
                                                          "arguments": arguments})
        at_rest = rest_call(base, token, tool, arguments)
        if isinstance(said, int):  # a refusal of the view link
            words = error.replace("{tool}", tool).replace("{name}", name)
            assert at_mcp["error"] == {"code": said, "message": words}, at_mcp
            assert at_rest == (403, {"type": "about:blank", "title": "forbidden",
                                     "status": 403, "detail": words, "code": said}), at_rest
        else:
            answer = {"content": [{"type": "text", "text": said.replace("{tool}", tool)}],
                      "isError": error}
            assert at_mcp["result"] == {**answer, "resultType": "complete"}, at_mcp
            assert at_rest == (200, answer), at_rest
    wait_until(lambda: rows() == before + 2 * len(cases), 60, "the calls' audit rows")


@pytest.fixture(scope="module", params=KINDS)
def home(request: pytest.FixtureRequest) -> Iterator[Home]:
    """Both homes (a node's, two cluster nodes on a real redis-server): agent `victim`
    (examples/misbehave.py) and agent `spender` (tests/attack_s16_spender.py)."""
    directory = Path(tempfile.mkdtemp(prefix="attack16-"))
    agents = "".join(f'[agents.{name}]\ncommand = ["{PY}", "{path}"]\n'
                     f'env = {{ PYTHONPATH = "{ROOT}" }}\n\n'
                     for name, path in (("victim", ROOT / "examples" / "misbehave.py"),
                                        ("spender", SPENDER)))
    try:
        with made(request.param, directory, agents, ttl=STEADY_TTL) as h:
            yield h
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.deadline(180)
def test_an_agents_usage_report_naming_another_agents_task_is_in_no_view(home: Home) -> None:
    """The view's usage (decision 2036: on the cluster, each claim's carried by its
    attempt's write, and added up): a worker's `usage/report` is taken as reported, for a
    task of its own agent; one naming another agent's task, finished or not known to its
    node, counts in neither task's view at any entry, on either home, and the reporter's
    own task says its own usage alone."""
    victim = home.run("victim", {"do": "echo"})
    assert victim["status"] == "succeeded", victim
    for at in range(len(home.entries)):  # (each entry's node may run the spender)
        spent = home.run("spender", {"victim": victim["task_id"]}, at)
        assert spent["status"] == "succeeded", spent
        for seen in range(len(home.entries)):
            own = home.task(spent["task_id"], seen)["usage"]
            assert (own["input_tokens"], own["output_tokens"], own["cost_usd"],
                    sorted(own["models"])) == (1, 2, 0.25, ["own"]), own
    for seen in range(len(home.entries)):
        assert home.task(victim["task_id"], seen)["usage"] is None, seen


@pytest.mark.deadline(120)
@pytest.mark.parametrize("who", sorted(REST_CASES))
def test_a_tokens_rest_tool_list_is_what_mcp_lists_for_it(api: tuple[Daemon, str],
                                                          who: str) -> None:
    """The HTTP API's GET /tools (tools.list) listed every server's every tool to an API
    token of `mcp:call` with an agent glob, where /mcp lists it the tools its agents'
    allowlists admit (its view: decision 172): the names of the tools it may not call.
    Now a token's listing is the one /mcp makes for it (decision 2053), saying the
    allowlist it took."""
    d, base = api
    how, _ = REST_CASES[who]
    token = d.json("token", "create", f"list-{who}", "--scope", "mcp:call", *how)["token"]
    req = urllib.request.Request(f"{base}/api/v1/tools",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        listed = json.loads(r.read())
    at_mcp = rpc(f"{base}/mcp", token, "tools/list", {})["result"]["tools"]
    every = ["pol__fetch", "pol__http_get", "pol__pay", "pol__read_mail", "pol__send_mail",
             "pol__write_file"]
    assert sorted(t["name"] for t in at_mcp) == (["pol__http_get"] if who == "glob"
                                                 else every), at_mcp
    assert sorted(t["name"] for t in listed["tools"]) == sorted(t["name"] for t in at_mcp)
    assert listed.get("allow") == ({"glob": ["pol__http_get"], "tenant": ["*"]}.get(
        who)), listed
