"""Whose a per-agent MCP server's instance is, at the gateway: an API token's is the
token's, and a token is its identity, not its name (DESIGN 20, decision 1808)."""

from __future__ import annotations

import json

import pytest

from .conftest import EXAMPLES
from .daemon_harness import PY, running_daemon, shared_tmpdir
from .doors.door_agent import gateway

pytest.importorskip("mcp")  # (the notes server is the official SDK's)

SERVER = f"""
[mcp_servers.mine]  # the notes a caller adds, kept in its own instance's memory
command = ["{PY}", "{EXAMPLES}/notes_server.py"]
scope = "per-agent"
start_timeout = 60.0

[gateway]
listen = "127.0.0.1:0"
"""


@pytest.mark.deadline(180)
def test_a_token_made_again_under_a_revoked_ones_name_gets_a_per_agent_server_of_its_own(
        ) -> None:
    """A `per-agent` server gives each caller an instance of its own; an API token's was
    keyed by its name (`token:NAME`), so a token revoked and another made under its name
    (narrower, or of another tenant where the server is shared) was given the first
    one's instance, and read what the first had left in it (here a note; a browser's
    session, a working directory's files). Now the instance is the token's identity's."""
    with running_daemon(shared_tmpdir(), "", SERVER) as d:
        url = d.json("mcp", "status")["gateway"]["http"]["url"]

        def token() -> str:
            r = d.cli("token", "create", "ci", "--scope", "mcp:call", "--json")
            assert r.returncode == 0, r.stderr
            made: str = json.loads(r.stdout)["token"]
            return made

        first = token()
        said = gateway("", "mine__add", {"title": "kept", "text": "the first token's"}, url,
                       first)
        assert said == {"text": "stored kept", "isError": False}, said
        assert d.cli("token", "revoke", "ci").returncode == 0
        second = token()
        found = gateway("", "mine__search", {"word": "first"}, url, second)
        # (no note found: no content; the first token's instance answered "kept")
        assert found == {"text": None, "isError": False}, found


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
