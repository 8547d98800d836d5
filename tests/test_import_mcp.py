"""`corral import` of an MCP client's server file (issue 76): Claude Desktop's and
Cursor's `mcpServers`, VS Code's `servers`, as `[mcp_servers.*]` tables that start, each
key corral cannot carry named; a PM2 `.json` is still a PM2 file."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from .conftest import EXAMPLES
from .daemon_harness import PY, running_daemon, shared_tmpdir
from .test_import import corral

SCRIPTED = Path(__file__).with_name("scripted_mcp.py")


def test_a_claude_desktop_file_gives_mcp_servers_that_start(tmp_path: Path) -> None:
    (tmp_path / "claude_desktop_config.json").write_text(json.dumps({"mcpServers": {
        "notes": {"command": PY, "args": [str(EXAMPLES / "notes_server.py")]},
        "desk": {"command": PY, "args": [str(SCRIPTED), "v2025-06"],
                 "env": {"GREETING": "hi"}}}}))
    r = corral("import", "claude_desktop_config.json", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, "")
    assert tomllib.loads(r.stdout) == {"mcp_servers": {
        "notes": {"command": [PY], "args": [str(EXAMPLES / "notes_server.py")]},
        "desk": {"command": [PY], "args": [str(SCRIPTED), "v2025-06"],
                 "env": {"GREETING": "hi"}}}}
    with running_daemon(shared_tmpdir(), r.stdout) as d:
        said = d.cli("tools", "call", "notes__add", "--args", '{"title": "x", "text": "y"}')
        assert (said.returncode, said.stdout) == (0, "stored x\n"), said.stderr
        said = d.cli("tools", "call", "desk__echo", "--args", '{"text": "hi"}')
        assert (said.returncode, said.stdout) == (0, "hi\n"), said.stderr
        states = {s["name"]: s["state"] for s in d.json("mcp", "status")["mcp_servers"]}
        assert states == {"notes": "ready", "desk": "ready"}


def test_what_a_client_file_holds_beyond_corrals_servers_is_said(tmp_path: Path) -> None:
    """VS Code's file: comments, inputs and ${input:...} it prompts for, a remote server
    with its headers, a disabled server, a name with `__`, a client's own keys."""
    (tmp_path / "mcp.json").write_text(
        "// .vscode/mcp.json\n{\n  inputs: [{type: 'promptString', id: 'key'}],\n"
        "  servers: {\n"
        "    'gh__tools': {type: 'http', url: 'https://api.example.com/mcp',\n"
        "                  headers: {Authorization: 'Bearer ${input:key}'}},\n"
        "    fetch: {command: 'uvx', args: ['mcp-server-fetch'], autoApprove: ['fetch'],\n"
        "            envFile: '/srv/fetch.env'},\n"
        "    old: {command: 'old-server', disabled: true},\n"
        "  },\n}\n")
    r = corral("import", "mcp.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert tomllib.loads(r.stdout) == {"mcp_servers": {
        "gh_tools": {"transport": "http", "url": "https://api.example.com/mcp",
                     "headers": {"Authorization": "Bearer ${input:key}"}},
        "fetch": {"command": ["uvx"], "args": ["mcp-server-fetch"],
                  "env_file": ["/srv/fetch.env"]}}}
    assert r.stderr.splitlines() == [
        "corral import: mcp.json: inputs: (top level): not carried: VS Code's prompts for "
        "${input:...} values: corral asks for none (set the values in env or headers)",
        "corral import: mcp.json: servers.gh__tools: ${input:key}: not carried: the client "
        "fills it in as it starts the server; taken as written",
        "corral import: mcp.json: servers.gh__tools: name: 'gh__tools' is server gh_tools "
        "(corral's server names: 1-64 of [A-Za-z0-9_-], starting with a letter or digit, "
        "no `__`, unique)",
        'corral import: mcp.json: servers.fetch: envFile: "/srv/fetch.env": carried as '
        "env_file: the server is given every variable that file holds when it starts, as "
        "the daemon reads it",
        'corral import: mcp.json: servers.fetch: autoApprove: ["fetch"]: not carried: '
        "corral asks for approval by its own policies ([approvals])",
        "corral import: mcp.json: servers.old: disabled: true: not imported (the client "
        "does not start it)"]
    (tmp_path / "corral.toml").write_text(r.stdout)
    checked = corral("check-config", "--no-check", "corral.toml", cwd=tmp_path)
    assert (checked.returncode, checked.stdout) == (
        0, "corral.toml: ok (0 agents, 2 MCP servers)\n"), checked.stderr
    r = corral("import", "mcp.json", "-o", "out.toml", cwd=tmp_path)
    assert (r.returncode, r.stderr.splitlines()[-1]) == (0, "out.toml: 2 MCP servers written")


