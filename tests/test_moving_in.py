"""Moving in with `corral import` (issue 89): a PM2 file's apps run where PM2 runs them
wherever the config is saved, a node app's exit says its error; against a real daemon."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from corral.supervisor.configload import load_config

from .conftest import ROOT
from .daemon_harness import Daemon, corral_run, shared_tmpdir
from .test_daemon_cli import wait_until

NODE = shutil.which("node")


def imported(path: Path) -> str:
    r = corral_run(["import", path.name], cwd=path.parent,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.skipif(NODE is None, reason="node runs the app")
def test_a_pm2_app_runs_in_its_directory_and_a_node_crash_says_its_error() -> None:
    tmp = shared_tmpdir()
    app, conf = tmp / "app", tmp / "conf"
    app.mkdir()
    conf.mkdir()
    (app / "here.sh").write_text('pwd > where.part && mv where.part where\nexec sleep 600\n')
    (app / "crash.js").write_text('function f() { throw new TypeError("port 80 is taken"); }'
                                  "\nf();\n")
    (app / "ecosystem.json").write_text(json.dumps({"apps": [
        {"name": "here", "script": "here.sh"},
        {"name": "crash", "script": "crash.js", "autorestart": False}]}))
    text = imported(app / "ecosystem.json")
    assert f'cwd = "{app}"' in text
    # saved elsewhere than the ecosystem file, as /etc/corral/corral.toml would be
    d = Daemon(conf, text)
    try:
        assert corral_run(["check-config", str(d.config)]).returncode == 0
        d.start()
        wait_until(lambda: (app / "where").exists(), what="here.sh run in its directory")
        assert (app / "where").read_text() == f"{app}\n"
        wait_until(lambda: d.status()["crash#0"]["last_exit"] is not None, what="crash")
        # not node's last line (`Node.js v20.…`): the error its stack trace is under
        assert d.status()["crash#0"]["last_exit"] == (
            "exited with status 1: TypeError: port 80 is taken")
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_claude_desktop_file_with_its_own_keys_is_taken_as_mcp_servers_file(
        tmp_path: Path) -> None:
    """The file `corral import` reads, read as `mcp_servers_file` too: the clients' own
    keys (autoApprove, alwaysAllow, timeout) passed over, Cursor's envFile carried."""
    (tmp_path / "claude.json").write_text(json.dumps({"mcpServers": {
        "files": {"command": "npx", "args": ["-y", "server-filesystem", "/srv"],
                  "autoApprove": ["read_file"], "alwaysAllow": [], "timeout": 60,
                  "envFile": ".env"}}}))
    (tmp_path / ".env").write_text("A=1\n")
    path = tmp_path / "corral.toml"
    path.write_text('[supervisor]\nmcp_servers_file = "claude.json"\n')
    r = corral_run(["check-config", "--no-check", str(path)])
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{path}: ok (0 agents, 1 MCP server)\n",
                                                  "")
    spec = load_config(path).mcp_servers["files"]
    assert (spec.command, spec.args, spec.env_file) == (
        ["npx"], ["-y", "server-filesystem", "/srv"], [str(tmp_path / ".env")])
    # a key no client writes is still refused, named
    (tmp_path / "claude.json").write_text(json.dumps({"mcpServers": {
        "files": {"command": "npx", "autoApprove": [], "frobnicate": 1}}}))
    r = corral_run(["check-config", "--no-check", str(path)])
    assert (r.returncode, r.stderr) == (1, (
        f"corral: invalid config: {tmp_path / 'claude.json'}: mcpServers.files: Object "
        "contains unknown field `frobnicate`\n"))
    # and `corral import` says of the clients' keys what it always said
    r = corral_run(["import", "claude.json"], cwd=tmp_path,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.stderr.splitlines() == [
        "corral import: claude.json: mcpServers.files: autoApprove: []: not carried: corral "
        "asks for approval by its own policies ([approvals])",
        'corral import: claude.json: mcpServers.files: frobnicate: 1: not carried: not a '
        "key corral import knows of an MCP server"]
