"""MCP through the daemon and the CLI: `tools`, `tools call`, `mcp status`, `status`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon, running_daemon, shared_tmpdir
from .test_daemon_cli import wait_until

SCRIPTED = Path(__file__).with_name("scripted_mcp.py")


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    tmp = shared_tmpdir()
    (tmp / "mcp.json").write_text(json.dumps({"mcpServers": {"desk": {
        "command": PY, "args": [str(SCRIPTED), "v2025-06"]}}}))
    agents = f"""
[mcp_servers.notes]
command = ["{PY}", "{EXAMPLES}/notes_server.py"]
start = "eager"

[mcp_servers.lazy]
command = "{PY} {SCRIPTED} v2024"

[agents.researcher]
command = ["{PY}", "{EXAMPLES}/researcher.py"]
env = {{ PYTHONPATH = "{ROOT}" }}
tools = ["notes__*"]
"""
    with running_daemon(tmp, agents, extra=f'mcp_servers_file = "{tmp}/mcp.json"') as d:
        yield d


def test_eager_server_is_ready_before_ready_1_and_lazy_is_not_started(daemon: Daemon) -> None:
    st = {f"{s['name']}#{s['instance']}": s for s in daemon.json("mcp", "status")["mcp_servers"]}
    assert st["notes#0"]["state"] == "ready"
    assert st["notes#0"]["protocol_version"] == "2026-07-28" and st["notes#0"]["tools"] == 3
    assert st["lazy#0"]["state"] == "initial" and st["desk#0"]["state"] == "initial"
    full = daemon.json("status")
    assert [s["name"] for s in full["mcp_servers"]] == ["notes", "lazy", "desk"]


def test_tools_listing_starts_lazy_servers_and_filters_by_agent(daemon: Daemon) -> None:
    names = [t["name"] for t in daemon.json("tools")["tools"]]
    assert names[:3] == ["notes__add", "notes__get", "notes__search"]
    assert "lazy__echo" in names and "desk__echo" in names
    st = {s["name"]: s for s in daemon.json("mcp", "status")["mcp_servers"]}
    assert (st["lazy"]["protocol_version"], st["desk"]["protocol_version"]) == (
        "2024-11-05", "2025-06-18")
    allowed = [t["name"] for t in daemon.json("tools", "--agent", "researcher")["tools"]]
    assert allowed == ["notes__add", "notes__get", "notes__search"]
    table = daemon.cli("tools").stdout.splitlines()
    assert table[0].split() == ["TOOL", "DESCRIPTION"]


def test_tools_call(daemon: Daemon) -> None:
    r = daemon.cli("tools", "call", "notes__add", "--args", '{"title": "x", "text": "y"}')
    assert (r.returncode, r.stdout) == (0, "stored x\n")
    r = daemon.cli("tools", "call", "lazy__echo", "--args", '{"text": "hi"}', "--json")
    assert json.loads(r.stdout)["structuredContent"] == {"echo": "hi"}
    r = daemon.cli("tools", "call", "notes__add", "--args", '{"title": 1}')
    assert r.returncode == 1  # isError from the server
    r = daemon.cli("tools", "call", "notes__nope")
    assert (r.returncode, r.stderr) == (
        1, "corral: no such tool: notes__nope (MCP server notes has no tool nope)\n")
    r = daemon.cli("tools", "call", "notes__add", "--args", "[1]")
    assert r.returncode == 2 and "must be a JSON object" in r.stderr
    r = daemon.cli("tools", "call", "notes__add", "--args", "{bad")
    assert r.returncode == 2 and "not JSON" in r.stderr


def test_agent_task_uses_tools(daemon: Daemon) -> None:
    r = daemon.cli("run", "researcher", "--input", '{"topic": "otters"}', "--json")
    res = json.loads(r.stdout)
    assert res["status"] == "succeeded", res
    assert res["output"]["tools"] == ["notes__add", "notes__get", "notes__search"]
    assert res["output"]["found"] == {"result": ["otters"]}
    st = {s["name"]: s for s in daemon.json("mcp", "status")["mcp_servers"]}
    assert st["notes"]["calls"] == 2


def test_reload_applies_mcp_server_changes(daemon: Daemon) -> None:
    before = {s["name"]: s for s in daemon.json("mcp", "status")["mcp_servers"]}
    text = daemon.config.read_text()
    text = text.replace("[mcp_servers.lazy]", "[mcp_servers.fresh]")
    text = text.replace('start = "eager"', 'start = "eager"\ntimeout = 12.0')
    daemon.config.write_text(text)
    r = daemon.cli("reload")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == ("MCP servers: added fresh; removed lazy; "
                                         "changed notes")
    def servers() -> dict[str, Any]:
        return {s["name"]: s for s in daemon.json("mcp", "status")["mcp_servers"]}

    after = wait_until(lambda: (s := servers())["notes"]["state"] == "ready" and s)
    assert sorted(after) == ["desk", "fresh", "notes"]
    assert after["notes"]["pid"] != before["notes"]["pid"]
    r = daemon.cli("tools", "call", "fresh__echo", "--args", '{"text": "new"}')
    assert (r.returncode, r.stdout) == (0, "new\n")
