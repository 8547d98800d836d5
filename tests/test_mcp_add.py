"""`corral mcp add` and `corral mcp remove` (issue 76): a stdio server written into the
file [supervisor] mcp_servers_file names, and taken out of it, each applied by a reload —
served, or stopped, without a restart of the daemon — and kept by the next reload; an
edit of that file by hand applied by `corral reload` the same way. Every refusal says why
and leaves the file as it was."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from .daemon_harness import PY, Daemon, running_daemon, shared_tmpdir
from .test_mcp_cli import SCRIPTED

UNCHANGED = "unchanged: 0 agents, 1 MCP server\n"


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    tmp = shared_tmpdir()
    (tmp / "mcp.json").write_text(json.dumps({"mcpServers": {}}))
    with running_daemon(tmp, f"""
[mcp_servers.own]
command = ["{PY}", "{SCRIPTED}", "v2025-06"]
""", extra=f'mcp_servers_file = "{tmp}/mcp.json"') as d:
        yield d


def servers_file(d: Daemon) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((d.dir / "mcp.json").read_text())["mcpServers"]
    return doc


def pid(d: Daemon) -> int:
    got: int = d.json("info")["pid"]
    return got


def test_mcp_add_serves_a_server_without_a_restart_and_remove_stops_it(
        daemon: Daemon) -> None:
    d = daemon
    before = pid(d)
    r = d.cli("mcp", "add", "fresh", "--env", "TOKEN=s3cret-77", "--", PY, str(SCRIPTED),
              "v2025-06")
    assert (r.returncode, r.stdout, r.stderr) == (
        0, f"KIND        NAME   CHANGE\nMCP server  fresh  added\n{UNCHANGED}", "")
    assert servers_file(d) == {"fresh": {"command": PY, "args": [str(SCRIPTED), "v2025-06"],
                                         "env": {"TOKEN": "s3cret-77"}}}
    r = d.cli("tools", "call", "fresh__echo", "--args", '{"text": "new"}')
    assert (r.returncode, r.stdout) == (0, "new\n")
    # the file is where it lives: the next reload keeps it
    r = d.cli("reload")
    assert (r.returncode, r.stdout) == (0, "nothing changed\nunchanged: 0 agents, "
                                           "2 MCP servers\n")
    r = d.cli("mcp", "remove", "fresh")
    assert (r.returncode, r.stdout) == (
        0, f"KIND        NAME   CHANGE\nMCP server  fresh  removed\n{UNCHANGED}")
    assert servers_file(d) == {}
    assert [s["name"] for s in d.json("mcp", "status")["mcp_servers"]] == ["own"]
    assert pid(d) == before
    # the audit says what was added, the env's names alone, as for an [mcp_servers] table
    added = [e for e in d.json("audit")["entries"] if e["method"] == "mcp.add"]
    assert [e["params"] for e in added] == [{"name": "fresh", "command": [
        PY, str(SCRIPTED), "v2025-06"], "env": {"TOKEN": "***"}}]
    assert "s3cret-77" not in d.cli("audit").stdout


def test_an_edit_of_the_servers_file_is_applied_by_reload(daemon: Daemon) -> None:
    d = daemon
    (d.dir / "mcp.json").write_text(json.dumps({"mcpServers": {"desk": {
        "command": PY, "args": [str(SCRIPTED), "v2025-06"]}}}))
    r = d.cli("reload")
    assert (r.returncode, r.stdout) == (
        0, f"KIND        NAME  CHANGE\nMCP server  desk  added\n{UNCHANGED}")
    r = d.cli("tools", "call", "desk__echo", "--args", '{"text": "by hand"}')
    assert (r.returncode, r.stdout) == (0, "by hand\n")


def test_mcp_add_and_remove_refuse_and_leave_the_file_as_it_was(daemon: Daemon) -> None:
    d = daemon
    cfg = d.config
    listed = (d.dir / "mcp.json").read_text()
    for args, why in (
            (["add", "own", "--", PY], f"mcp add: MCP server own exists already (in {cfg})"),
            (["add", "a__b", "--", PY], "mcp add: MCP server a__b: a server name may not "
                                        "contain '__' (it separates server and tool in "
                                        "SERVER__TOOL)"),
            (["add", "own_", "--", PY], "mcp add: MCP server own_: a server name may not end "
                                        "with '_' (own___TOOL reads as server own's tool)"),
            (["remove", "own"], f"mcp remove: MCP server own is declared in {cfg}, not in "
                                f"{d.dir / 'mcp.json'}: remove it there, then `corral "
                                "reload`"),
            (["remove", "ghost"], f"mcp remove: no MCP server ghost in {d.dir / 'mcp.json'}")):
        r = d.cli("mcp", *args)
        assert (r.returncode, r.stdout, r.stderr) == (1, "", f"corral: {why}\n"), args
    assert (d.dir / "mcp.json").read_text() == listed
    r = d.cli("mcp", "add", "x", "--env", "NOEQUALS", "--", PY)
    assert r.returncode == 2 and "'NOEQUALS' is not KEY=VALUE" in r.stderr


def test_a_reload_that_fails_puts_the_file_back() -> None:
    # desk is tuned by the config file: taken out of mcp.json, the tuning names no server
    tmp = shared_tmpdir()
    listed = json.dumps({"mcpServers": {"desk": {"command": PY, "args": [str(SCRIPTED)]}}})
    (tmp / "mcp.json").write_text(listed)
    with running_daemon(tmp, "[mcp_servers.desk]\ntimeout = 5.0\n",
                        extra=f'mcp_servers_file = "{tmp}/mcp.json"') as d:
        r = d.cli("mcp", "remove", "desk")
        assert (r.returncode, r.stdout) == (1, "")
        assert r.stderr == (f"corral: mcp remove rejected, nothing changed: {d.config}: "
                            "mcp_servers.desk: needs a command or a url (no server desk in "
                            f"{tmp / 'mcp.json'} to apply it to)\n")
        assert (tmp / "mcp.json").read_text() == listed
        assert [s["name"] for s in d.json("mcp", "status")["mcp_servers"]] == ["desk"]


def test_mcp_add_needs_a_servers_file() -> None:
    with running_daemon(shared_tmpdir(), "") as d:
        r = d.cli("mcp", "add", "fresh", "--", PY, str(SCRIPTED))
        assert (r.returncode, r.stderr) == (1, f"corral: mcp add: {d.config} names no "
                                               "[supervisor] mcp_servers_file, the JSON "
                                               "file servers are added to and removed "
                                               "from\n")
