"""Every control method declares its result (corral.methods), and the daemon answers it.

The declared results are what the CLI decodes and the one schema an OpenAPI document is
generated from; a handler whose answer drifts from its declared type fails here, against a
real daemon: each answer must decode strictly into the type AND encode back to the same
JSON (no key dropped, none added, null and absent kept apart, an int not made a float).
"""

from __future__ import annotations

import itertools
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral.methods import REGISTRY

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon, hello, running_daemon, shared_tmpdir
from .test_daemon_cli import wait_until
from .warmforks import sdk_toml

SCRIPTED = Path(__file__).with_name("scripted_mcp.py")
# an MCP server's own answer, passed on as it is: open by design
OPEN = {"tools.call", "resources.read", "prompts.get"}

# the notes server a fork of this process's MCP SDK server (tests/warmforks.py)
NOTES = sdk_toml(f"{EXAMPLES}/notes_server.py")
pytestmark = pytest.mark.usefixtures("warm_mcp_sdk")


def test_every_method_declares_a_result() -> None:
    for name, spec in REGISTRY.items():
        if spec.endless:
            assert spec.result is None, name  # a follow streams and never answers
        elif name in OPEN:
            assert spec.result == dict[str, Any], name
        else:
            assert isinstance(spec.result, type), name
            assert issubclass(spec.result, msgspec.Struct), name


def test_every_result_has_a_json_schema() -> None:
    """The one schema source: the results of every method, in one document."""
    types = [spec.result for spec in REGISTRY.values() if spec.result is not None]
    refs, components = msgspec.json.schema_components(types)
    assert len(refs) == len(types)
    for spec in REGISTRY.values():
        if isinstance(spec.result, type):
            assert spec.result.__name__ in components, spec.name
    # the fixed names of DESIGN section 10 are in the schema as they are on the wire
    status = components["ReplicaStatus"]["properties"]
    assert {"name", "replica", "state", "pid", "uptime", "restarts", "last_exit",
            "cpu_percent", "rss_bytes"} <= set(status)
    assert list(components["TaskResult"]["properties"]) == [
        "task_id", "status", "output", "error", "attempts"]
    assert "resourceTemplates" in components["ResourceList"]["properties"]


def test_workflows_and_teams_take_one_shape_of_params_per_verb() -> None:
    """The kinds kept in revisions share their params (methods.Definition*); each keeps
    its own name and description in the schema, its fields as on the wire."""
    from corral import methods as m

    for verb, base, fields in (
            ("describe", m.DefinitionNamed, {"name"}),
            ("update", m.DefinitionUpdate, {"name", "set"}),
            ("remove", m.DefinitionsRemove, {"names"}),
            ("history", m.DefinitionHistory, {"name", "limit"}),
            ("rollback", m.DefinitionRollback, {"name", "revision"})):
        schemas = []
        for kind in ("workflows", "teams"):
            params = REGISTRY[f"{kind}.{verb}"].params
            assert issubclass(params, base), (kind, verb)
            schema = msgspec.json.schema(params)["$defs"][params.__name__]
            assert (schema["title"], set(schema["properties"])) == (
                f"{kind.capitalize()}{verb.capitalize()}", fields)
            assert kind[:-1] in schema["description"].lower(), (kind, verb)
            schemas.append({k: v for k, v in schema.items()
                            if k not in ("title", "description")})
        assert schemas[0] == schemas[1], verb
    with pytest.raises(msgspec.ValidationError,
                       match=r"^Object contains unknown field `revisions`$"):
        msgspec.convert({"name": "t", "revisions": 1}, m.TeamsRollback)