def test_an_env_file_and_a_secret_in_a_header_are_named_in_the_notes(
        tmp_path: Path) -> None:
    """Attacker's pass (issue 88): an `envFile` and a `${SECRET}` header were imported
    with no note: the daemon's SECRET sent to the file's URL, and every variable of a
    file the import never read given to the server, unsaid. Each is named."""
    (tmp_path / "mcp.json").write_text(json.dumps({"mcpServers": {
        "api": {"url": "https://api.example.com/mcp",
                "headers": {"Authorization": "Bearer ${SECRET}", "X-Key": "${A}-${A}"}},
        "fetch": {"command": "uvx", "envFile": "/srv/fetch.env"}}}))
    r = corral("import", "mcp.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert tomllib.loads(r.stdout)["mcp_servers"]["api"]["headers"] == {
        "Authorization": "Bearer ${SECRET}", "X-Key": "${A}-${A}"}
    assert r.stderr.splitlines() == [
        "corral import: mcp.json: mcpServers.api: headers.Authorization: ${SECRET}: the "
        "daemon's environment variable SECRET is sent to https://api.example.com/mcp in it "
        "(not set, the server is not reached, the daemon saying so)",
        "corral import: mcp.json: mcpServers.api: headers.X-Key: ${A}: the daemon's "
        "environment variable A is sent to https://api.example.com/mcp in it (not set, the "
        "server is not reached, the daemon saying so)",
        'corral import: mcp.json: mcpServers.fetch: envFile: "/srv/fetch.env": carried as '
        "env_file: the server is given every variable that file holds when it starts, as "
        "the daemon reads it"]


def test_a_server_neither_local_nor_remote_is_refused_and_a_pm2_json_is_pm2s(
        tmp_path: Path) -> None:
    (tmp_path / "mcp.json").write_text('{"mcpServers": {"x": {"args": ["a"]}}}')
    r = corral("import", "mcp.json", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", (
        "corral: mcp.json: mcpServers.x: give either command (a local server) or url (a "
        "remote one)\n"))
    (tmp_path / "ecosystem.json").write_text('{"apps": [{"name": "a", "script": "a.sh"}]}')
    r = corral("import", "ecosystem.json", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, "") and "[agents.a]" in r.stdout


def test_a_file_is_imported_as_mcp_servers_file_reads_it(tmp_path: Path) -> None:
    """One reader for both (supervisor/configload.py client_server, decision 1530): Cursor's
    relative envFile is carried as the file's own, so that what is written passes
    check-config (it was written as given and refused there: env_file '.env' is not an
    absolute path); and a url's args, or a command's headers, refused as the daemon refuses
    them (they were dropped unsaid)."""
    (tmp_path / "mcp.json").write_text(json.dumps({"mcpServers": {
        "fetch": {"command": "uvx", "envFile": ".env"}}}))
    (tmp_path / ".env").write_text("A=1\n")
    r = corral("import", "mcp.json", "-o", "corral.toml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    written = tomllib.loads((tmp_path / "corral.toml").read_text())
    assert written["mcp_servers"]["fetch"]["env_file"] == [str(tmp_path.resolve() / ".env")]
    checked = corral("check-config", "--no-check", "corral.toml", cwd=tmp_path)
    assert (checked.returncode, checked.stdout) == (
        0, "corral.toml: ok (0 agents, 1 MCP server)\n"), checked.stderr
    for entry, said in (({"url": "http://h/mcp", "args": ["x"]},
                         "mcpServers.r: args, env, envFile and cwd are for a command, not a url"),
                        ({"command": "x", "headers": {"A": "b"}},
                         "mcpServers.r.headers: headers are for a url, not a command")):
        (tmp_path / "mcp.json").write_text(json.dumps({"mcpServers": {"r": entry}}))
        r = corral("import", "mcp.json", cwd=tmp_path)
        assert (r.returncode, r.stdout, r.stderr) == (1, "", f"corral: mcp.json: {said}\n")
