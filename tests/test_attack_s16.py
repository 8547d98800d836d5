"""An attacker's pass over session 15's changes (docs/security.md keeps them): decision
2025's allowlist pattern compared as a name where it has no wildcard, against names that
spell a pattern's glob characters; and the allowlist's promise for a resource (docs/
protocol.md: `fs__file:///srv/*` admits only its resources under /srv) against a URI that
spells its way out. Real daemons, a real MCP server of files that serves a URI as a
naive one does (tests/servers/files_mcp.py), a tokens-file client at the gateway. A hole
not yet closed is a strict xfail that names it."""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from corral import jsonrpc
from corral.mcp.pool import allowed

from .conftest import ROOT
from .daemon_harness import PY, Daemon, free_port, running_daemon, shared_tmpdir

VERSION = "2026-07-28"
SERVERS = Path(__file__).parent / "servers"
AGENT = Path(__file__).parent / "attack_s16_agent.py"
SECRET = "the key of a file outside every allowlist"
# a tokens-file client and an agent of each allowlist: the files under pub/, pub/'s
# numbered reports
READER, READER_TOKEN = "reader", "attack-s16-token-of-a-reader-of-pub"
MONTHS, MONTHS_TOKEN = "months", "attack-s16-token-of-a-reader-of-numbered-reports"
TOKENS = {READER: READER_TOKEN, MONTHS: MONTHS_TOKEN}
# the doors a resource is read at: the agent's task on the worker link, a client at /mcp
READ_DOORS = ("worker", "/mcp client")


def rpc(url: str, token: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """One 2026-07-28 request at `url` with `token`: its JSON-RPC answer."""
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": {
        "io.modelcontextprotocol/protocolVersion": VERSION,
        "io.modelcontextprotocol/clientCapabilities": {}}}}
    where = urlsplit(url)
    assert where.hostname is not None
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    name = params.get("uri", params.get("name"))
    try:
        conn.request("POST", where.path, json.dumps(body), {
            "Authorization": f"Bearer {token}", "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": VERSION,
            "Mcp-Method": method, **({"Mcp-Name": str(name)} if name is not None else {})})
        said: dict[str, Any] = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return said


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
        return said if "error" in said else {"result": said}
    return rpc(d.ask("gateway.status", {})["url"], TOKENS[who], "resources/read",
               {"uri": uri})


def text_of(said: dict[str, Any]) -> str:
    text: str = said["result"]["contents"][0]["text"]
    return text


@pytest.mark.deadline(120)
@pytest.mark.xfail(strict=True, reason="hole: a resource allowlist's pattern is matched "
                   "on the URI as the caller spells it, dot segments and escapes too")
@pytest.mark.parametrize("climb", ["pub/../private/key.txt", "pub/%2e%2e/private/key.txt",
                                   "pub/./../private/key.txt"])
@pytest.mark.parametrize("door", READ_DOORS)
def test_a_resource_uri_that_climbs_out_of_its_allowlists_directory_is_refused(
        files: tuple[Daemon, Path], door: str, climb: str) -> None:
    """docs/protocol.md: `fs__file:///srv/*` admits only a server's resources under /srv.
    The allowlist link matches the pattern on the URI as the caller wrote it, and fnmatch's
    `*` takes `/` and `..` too: `file://ROOT/pub/../private/key.txt` is admitted by
    `files__file://ROOT/pub/*`, and a server that reads the path it is given (as a naive
    one does) answers the file outside pub/. At /mcp the URI must be one a server lists,
    or expand a template it lists (`file://ROOT/pub/{name}`, whose expression takes any
    characters); on the worker link, any URI of the server named."""
    d, tmp = files
    assert text_of(read(d, door, READER, f"file://{tmp}/pub/readme.txt")) == "public"
    said = read(d, door, READER, f"file://{tmp}/{climb}")
    assert SECRET not in json.dumps(said), said
    assert said.get("error", {}).get("code") == jsonrpc.TOOL_NOT_ALLOWED, said


@pytest.mark.deadline(120)
@pytest.mark.xfail(strict=True, reason="hole: decision 2025 admits a name equal to a "
                   "pattern whose bracket class does not match it")
@pytest.mark.parametrize("door", READ_DOORS)
def test_a_uri_that_spells_its_allowlists_bracket_pattern_is_not_admitted_by_it(
        files: tuple[Daemon, Path], door: str) -> None:
    """Decision 2025 compares a name with the allowlist (`qualified in patterns`) before it
    matches the patterns with a wildcard, so a name that is a pattern's own text is
    admitted whether or not the pattern matches it: `report-[0-9].txt` admits report-3.txt
    and, since 2025, the file named `report-[0-9].txt`, which its class matches not (on the
    tree before, 5737a617, refused: fnmatch's semantics, which the decision says it keeps
    for a pattern with `*`, `?` or `[`)."""
    d, tmp = files
    assert text_of(read(d, door, MONTHS, f"file://{tmp}/pub/report-3.txt")) == \
        "the third report"
    said = read(d, door, MONTHS, f"file://{tmp}/pub/report-[0-9].txt")
    assert said.get("error", {}).get("code") == jsonrpc.TOOL_NOT_ALLOWED, said


