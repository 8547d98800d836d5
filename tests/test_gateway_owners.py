"""Whose a per-agent MCP server's instance is, at the gateway: an API token's is the
token's, and a token is its identity, not its name (DESIGN 20, decision 1808); what a
client's identity holds at the gateway (its instance, its sessions and their streams)
ends with it: a token revoked, a tokens file's client removed or changed (decision 1831)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from corral.daemon.tokensfile import load_tokens
from corral.supervisor.config import ConfigError

from .conftest import EXAMPLES
from .daemon_harness import PY, Daemon, running_daemon, shared_tmpdir
from .doors.door_agent import gateway
from .test_daemon_cli import wait_until
from .warmforks import sdk_toml

pytest.importorskip("mcp")  # (the notes server is the official SDK's)

# the notes server a fork of this process's MCP SDK server (tests/warmforks.py)
NOTES = sdk_toml(f"{EXAMPLES}/notes_server.py")
pytestmark = pytest.mark.usefixtures("warm_mcp_sdk")
SERVER = f"""
[mcp_servers.mine]  # the notes a caller adds, kept in its own instance's memory
command = {NOTES}
scope = "per-agent"
start_timeout = 60.0

[gateway]
listen = "127.0.0.1:0"
"""


PATIENCE = 60.0
POOL = concurrent.futures.ThreadPoolExecutor(2)
LEGACY = "2025-11-25"  # a version of sessions (Mcp-Session-Id)


def post(url: str, token: str, sid: str | None, method: str, params: dict[str, Any],
         ) -> tuple[int, Any, str | None]:
    """One request of a 2025-11-25 client at /mcp: its status, its JSON-RPC answer (None
    for a notification's), its session id (an initialize's)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=PATIENCE)
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if not method.startswith("notifications/"):
        body["id"] = 1
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": LEGACY}
    if sid is not None:
        headers["Mcp-Session-Id"] = sid
    try:
        conn.request("POST", parts.path, json.dumps(body), headers)
        r = conn.getresponse()
        raw = r.read().decode()
        if raw.startswith(("event:", "data:", "id:")):  # an answer sent as an SSE stream
            raw = next(line[5:] for line in raw.splitlines() if line.startswith("data:"))
        return r.status, json.loads(raw) if raw.strip() else None, \
            r.getheader("Mcp-Session-Id")
    finally:
        conn.close()


def session(url: str, token: str) -> str:
    """A session of the token's at /mcp, initialized: its id."""
    status, _, sid = post(url, token, None, "initialize", {
        "protocolVersion": LEGACY, "capabilities": {},
        "clientInfo": {"name": "owners", "version": "1"}})
    assert status == 200 and sid is not None, status
    assert post(url, token, sid, "notifications/initialized", {})[0] == 202
    return sid


def call(url: str, token: str, sid: str, tool: str, arguments: dict[str, Any]) -> Any:
    """A tools/call in the session: the tool's text, or (status, the refusal)."""
    status, said, _ = post(url, token, sid, "tools/call", {"name": tool,
                                                           "arguments": arguments})
    if status != 200 or "error" in said:
        return status, said.get("error") if isinstance(said, dict) else said
    return said["result"]["content"][0]["text"] if said["result"]["content"] else None


def held(url: str, token: str, sid: str) -> concurrent.futures.Future[int]:
    """The session's GET stream, held open in a thread: done, with its status, once the
    daemon ends it (at PATIENCE, read timed out: never ended)."""
    parts = urlsplit(url)
    opened = concurrent.futures.Future[None]()

    def read() -> int:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port,
                                          timeout=PATIENCE)
        try:
            conn.request("GET", parts.path, headers={
                "Authorization": f"Bearer {token}", "Accept": "text/event-stream",
                "Mcp-Session-Id": sid, "MCP-Protocol-Version": LEGACY})
            r = conn.getresponse()
            opened.set_result(None)
            while r.read1(65536):
                pass
            return r.status
        finally:
            if not opened.done():
                opened.set_result(None)
            conn.close()
    stream = POOL.submit(read)
    opened.result(PATIENCE)
    return stream