class Raw:
    """The control socket spoken by hand: the answer's JSON as the daemon wrote it."""

    class _Answer(msgspec.Struct):
        id: int | None = None
        method: str | None = None
        result: msgspec.Raw = msgspec.Raw(b"null")
        error: dict[str, Any] | None = None

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(60)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")
        self.ids = itertools.count(1)

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def call(self, method: str, params: dict[str, Any] | None = None) -> bytes:
        rid = next(self.ids)
        self.sock.sendall(msgspec.json.encode(
            {"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}}) + b"\n")
        while True:
            answer = msgspec.json.decode(self.file.readline(), type=self._Answer)
            if answer.id != rid:
                continue  # a notification
            assert answer.error is None, (method, answer.error)
            return bytes(answer.result)


def holds(result: Any, raw: bytes) -> Any:
    """The answer decoded strictly into its declared type, which encodes it back as the
    daemon wrote it (normalized: the daemon's spacing is not the point)."""
    typed = msgspec.json.decode(raw, type=result)
    assert msgspec.json.encode(typed) == msgspec.json.encode(msgspec.json.decode(raw)), (
        result, raw)
    return typed


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    tmp = shared_tmpdir()
    agents = hello("hello", replicas=2, extra='tools = ["notes__*"]\n') + hello(
        "idle", replicas=0) + f"""
[agents.slow]
command = ["{PY}", "{EXAMPLES}/misbehave.py"]
env = {{ PYTHONPATH = "{ROOT}" }}
tools = ["notes__*"]
approve = ["notes__search"]

[mcp_servers.notes]
command = {NOTES}
start = "eager"
start_timeout = 30.0

[mcp_servers.docs]
command = ["{PY}", "{SCRIPTED}", "v2025-11,resources"]
start = "eager"

[workflows.greet]
[[workflows.greet.steps]]
name = "one"
agent = "hello"
[[workflows.greet.steps]]
name = "two"
agent = "hello"
input = {{ name = "$steps.one.output.greeting" }}

[workflows.slow]
[[workflows.slow.steps]]
name = "wait"
agent = "slow"
input = {{ do = "sleep", seconds = 30 }}

[schedules.daily]
agent = "hello"
cron = "0 6 * * *"
"""
    with running_daemon(tmp, agents) as d:
        yield d


def test_the_daemon_answers_every_method_as_declared(daemon: Daemon) -> None:
    c = Raw(daemon.sock)
    done: set[str] = set()

    def ask(method: str, params: dict[str, Any] | None = None, result: Any = None) -> Any:
        done.add(method)
        return holds(result or REGISTRY[method].result, c.call(method, params))

    try:
        ask("daemon.info")
        status = ask("agents.status")
        assert [a.name for a in status.agents] == ["hello", "hello", "slow"]
        wait_until(lambda: all(s.state == "ready" for s in ask("mcp.status").mcp_servers),
                   what="every MCP server ready")
        ask("agents.status", {"names": ["hello"]})
        ask("agents.start", {"names": ["hello#0"]})
        ask("agents.signal", {"names": ["hello"], "signal": "CONT"})
        paused = ask("agents.pause", {"name": "hello", "replica": 1})
        assert [(r.replica, r.state) for r in paused.replicas] == [(1, "paused")]
        resumed = ask("agents.resume", {"name": "hello"})
        assert [r.state for r in resumed.replicas] == ["ready", "ready"]
        ask("agents.restart", {"names": ["hello#1"]})
        ask("agents.stop", {"names": ["idle"]})
        ask("agents.describe", {"name": "hello"})
        ask("agents.history", {"name": "hello"})
        ask("agents.scale", {"name": "idle", "replicas": 0})
        ask("agents.add", {"agents": {"extra": {
            "command": [PY, f"{EXAMPLES}/hello.py"], "env": {"PYTHONPATH": str(ROOT)},
            "cwd": str(daemon.dir)}}})
        ask("agents.scale", {"name": "extra", "replicas": 2})
        ask("agents.rollback", {"name": "extra"})
        updated = ask("agents.update", {"name": "extra", "set": {"env": {"V": "2"}}})
        assert (updated.revision, updated.change) == (4, "env.V added")
        ask("agents.remove", {"names": ["extra"]})
        ran = ask("tasks.run", {"agent": "hello", "input": {"name": "types"}})
        assert ran.status == "succeeded" and ran.output["greeting"] == "hello, types"
        accepted = ask("tasks.submit", {"agent": "hello", "input": None})
        ask("tasks.get", {"task_id": accepted.task_id, "wait": True})
        # with wait: the outcome within it, in the same answer (`POST /tasks?wait`)
        waited = ask("tasks.submit", {"agent": "hello", "input": {"name": "w"}, "wait": 30})
        assert waited.status == "succeeded" and waited.output["greeting"] == "hello, w"
        assert ask("tasks.list", {}).tasks
        ask("tasks.run", {"agent": "hello", "input": {"name": "s"}, "session": "s1"})
        assert [s.session for s in ask("sessions.list", {}).sessions] == ["s1"]
        assert len(ask("sessions.get", {"agent": "hello", "session": "s1"}).history) == 1
        assert ask("sessions.end", {"agent": "hello", "session": "s1"}).tasks == 1
        ask("events.publish", {"topic": "t", "data": {"x": 1}})
        ask("logs.tail", {"names": ["hello#0"], "lines": 5})
        ask("logs.tail", {})
        ask("logs.rotate", {"names": ["hello"]})
        ask("stats.get")
        ask("stats.history", {"since": 3600, "agent": "hello"})
        ask("tools.list")
        assert ask("tools.list", {"agent": "hello"}).allow == ["notes__*"]
        ask("tools.list", {"agent": "idle"})  # an empty allowlist: `allow` is []
        assert isinstance(ask("tools.pins").pins, list)  # every tool seen, pinned by digest
        ask("tools.call", {"name": "notes__add", "arguments": {"title": "a", "text": "b"}})
        ask("resources.list", {})
        ask("resources.read", {"uri": "mem://doc/0", "server": "docs"})
        ask("prompts.list", {})
        ask("prompts.get", {"name": "docs__greet", "arguments": {"who": "x"}})
        ask("gateway.status")
        ask("mcp.stop", {"name": "docs"})
        ask("mcp.start", {"name": "docs"})
        ask("mcp.restart", {"name": "docs"})
        ask("audit.list", {})
        ask("tokens.create", {"name": "t", "scopes": ["agents:read"], "agents": "w*",
                              "expires_in": 60})
        ask("tokens.list")
        ask("tokens.revoke", {"name": "t"})
        pkg = daemon.dir / "pkg"  # an agent package without dependencies: no download
        pkg.mkdir()
        (pkg / "corral.toml").write_text('[agent]\nname = "pkg"\nversion = "1"\n'
                                         'command = ["python", "hello.py"]\n')
        shutil.copy(EXAMPLES / "hello.py", pkg)
        assert ask("packages.deploy", {"path": str(pkg)}).built
        assert ask("packages.deploy", {"path": str(pkg), "name": "pkg"}).changed is False
        assert ask("packages.releases", {"name": "pkg"}).releases[0].version == "1"
        assert ask("tenants.add", {"tenants": {"acme": {"max_agents": 3}}}).added == ["acme"]
        assert ask("tenants.set", {"name": "acme", "set": {"max_queue": 9}}).quotas == {
            "max_agents": 3, "max_queue": 9}
        assert [t.name for t in ask("tenants.list").tenants] == ["acme", "default"]
        assert ask("tenants.remove", {"names": ["acme"]}).removed == ["acme"]
        ask("config.reload")
        # the report alone: an upgrade itself is held to UpgradeReport in test_upgrade.py
        assert ask("daemon.upgrade", {"report": True}).state == "none"
        # needs [http]: its answer is held to UiLoginResult in tests/test_ui.py
        done.add("ui.login")
        # need [supervisor] mcp_servers_file: their answers (config.reload's ReloadResult)
        # decoded by the CLI in tests/test_mcp_add.py
        done.update({"mcp.add", "mcp.remove"})
        # needs [cluster] and Redis: held to NodesResult in tests/cluster/
        done.add("nodes.list")
        done.add("nodes.drain")
        # needs [tracing]: its answer is held to TraceView in tests/test_tracing.py
        done.add("traces.get")
        assert [w.name for w in ask("workflows.list").workflows] == ["greet", "slow"]
        assert ask("workflows.plan", {"name": "greet"}).agents == ["hello"]
        greeted = ask("workflows.run", {"name": "greet", "input": {"name": "w"}, "wait": 30})
        assert greeted.output["greeting"] == "hello, hello, w"
        assert ask("runs.get", {"run_id": greeted.run_id}).status == "succeeded"
        assert ask("runs.list", {}).runs[0].run_id == greeted.run_id
        waiting = ask("workflows.run", {"name": "slow"})
        ask("runs.get", {"run_id": waiting.run_id, "wait": 0.2})
        assert ask("runs.cancel", {"run_id": waiting.run_id}).status == "cancelled"
        one = {"steps": [{"name": "a", "agent": "hello"}]}
        assert ask("workflows.add", {"workflows": {"rt": one}}).added == ["rt"]
        assert ask("workflows.describe", {"name": "rt"}).revision == 1
        assert ask("workflows.update", {"name": "rt", "set": {"timeout": 5}}).revision == 2
        assert len(ask("workflows.history", {"name": "rt"}).revisions) == 2
        assert ask("workflows.rollback", {"name": "rt"}).restored == 1
        assert ask("workflows.remove", {"names": ["rt"]}).removed == ["rt"]
        gate = {"steps": [{"name": "w", "signal": "go"},
                          {"name": "a", "agent": "hello", "input": "$steps.w.output"}]}
        assert ask("workflows.add", {"workflows": {"gate": gate}}).added == ["gate"]
        gated = ask("workflows.run", {"name": "gate"})
        sent = ask("runs.signal", {"run_id": gated.run_id, "name": "go",
                                   "data": {"name": "s"}})
        assert (sent.run_id, sent.name, sent.seq, sent.duplicate) == (
            gated.run_id, "go", 1, False)
        assert ask("runs.get", {"run_id": gated.run_id, "wait": 30}).status == "succeeded"
        assert [s.name for s in ask("schedules.list").schedules] == ["daily"]
        assert ask("schedules.pause", {"name": "daily"}).paused is True
        assert ask("schedules.resume", {"name": "daily"}).next_fire is not None
        team = {"mode": "broadcast", "members": ["hello"]}
        assert ask("teams.add", {"teams": {"tm": team}}).added == ["tm"]
        assert [t.name for t in ask("teams.list").teams] == ["tm"]
        assert ask("teams.describe", {"name": "tm"}).revision == 1
        assert ask("teams.update", {"name": "tm", "set": {"description": "d"}}).revision == 2
        assert len(ask("teams.history", {"name": "tm"}).revisions) == 2
        assert ask("teams.rollback", {"name": "tm"}).restored == 1
        called = ask("teams.call", {"name": "tm", "input": {"name": "t"}, "wait": 30})
        assert called.status == "succeeded", called
        assert ask("calls.get", {"call_id": called.task_id}).status == "succeeded"
        assert [t.task_id for t in ask("calls.list", {"name": "tm"}).tasks] == [
            called.task_id]
        slow_team = {"mode": "broadcast", "members": ["slow"]}
        assert ask("teams.add", {"teams": {"ts": slow_team}}).added == ["ts"]
        held = ask("teams.call", {"name": "ts", "input": {"do": "sleep", "seconds": 30}})
        assert ask("calls.cancel", {"call_id": held.task_id}).status == "cancelled"
        assert ask("teams.remove", {"names": ["tm", "ts"]}).removed == ["tm", "ts"]
        # a held call's ask (docs/approvals.md), read and decided
        asking = ask("tasks.submit", {"agent": "slow", "input": {
            "do": "tools", "tool": "notes__search", "arguments": {"word": "w"}}})
        [held_ask] = wait_until(lambda: ask("approvals.list").asks, what="an ask")
        assert ask("approvals.get", {"id": held_ask.id}).task_id == asking.task_id
        assert ask("approvals.resolve", {"id": held_ask.id, "decision": "denied"}
                   ).end == "denied"
        # the stream's chunks are notifications; its answer the task as tasks.get's
        assert ask("tasks.stream", {"task_id": ran.task_id}).status == "succeeded"
        slow = ask("tasks.submit", {"agent": "slow", "input": {"do": "sleep", "seconds": 30}})
        assert ask("tasks.cancel", {"task_id": slow.task_id}).status == "cancelled"
        # the wall's clock is read, never moved (a manual one: tests/test_suspension.py)
        assert ask("daemon.clock").manual is False
        ask("daemon.shutdown")
    finally:
        c.close()
    # every method that answers was asked (a new method needs a line here)
    assert done == {n for n, s in REGISTRY.items() if not s.endless}