# names against patterns where a name's own text is a pattern: fnmatch's verdict is the one
# `allowed` keeps (a bracket class, a negated one, an unclosed bracket, `?`, `*`, case, and
# a name that is another spelling of the same letters, which neither normalizes)
CASES = [("srv__a[b]", "srv__a[b]"), ("srv__ab", "srv__a[b]"), ("srv__a[!b]", "srv__a[!b]"),
         ("srv__a[", "srv__a["), ("srv__a]", "srv__a]"), ("srv__a?", "srv__a?"),
         ("srv__a*", "srv__a*"), ("srv__[[]", "srv__[[]"), ("srv__[", "srv__[[]"),
         ("SRV__A", "srv__a"), ("srv__é", "srv__e\u0301"), ("srv__e\u0301", "srv__e\u0301"),
         ("srv__x\n", "srv__x"), ("srv__x", "srv__x\n"), ("srv__a[]b]", "srv__a[]b]")]


@pytest.mark.xfail(strict=True, reason="hole: decision 2025 admits a name equal to a "
                   "pattern whose bracket class does not match it")
def test_allowed_is_fnmatchs_verdict_for_every_name_and_pattern() -> None:
    """`allowed` compares a pattern with no wildcard as a name (decision 2025): for every
    name, whatever characters it spells, its verdict is fnmatchcase's."""
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


REST_DOOR = ("hole: the HTTP API's tools.call (POST /tools/NAME/call, `corral tools call`) "
             "calls the pool itself, not through the chain: no view, policy or audit link")


@pytest.mark.deadline(120)
@pytest.mark.xfail(strict=True, reason=REST_DOOR)
def test_a_glob_tokens_rest_tool_call_is_held_to_its_agents_allowlists(
        api: tuple[Daemon, str]) -> None:
    """An API token of `mcp:call` with an agent glob (`--agents 'web-*'`) may call "only the
    tools those agents' `tools` admit" (docs/guide.md, decision 172: the glob narrows the
    tools at each call): at /mcp it calls pol__http_get and is refused pol__pay. The HTTP
    API's POST /tools/NAME/call (tools.call) with the same token called pol__write_file:
    the control method calls the pool (mcphandlers.tools_call), and its visibility rule
    judges only whether the caller's tenant sees the server."""
    d, base = api
    token = d.json("token", "create", "web-glob", "--scope", "mcp:call", "--agents",
                   "web-*")["token"]
    said = rpc(f"{base}/mcp", token, "tools/call", {"name": "pol__write_file",
                                                     "arguments": {"path": "/x"}})
    assert said.get("error", {}).get("code") == jsonrpc.TOOL_NOT_ALLOWED, said
    status, got = rest_call(base, token, "pol__write_file", {"path": "/x"})
    assert status >= 400, (status, got)


@pytest.mark.deadline(120)
@pytest.mark.xfail(strict=True, reason=REST_DOOR)
def test_a_tenants_rest_tool_call_is_held_to_its_default_deny(
        api: tuple[Daemon, str]) -> None:
    """A tenant's API token of `mcp:call`: at /mcp its call of a shared server's tool no
    rule allows is refused by its tenant's default_deny. The HTTP API's tools.call with
    the same token made the call."""
    d, base = api
    token = d.json("token", "create", "acme-rest", "--scope", "mcp:call", "--tenant",
                   "acme")["token"]
    said = rpc(f"{base}/mcp", token, "tools/call", {"name": "pol__http_get",
                                                     "arguments": {"host": "a.example"}})
    assert said.get("result", {}).get("isError") is True, said
    status, got = rest_call(base, token, "pol__http_get", {"host": "a.example"})
    assert status >= 400, (status, got)


@pytest.mark.deadline(120)
@pytest.mark.xfail(strict=True, reason=REST_DOOR)
def test_a_policy_deny_holds_a_rest_tool_call(api: tuple[Daemon, str]) -> None:
    """A policy rule's deny binds the operator's calls at the gateway (decision 1641: at
    /mcp, and `corral mcp serve` as the socket's peer); at the HTTP API's tools.call a
    token that is the operator there (no tenant, no glob) made the call the rule denies."""
    d, base = api
    token = d.json("token", "create", "ops-rest", "--scope", "mcp:call")["token"]
    said = rpc(f"{base}/mcp", token, "tools/call", {"name": "pol__pay",
                                                     "arguments": {"amount": 1}})
    assert said.get("result", {}).get("isError") is True, said
    status, got = rest_call(base, token, "pol__pay", {"amount": 1})
    assert status >= 400 or got.get("isError") is True, (status, got)