def refused(url: str, token: str) -> bool:
    """Whether the gateway refuses the token (401, a plain text's)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=PATIENCE)
    try:
        conn.request("POST", parts.path, "{}", {"Authorization": f"Bearer {token}",
                                                "Content-Type": "application/json"})
        return conn.getresponse().status == 401
    finally:
        conn.close()


def owners(d: Daemon) -> list[str]:
    """The owners of the per-agent server's instances, as `corral mcp status` lists them
    (asked on the socket: a wait looks often)."""
    return [r["owner"] for r in d.ask("mcp.status")["mcp_servers"]
            if r["name"] == "mine" and r["owner"] is not None]


@pytest.mark.deadline(180)
def test_a_revoked_tokens_instance_and_sessions_end_and_its_name_again_is_a_token_of_its_own(
        ) -> None:
    """A `per-agent` server gives each caller an instance of its own; an API token's was
    keyed by its name (`token:NAME`), so a token revoked and another made under its name
    (narrower, or of another tenant where the server is shared) was given the first
    one's instance, and read what the first had left in it (here a note; a browser's
    session, a working directory's files). Now the instance is the token's identity's
    (decision 1808). And what the revoked token held ends with it (decision 1831): its
    instance, kept for the server's life before, is stopped and forgotten; its sessions
    end, their open streams too (its GET stream kept receiving), and the new token of its
    name, which a session checked by name alone, is not served in the old one's session
    as the old token (its tenant, its allowlist, its instance: the note read again). An
    expired token's sessions end at its expiry."""
    with running_daemon(shared_tmpdir(), "", SERVER) as d:
        url = d.json("mcp", "status")["gateway"]["http"]["url"]

        def token() -> str:
            r = d.cli("token", "create", "ci", "--scope", "mcp:call", "--json")
            assert r.returncode == 0, r.stderr
            made: str = json.loads(r.stdout)["token"]
            return made

        first = token()
        sid = session(url, first)
        said = call(url, first, sid, "mine__add", {"title": "kept",
                                                   "text": "the first token's"})
        assert said == "stored kept", said
        [owner] = owners(d)
        assert owner.startswith("token:ci of "), owner
        stream = held(url, first, sid)
        assert d.cli("token", "revoke", "ci").returncode == 0
        assert stream.result(PATIENCE) == 200  # (ended by the daemon, not read timed out)
        wait_until(lambda: owners(d) == [], PATIENCE, "the revoked token's instance gone")
        second = token()
        assert call(url, second, sid, "mine__search", {"word": "first"})[0] == 404
        found = gateway("", "mine__search", {"word": "first"}, url, second)
        # (no note found: no content; the first token's instance answered "kept")
        assert found == {"text": None, "isError": False}, found
        # a token's sessions end at its expiry too, as its REST streams do: its requests
        # were refused from then, but the streams it held open kept receiving
        r = d.cli("token", "create", "brief", "--scope", "mcp:call", "--expires", "5s",
                  "--json")
        assert r.returncode == 0, r.stderr
        brief = json.loads(r.stdout)["token"]
        assert held(url, brief, session(url, brief)).result(PATIENCE) == 200


@pytest.mark.deadline(180)
def test_a_tokens_file_clients_sessions_end_when_a_reload_changes_or_removes_it() -> None:
    """A tokens file's client is its name (decision 1807), and its sessions were checked
    by that name alone and kept the identity they began with: a reload that narrowed its
    tools left its open sessions calling what it no longer might, and one that changed its
    secret (a leaked one's rotation) or removed it left its open streams receiving. Now a
    client the reload changes or removes has its sessions ended, their streams too
    (decision 1831); a new session has its new allowlist."""
    tmp = shared_tmpdir()
    secret = "a-tokens-file-client-narrowed-by-a-reload"

    def client(tools: list[str]) -> None:
        (tmp / "tokens.toml").write_text(
            f'[clients.ide]\ntoken_sha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"'
            f"\ntools = {json.dumps(tools)}\n")
    client(["mine__*"])
    with running_daemon(tmp, "", SERVER + 'tokens_file = "tokens.toml"\n') as d:
        url = d.json("mcp", "status")["gateway"]["http"]["url"]
        sid = session(url, secret)
        assert call(url, secret, sid, "mine__add", {"title": "a", "text": "b"}) == \
            "stored a"
        stream = held(url, secret, sid)
        client(["mine__search"])
        r = d.cli("reload")
        assert r.returncode == 0, r.stderr
        assert stream.result(PATIENCE) == 200  # (ended by the daemon, not read timed out)
        assert call(url, secret, sid, "mine__add", {"title": "c", "text": "d"})[0] == 404
        again = session(url, secret)
        status, refusal = call(url, secret, again, "mine__add", {"title": "c", "text": "d"})
        assert status == 200 and refusal["message"] == (
            "tool mine__add is not allowed for gateway client ide (its tools allowlist: "
            "['mine__search'])"), refusal


@pytest.mark.deadline(240)
def test_an_agent_made_again_under_a_removed_ones_name_gets_a_per_agent_server_of_its_own(
        ) -> None:
    """A replica's instance is its label's (`AGENT#N`), and was kept for the server's
    life: an agent removed and another made under its name (by another tenant, where the
    server is shared) was given the first one's, and read what it had left there. Now a
    removed agent's instances are stopped and forgotten with it (decision 1809)."""
    table = {"command": [PY, str(EXAMPLES / "misbehave.py")], "env": {
        "PYTHONPATH": str(EXAMPLES.parent)}, "tools": ["mine__*"]}
    with running_daemon(shared_tmpdir(), "", SERVER) as d:
        def run(tool: str, arguments: dict[str, str]) -> object:
            done = d.ask("tasks.run", {"agent": "scribe", "input": {
                "do": "tools", "tool": tool, "arguments": arguments}})
            assert done["status"] == "succeeded", done
            return done["output"][0]["structuredContent"]

        d.ask("agents.add", {"agents": {"scribe": table}})
        assert run("mine__add", {"title": "kept", "text": "the first agent's"}) == {
            "result": "stored kept"}
        d.ask("agents.remove", {"names": ["scribe"]})
        d.ask("agents.add", {"agents": {"scribe": table}})
        assert run("mine__search", {"word": "first"}) == {"result": []}


