"""MCP through the daemon and the CLI: `tools`, `tools call`, `mcp status`, `status`."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon, running_daemon, shared_tmpdir
from .test_daemon_cli import wait_until
from .warmforks import sdk_toml

SCRIPTED = Path(__file__).with_name("scripted_mcp.py")

# the notes server a fork of this process's MCP SDK server (tests/warmforks.py)
NOTES = sdk_toml(f"{EXAMPLES}/notes_server.py")
pytestmark = pytest.mark.usefixtures("warm_mcp_sdk")


def fleet_daemon() -> Iterator[Daemon]:
    tmp = shared_tmpdir()
    (tmp / "mcp.json").write_text(json.dumps({"mcpServers": {"desk": {
        "command": PY, "args": [str(SCRIPTED), "v2025-06"]}}}))
    agents = f"""
[mcp_servers.notes]
command = {NOTES}
start = "eager"
start_timeout = 30.0

[mcp_servers.lazy]
command = ["{PY}", "{SCRIPTED}", "v2024"]

[mcp_servers.docs]
command = ["{PY}", "{SCRIPTED}", "v2025-11,resources"]

[agents.researcher]
command = ["{PY}", "{EXAMPLES}/researcher.py"]
env = {{ PYTHONPATH = "{ROOT}" }}
tools = ["notes__*"]
"""
    with running_daemon(tmp, agents, extra=f'mcp_servers_file = "{tmp}/mcp.json"') as d:
        yield d


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    """A daemon of its own: for a test of its first state, of counts or of the audit's
    order, or one that changes its servers."""
    yield from fleet_daemon()


@pytest.fixture(scope="module")
def shared() -> Iterator[Daemon]:
    """One daemon for the tests that neither change its servers nor count what another
    did (each boot of the fleet is ~1.5 s of CPU, the SDK's notes server's import most
    of it): calls, listings, a big result, an agent added that only its test names."""
    yield from fleet_daemon()


def test_eager_server_is_ready_before_ready_1_and_lazy_is_not_started(daemon: Daemon) -> None:
    st = {f"{s['name']}#{s['instance']}": s for s in daemon.json("mcp", "status")["mcp_servers"]}
    assert st["notes#0"]["state"] == "ready"
    assert st["notes#0"]["protocol_version"] == "2026-07-28" and st["notes#0"]["tools"] == 3
    assert st["lazy#0"]["state"] == "initial" and st["desk#0"]["state"] == "initial"
    full = daemon.json("status")
    assert [s["name"] for s in full["mcp_servers"]] == ["notes", "lazy", "docs", "desk"]


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
    assert table[0].split() == ["TOOL", "ARGUMENTS", "DESCRIPTION"]
    assert table[1].split() == ["notes__add", "title:", "string,", "text:", "string", "Store",
                                "a", "note", "under", "a", "title."]


def test_tools_show_their_arguments_and_describe_one() -> None:
    tmp = shared_tmpdir()
    with running_daemon(tmp, f'[mcp_servers.s]\ncommand = ["{PY}", "{SCRIPTED}", '
                        '"v2025-11,schema"]\n') as d:
        r = d.cli("tools")
        row = next(ln for ln in r.stdout.splitlines() if ln.startswith("s__find "))
        head = r.stdout.splitlines()[0]
        assert head.split() == ["TOOL", "ARGUMENTS", "DESCRIPTION"]
        # required ones plain, optional ones with a ?, the type when the schema has one
        assert row[head.index("ARGUMENTS"):].rstrip() == (
            "word: string, limit?: integer, order?, tags?: string[], since?: string|null  "
            "Find notes.")
        r = d.cli("tools", "describe", "s__find")
        assert (r.returncode, r.stdout) == (0, (
            "s__find (MCP server s)\n"
            "Find notes.\n"
            "\n"
            "By a word, newest first.\n"
            "\n"
            "ARGUMENT  TYPE         REQUIRED  DESCRIPTION\n"
            "word      string       yes       What to look for\n"
            "limit     integer      no        default: 10\n"
            "order     -            no        one of: \"new\", \"old\"\n"
            "tags      string[]     no\n"
            "since     string|null  no\n"))
        assert json.loads(d.cli("tools", "describe", "s__find", "--json").stdout)[
            "inputSchema"]["required"] == ["word"]
        r = d.cli("tools", "describe", "s__echo")
        assert r.stdout == "s__echo (MCP server s)\n\nno arguments\n"
        r = d.cli("tools", "describe", "s__fnd")
        assert (r.returncode, r.stderr) == (1, "corral: no such tool: s__fnd (did you mean "
                                               "`s__find`?)\n")
        r = d.cli("tools", "describe", "nope__x")
        assert (r.returncode, r.stderr) == (1, "corral: no such MCP server: nope\n")
        r = d.cli("tools", "describe", "find")
        assert r.returncode == 2 and "tools are named SERVER__TOOL" in r.stderr


def test_tools_call(shared: Daemon) -> None:
    r = shared.cli("tools", "call", "notes__add", "--args", '{"title": "x", "text": "y"}')
    assert (r.returncode, r.stdout) == (0, "stored x\n")
    r = shared.cli("tools", "call", "lazy__echo", "--args", '{"text": "hi"}', "--json")
    assert json.loads(r.stdout)["structuredContent"] == {"echo": "hi"}
    r = shared.cli("tools", "call", "notes__add", "--args", '{"title": 1}')
    assert r.returncode == 1  # isError from the server
    r = shared.cli("tools", "call", "notes__nope")
    assert (r.returncode, r.stderr) == (
        1, "corral: no such tool: notes__nope (MCP server notes has no tool nope)\n")
    r = shared.cli("tools", "call", "notes__add", "--args", "[1]")
    assert r.returncode == 2 and "must be a JSON object" in r.stderr
    r = shared.cli("tools", "call", "notes__add", "--args", "{bad")
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
    assert r.stdout == ("KIND        NAME   CHANGE\n"
                        "MCP server  fresh  added\n"
                        "MCP server  lazy   removed\n"
                        "MCP server  notes  changed\n"
                        "unchanged: 1 agent, 2 MCP servers\n")

    def servers() -> dict[str, Any]:
        return {s["name"]: s for s in daemon.json("mcp", "status")["mcp_servers"]}

    after = wait_until(lambda: (s := servers())["notes"]["state"] == "ready" and s)
    assert sorted(after) == ["desk", "docs", "fresh", "notes"]
    assert after["notes"]["pid"] != before["notes"]["pid"]
    r = daemon.cli("tools", "call", "fresh__echo", "--args", '{"text": "new"}')
    assert (r.returncode, r.stdout) == (0, "new\n")


def test_resources_and_prompts_through_the_cli(shared: Daemon) -> None:
    listed = shared.json("resources", "docs")
    assert [(r["server"], r["uri"]) for r in listed["resources"]] == [
        ("docs", f"mem://doc/{i}") for i in range(3)]
    assert listed["resourceTemplates"][0]["uriTemplate"] == "mem://doc/{id}"
    assert listed["unavailable"] == {} and listed["failed"] == []
    table = shared.cli("resources").stdout.splitlines()
    assert table[0].split() == ["SERVER", "URI", "NAME", "TYPE"]
    assert table[1].split() == ["docs", "mem://doc/0", "doc0", "text/plain"]
    r = shared.cli("resources", "read", "mem://doc/2")
    assert (r.returncode, r.stdout) == (0, "contents of mem://doc/2\n")
    r = shared.cli("resources", "docs", "read", "mem://gone")
    assert (r.returncode, r.stderr) == (1, "corral: Resource not found: mem://gone\n")
    assert shared.json("resources", "--agent", "researcher")["resources"] == []
    prompts = shared.json("prompts")["prompts"]
    assert [p["name"] for p in prompts] == ["docs__greet"]
    r = shared.cli("prompts", "get", "docs__greet", "--args", '{"who": "Ada"}')
    assert (r.returncode, r.stdout) == (0, "[user] Say hello to Ada\n")
    r = shared.cli("prompts", "get", "docs__greet", "--args", "[]")
    assert r.returncode == 2 and "must be a JSON object" in r.stderr


def test_a_34_mb_tool_result_reaches_the_cli(shared: Daemon) -> None:
    # over the workers' 16 MiB line and the control socket's 32 MiB reply backlog: an
    # MCP server may send up to max_message_mb (64), and the CLI asked for it
    r = shared.cli("tools", "call", "docs__big", "--args", '{"mb": 34}', timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) == 34 * 1048576 + 1 and r.stdout.startswith("xxx")


def test_mcp_start_stop_restart(daemon: Daemon) -> None:
    r = daemon.cli("mcp", "stop", "notes")
    assert (r.returncode, r.stdout) == (0, "stopped notes (1 instance)\n")
    st = {s["name"]: s for s in daemon.json("mcp", "status")["mcp_servers"]}
    assert (st["notes"]["state"], st["notes"]["last_exit"]) == ("terminated", "stopped")
    r = daemon.cli("mcp", "start", "notes")
    assert (r.returncode, r.stdout) == (0, "started notes (1 instance)\n")
    wait_until(lambda: {s["name"]: s for s in daemon.ask("mcp.status")["mcp_servers"]}
               ["notes"]["state"] == "ready")
    r = daemon.cli("mcp", "restart", "nope")
    assert (r.returncode, r.stderr) == (1, "corral: no such MCP server: nope\n")


def test_audit_records_is_error_results_as_errors(daemon: Daemon) -> None:
    # notes__add with a wrong argument type: the official SDK server answers isError
    assert daemon.cli("tools", "call", "lazy__echo", "--args", '{"text": "ok"}'
                      ).returncode == 0
    assert daemon.cli("tools", "call", "notes__add", "--args", '{"title": 1}').returncode == 1

    def calls() -> dict[str, str] | None:
        # rows are written off the loop, batched: read once both are in
        rows = {str(e["params"].get("name")): e["outcome"]
                for e in daemon.ask("audit.list", {"limit": 50})["entries"]
                if e["method"] == "tools.call"}
        return rows if len(rows) == 2 else None

    outcome = wait_until(calls, timeout=30, what="both calls audited")
    assert outcome["lazy__echo"] == "ok"
    assert outcome["notes__add"].startswith("error: isError result: "), outcome


def test_a_failed_call_is_one_audit_line_on_stderr_as_in_corral_log() -> None:
    """A server's multi-line error (pydantic's, ending in a URL) is one line in the
    daemon's stderr, the same line as in corral.log, escaped and not cut."""
    tmp = shared_tmpdir()
    d = Daemon(tmp, f'[mcp_servers.notes]\ncommand = {NOTES}\n'
                    'start_timeout = 30.0\n')
    try:
        d.start()
        args = '{"title": 1}'
        r = d.cli("tools", "call", "notes__add", "--args", args, "--json")
        assert r.returncode == 1
        text = json.loads(r.stdout)["content"][0]["text"]
        assert "\n" in text and "https://errors.pydantic.dev/" in text  # what it was about
        entry = d.json("audit")["entries"][-1]
        record = (f"uid {entry['uid']} pid {entry['pid']}: tools.call "
                  f'{{"name":"notes__add","arguments":{{"title":1}}}} -> error: isError '
                  f"result: {text}".replace("\n", "\\n"))
        assert entry["outcome"] == record.split(" -> ", 1)[1]
        assert d.stop() == 0
        assert d.proc is not None and d.proc.stderr is not None
        err = d.proc.stderr.read().decode()
        assert [ln for ln in err.splitlines() if "tools.call" in ln] == [f"corral: {record}"]
        log = (d.state / "logs" / "corral.log").read_text().splitlines()
        assert [ln.split(" audit: ", 1)[1] for ln in log if "tools.call" in ln] == [record]
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_tools_names_servers_not_serving_and_fails_when_one_has_failed() -> None:
    tmp = shared_tmpdir()
    agents = f"""
[mcp_servers.ok]
command = ["{PY}", "{SCRIPTED}", "v2025-11"]

[mcp_servers.broken]
command = ["{PY}", "-c", "import sys; sys.exit(3)"]
max_restarts = 0
"""
    with running_daemon(tmp, agents) as d:
        r = d.cli("tools", "--json")
        assert r.returncode == 1
        res = json.loads(r.stdout)
        assert [t["name"] for t in res["tools"]][:1] == ["ok__echo"]
        assert res["failed"] == ["broken"]
        assert res["unavailable"]["broken"].startswith("MCP server broken#0 is not serving")
        assert r.stderr.startswith("corral: MCP server broken is not serving: ")
        # every listing answers the same envelope, and the CLI says it the same way
        for what, keys in (("resources", ["resources", "resourceTemplates"]),
                           ("prompts", ["prompts"])):
            r = d.cli(what, "--json")
            res = json.loads(r.stdout)
            assert r.returncode == 1 and sorted(res) == sorted(
                [*keys, "unavailable", "failed"])
            assert (res["failed"], list(res["unavailable"])) == (["broken"], ["broken"])
            why = res["unavailable"]["broken"]
            assert why.startswith("MCP server broken")
            r = d.cli(what)
            assert r.returncode == 1 and r.stdout.split()[0] in ("SERVER", "PROMPT")
            assert r.stderr == f"corral: MCP server broken is not serving: {why}\n"
        ready = d.cli("info", "--json")
        assert ready.returncode == 0