@pytest.mark.parametrize("name", ("anonymous", "operator", "token ci", "agent:ci", "ci#1"))
def test_a_tokens_file_client_is_not_named_as_another_kind_of_caller(tmp_path: Path,
                                                                     name: str) -> None:
    """A tokens file's client is known by its name alone (decision 1807), and so are the
    gateway's other callers by theirs: anonymous ones, the operator's host, an API token
    (`token NAME`), `corral mcp serve --agent` (`agent:NAME`), a replica (`AGENT#N`). A
    client of one of those names was that caller at the gateway: the same per-agent
    instance (`gateway:anonymous`: what the client left there, an anonymous caller read),
    the same limits' slots and rate, the same sessions, and at /mcp/corral the same
    idempotency keys' holder (`gateway client operator`). Its name is now a name corral
    gives (1-64 of [A-Za-z0-9_-]) and neither `anonymous` nor `operator` (decision 1831)."""
    path = tmp_path / "tokens.toml"
    path.write_text(f'[clients."{name}"]\ntoken_sha256 = "{"0" * 64}"\n')
    with pytest.raises(ConfigError) as refused:
        load_tokens(path)
    assert str(refused.value) == (
        f"{path}: clients.{name}: a client's name is 1-64 characters of [A-Za-z0-9_-], "
        "starting with a letter or digit, and neither anonymous nor operator (the "
        "gateway's own callers)"), refused.value


@pytest.mark.deadline(180)
def test_a_removed_agents_replicas_leave_the_gateways_clients() -> None:
    """The gateway keeps a client's limits (its slots, its rate) and its calls' counts (a
    window of latencies each) by its name, a replica's its label (`AGENT#N`): a tenant
    adding and removing agents under fresh names, each calling through the gateway once,
    grew both for good (review's pass, DESIGN 20). A removed agent's replicas now leave
    them with it (decision 1831)."""
    door_agent = Path(__file__).parent / "doors" / "door_agent.py"
    table = {"command": [PY, str(door_agent)], "env": {"PYTHONPATH": str(EXAMPLES.parent)},
             "tools": ["mine__*"]}
    with running_daemon(shared_tmpdir(), "", SERVER) as d:
        def clients() -> list[str]:
            return sorted(d.ask("gateway.status", {})["clients"])

        for n in range(3):
            name = f"churn{n}"
            d.ask("agents.add", {"agents": {name: table}})
            done = d.ask("tasks.run", {"agent": name, "input": {"calls": [
                {"door": "/mcp", "tool": "mine__search", "arguments": {"word": "x"}}]}})
            assert done["status"] == "succeeded", done
            assert f"{name}#0" in clients(), clients()
            d.ask("agents.remove", {"names": [name]})
        wait_until(lambda: not [c for c in clients() if c.startswith("churn")], PATIENCE,
                   "the removed agents' replicas gone from the gateway's clients")


@pytest.mark.deadline(180)
def test_a_replicas_sessions_end_at_its_exit() -> None:
    """A replica's sessions at /mcp hold its identity, and with it the replica, which
    holds what it ran with: one that exited without ending them (killed, removed,
    replaced by a reload) left them kept until the idle reaper, and a stream one held
    open, which the reaper never ends, for good (issue 90). They now end at its exit, as
    a client's do when its identity ends (decision 2010): its open stream too."""
    door_agent = Path(__file__).parent / "doors" / "door_agent.py"
    table = {"command": [PY, str(door_agent)], "env": {"PYTHONPATH": str(EXAMPLES.parent)},
             "tools": ["mine__*"]}
    with running_daemon(shared_tmpdir(), "", SERVER) as d:
        def sessions() -> int:
            return int(d.ask("mcp.status")["gateway"]["http"]["sessions"])

        d.ask("agents.add", {"agents": {"leaver": table}})
        done = d.ask("tasks.run", {"agent": "leaver", "input": {"env": True}})
        assert done["status"] == "succeeded", done
        url, token = done["output"]["CORRAL_MCP_URL"], done["output"]["CORRAL_MCP_TOKEN"]
        sid = session(url, token)
        stream = held(url, token, sid)
        assert sessions() == 1
        d.ask("agents.remove", {"names": ["leaver"]})
        # its exit heard: its token is forgotten then, in the same event's delivery
        wait_until(lambda: refused(url, token), PATIENCE, "the removed replica's token refused")
        assert sessions() == 0
        assert stream.result(PATIENCE) == 200  # (ended by the daemon, not read timed out)