def test_status_of_named_agents_has_no_mcp_table_tools_says_why_empty_and_stats_rounds(
        shared: Daemon) -> None:
    assert "\nSERVER " in shared.cli("status").stdout
    named = shared.cli("status", "researcher").stdout
    assert named.startswith("AGENT ") and "SERVER" not in named
    r = shared.cli("add", "--name", "bare", "--command", shlex.join([PY, f"{EXAMPLES}/hello.py"]),
                   "--env", f"PYTHONPATH={ROOT}")
    assert r.returncode == 0, r.stderr
    r = shared.cli("tools", "--agent", "bare")
    assert r.stdout == "no tools: agent bare has an empty allowlist (its `tools` key)\n"
    wait_until(lambda: shared.status().get("bare#0", {}).get("state") == "ready",
               what="bare ready")
    for _ in range(3):
        assert shared.cli("run", "bare", "--input", '{"name": "x"}').returncode == 0
    row = next(ln for ln in shared.cli("stats").stdout.splitlines() if ln.startswith("bare "))
    latency = row.split()[-1]
    # p50/p95/p99 in ms as people read them: 0.42, 12.3, 5764, never 216.093
    assert re.fullmatch(r"\d+(\.\d{1,2})?/\d+(\.\d{1,2})?/\d+(\.\d{1,2})?", latency), row
