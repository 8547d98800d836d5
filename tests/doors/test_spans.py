"""The trace link at every door (DESIGN 28, docs/tracing.md "One span a call"): a tool
call is one client span, named and attributed as OpenTelemetry's GenAI and MCP
conventions say (`gen_ai.operation.name` `execute_tool`, or `invoke_agent` for an agent
called as a tool; `gen_ai.tool.name`, `gen_ai.agent.name`, `mcp.method.name`), a child
of its task's attempt or, for a call of no task, of the context its caller sent in
`params._meta`; the MCP server is sent that span's `traceparent` in `params._meta`, and an
agent called as a tool runs a task whose own span is that span's child.
At each door of tests/doors/conftest.py, on both homes: real daemons exporting to a real
OTLP/HTTP receiver (decoded by the official opentelemetry-proto package), a real agent
(tests/doors/door_agent.py) and a real MCP server that answers with the context it got
(tests/servers/traced_mcp.py)."""

from __future__ import annotations

import http.server
import json
import secrets
import shutil
import tempfile
import textwrap
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from ..conftest import ROOT
from ..contract.home import KINDS, Home, made
from ..daemon_harness import PY
from ..test_daemon_cli import wait_until
from .conftest import CLIENT as GATEWAY_CLIENT
from .conftest import (
    CLIENT_DOORS,
    CLIENT_TOKEN,
    HERE,
    IDLE_DOORS,
    SERVERS,
    TASK_DOORS,
    tokens_file,
)
from .door_agent import VERSION
from .test_doors import stdio

PATIENCE = 60.0
TRACE = "ab" * 16
SPAN = "cd" * 8
CLIENT, SERVER = 3, 2  # OTLP's SpanKind values
# the door a Call names (tasks/call.py), by the suite's door
DOOR = {"worker": "worker", "worker-no-task": "worker", "/mcp": "/mcp",
        "/mcp/NAME": "/mcp/NAME", "/mcp/corral": "/mcp/corral", "/mcp idle": "/mcp",
        "/mcp/NAME idle": "/mcp/NAME", "/mcp/corral idle": "/mcp/corral",
        # (the bridge posts to /mcp)
        "/mcp client": "/mcp", "/mcp/NAME client": "/mcp/NAME", "stdio client": "/mcp",
        "stdio operator": "/mcp"}


class Receiver(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP traces endpoint: every span it is sent, decoded."""

    protocol_version = "HTTP/1.1"
    spans: list[Any] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        req = ExportTraceServiceRequest.FromString(body)
        with self.lock:
            self.spans.extend(s for rs in req.resource_spans for ss in rs.scope_spans
                              for s in ss.spans)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *a: Any) -> None:
        pass

    @classmethod
    def received(cls) -> list[Any]:
        with cls.lock:
            return list(cls.spans)


def attrs(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value"))
    return out


def config(tmp: Path, port: int) -> str:
    agent = textwrap.dedent(f"""
        command = ["{PY}", "{HERE}/door_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        stop_timeout = 10.0
        spawns = ["target"]
        tools = ["traced__*", "corral__target"]
    """)
    return (f"[agents.caller]{agent}\n"
            f'[agents.pair]\ncommand = ["{PY}", "{HERE}/span_agent.py"]\n'
            f'env = {{ PYTHONPATH = "{ROOT}" }}\nmax_concurrent_tasks = 2\n'
            'tools = ["traced__*"]\n\n'

            f'[agents.target]\ncommand = ["{PY}", "{ROOT}/examples/misbehave.py"]\n'
            f'env = {{ PYTHONPATH = "{ROOT}" }}\n\n'
            f'[mcp_servers.traced]\ncommand = ["{PY}", "{SERVERS}/traced_mcp.py"]\n\n'
            f'[mcp_servers.sk]\ncommand = ["{PY}", "{SERVERS}/skills_mcp.py"]\n'
            'start_timeout = 30.0\n\n'
            f'[gateway]\nlisten = "127.0.0.1:0"\n'
            f'tokens_file = "{tokens_file(tmp, ["traced__*", "sk__*"])}"\n\n'
            f'[tracing]\nendpoint = "http://127.0.0.1:{port}/v1/traces"\nsample = 1.0\n'
            "export_interval = 0.2\n")


@pytest.fixture(scope="module", params=KINDS)
def home(request: pytest.FixtureRequest) -> Iterator[Home]:
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    tmp = Path(tempfile.mkdtemp(prefix="spans-"))  # short: the daemon's sockets are in it
    try:
        with made(request.param, tmp, config(tmp, receiver.server_address[1])) as h:
            yield h
    finally:
        receiver.shutdown()
        receiver.server_close()
        thread.join()
        shutil.rmtree(tmp, ignore_errors=True)


def called(door: str) -> tuple[str, dict[str, Any], str, str, str]:
    """The tool a door's test calls, its arguments, and the span's gen_ai.tool.name,
    gen_ai.operation.name and gen_ai.agent.name."""
    if "corral" in door:
        return "corral__target", {"do": "echo"}, "target", "invoke_agent", "target"
    return "traced__where", {}, "where", "execute_tool", "caller"


def post(url: str, token: str, path: str, name: str, arguments: dict[str, Any],
         traceparent: str) -> dict[str, Any]:
    """A tools/call at the gateway with the replica's token, its context in `_meta`."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": name, "arguments": arguments, "_meta": {
            "traceparent": traceparent,
            "io.modelcontextprotocol/protocolVersion": VERSION,
            "io.modelcontextprotocol/clientCapabilities": {}}}}).encode()
    req = urllib.request.Request(url + path, data=body, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": VERSION,
        "Mcp-Method": "tools/call", "Mcp-Name": name})
    try:
        with urllib.request.urlopen(req, timeout=PATIENCE) as r:
            said: dict[str, Any] = json.loads(r.read())
    except urllib.error.HTTPError as e:
        said = json.loads(e.read() or b"{}")
    return said


def tool_spans(match: Any) -> list[Any]:
    return [s for s in Receiver.received() if s.kind == CLIENT
            and attrs(s).get("mcp.method.name") == "tools/call" and match(s)]


def assert_invoked_under(span: Any) -> None:
    """The agent called as a tool: its task's own span is the call span's child."""
    wait_until(lambda: [s for s in Receiver.received() if s.kind == SERVER
                        and s.name == "invoke_agent target" and s.trace_id == span.trace_id
                        and s.parent_span_id == span.span_id],
               PATIENCE, "the invoked agent's task's span, the call's child")


def assert_genai(span: Any, door: str, tool: str, operation: str, agent: str) -> None:
    a = attrs(span)
    assert span.name == f"tools/call {tool}", span.name
    assert (a["gen_ai.operation.name"], a["gen_ai.tool.name"], a["gen_ai.agent.name"],
            a["corral.call.door"]) == (operation, tool, agent, DOOR[door]), a
    # a journaled call's key, else the span's own id
    assert a["gen_ai.tool.call.id"] == span.span_id.hex() or \
        len(a["gen_ai.tool.call.id"]) == 32, a


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", TASK_DOORS)
def test_a_tasks_call_is_one_span_of_its_trace_and_its_context_goes_upstream(
        home: Home, door: str) -> None:
    """A task's call (its task named or not, at the worker link or a gateway door): one
    client span in the task's trace (the caller's, given at submission), under the
    task's attempt; the MCP server is sent that span as its parent."""
    name, arguments, tool, operation, agent = called(door)
    task_id = home.call("tasks.submit", {
        "agent": "caller", "traceparent": f"00-{TRACE}-{SPAN}-01",
        "input": {"calls": [{"door": door, "tool": name, "arguments": arguments}]}})[
        "task_id"]
    done = home.call("tasks.get", {"task_id": task_id, "wait": True})
    assert done["status"] == "succeeded", done
    (outcome,) = done["output"]
    assert not outcome.get("isError") and "error" not in outcome, outcome

    def of_task(s: Any) -> bool:
        return bool(attrs(s).get("corral.task.id") == task_id)
    # the task's own span is put after its calls': once it is here, they are too
    (task_span,) = wait_until(lambda: [s for s in Receiver.received() if s.kind == SERVER
                                       and of_task(s)], PATIENCE, "the task's span")
    (span,) = tool_spans(of_task)
    assert span.trace_id.hex() == TRACE and task_span.trace_id.hex() == TRACE
    assert_genai(span, door, tool, operation, agent)
    (attempt,) = [s for s in Receiver.received() if s.name == "task/run caller"
                  and s.parent_span_id == task_span.span_id]
    assert span.parent_span_id == attempt.span_id
    if operation == "execute_tool":
        assert outcome["text"] == f"00-{TRACE}-{span.span_id.hex()}-01", outcome
    else:
        assert_invoked_under(span)


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", IDLE_DOORS)
def test_a_call_of_no_task_is_one_span_under_its_callers_context(home: Home,
                                                                  door: str) -> None:
    """A replica's call of no task at the gateway, with its client's context in
    `params._meta`: one client span, the child of that context (its sampled flag
    honoured), its client the replica; the MCP server is sent that span as its parent."""
    name, arguments, tool, operation, agent = called(door)
    env = home.call("tasks.run", {"agent": "caller", "input": {"env": True}})["output"]
    trace = secrets.token_hex(16)  # this door's own trace
    server, _, own = name.partition("__")
    path = "" if door == "/mcp idle" else f"/{server}"
    said = post(env["CORRAL_MCP_URL"], env["CORRAL_MCP_TOKEN"], path,
                name if path == "" else own, arguments, f"00-{trace}-{SPAN}-01")
    assert "result" in said and not said["result"].get("isError"), said

    def of_trace(s: Any) -> bool:
        return bool(s.trace_id.hex() == trace)
    (span,) = wait_until(lambda: tool_spans(of_trace), PATIENCE, "the call's span")
    assert span.parent_span_id.hex() == SPAN
    assert_genai(span, door, tool, operation, agent)
    assert attrs(span)["corral.gateway.client"].startswith("caller#"), attrs(span)
    if operation == "execute_tool":
        text = said["result"]["content"][0]["text"]
        assert text == f"00-{trace}-{span.span_id.hex()}-01", said
    else:
        assert_invoked_under(span)


@pytest.mark.deadline(120)
def test_a_worker_link_call_of_no_task_is_one_span_under_its_callers_context(
        home: Home) -> None:
    """The worker link naming no task, of a replica that could run another task (so the
    call is its replica's, no task's), its context in `_meta`: one client span, the
    child of that context, its replica named; the MCP server is sent that span."""
    trace = secrets.token_hex(16)
    said = home.call("tasks.run", {"agent": "pair", "input": {
        "tool": "traced__where", "traceparent": f"00-{trace}-{SPAN}-01"}})
    assert said["status"] == "succeeded", said

    def of_trace(s: Any) -> bool:
        return bool(s.trace_id.hex() == trace)
    (span,) = wait_until(lambda: tool_spans(of_trace), PATIENCE, "the call's span")
    assert span.parent_span_id.hex() == SPAN
    assert_genai(span, "worker", "where", "execute_tool", "pair")
    a = attrs(span)
    assert a["corral.replica"].startswith("pair#") and "corral.task.id" not in a, a
    assert said["output"] == f"00-{trace}-{span.span_id.hex()}-01", said


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", CLIENT_DOORS)
def test_a_clients_call_is_one_span_under_its_context(home: Home, door: str) -> None:
    """A gateway client's call that is no agent's (a token's holder), its context in
    `params._meta`: one client span of the chain's trace link at the door it came by, the
    child of that context, its client named and no agent; the MCP server is sent that
    span as its parent."""
    trace = secrets.token_hex(16)
    traceparent = f"00-{trace}-{SPAN}-01"
    client = "operator" if door == "stdio operator" else GATEWAY_CLIENT
    if door.startswith("stdio"):
        got = stdio(str(home.entry(0).sock), "traced__where", {},
                    None if client == "operator" else CLIENT_TOKEN,
                    said={"traceparent": traceparent})
        assert not got["isError"], got
        text = got["text"]
    else:
        path, name = ("", "traced__where") if door == "/mcp client" else ("/traced", "where")
        said = post(home.call("gateway.status", {})["url"], CLIENT_TOKEN, path, name, {},
                    traceparent)
        assert "result" in said and not said["result"].get("isError"), said
        text = said["result"]["content"][0]["text"]

    def of_trace(s: Any) -> bool:
        return bool(s.trace_id.hex() == trace)
    (span,) = wait_until(lambda: tool_spans(of_trace), PATIENCE, "the call's span")
    assert span.parent_span_id.hex() == SPAN
    a = attrs(span)
    assert span.name == "tools/call where", span.name
    assert (a["gen_ai.operation.name"], a["gen_ai.tool.name"], a["corral.call.door"],
            a["corral.gateway.client"]) == ("execute_tool", "where", DOOR[door], client), a
    assert "gen_ai.agent.name" not in a, a
    assert text == f"00-{trace}-{span.span_id.hex()}-01", text


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", ("/mcp client", "/mcp/NAME client"))
def test_a_skill_read_is_one_span_under_its_callers_context(home: Home, door: str) -> None:
    """A skill read is a call of the chain (decision 1691): its trace link makes one
    client span, the child of the context its client sent in `params._meta`, named and
    attributed as MCP's conventions name a request (`mcp.method.name` its method, no
    GenAI tool), its skill, server, door and client named."""
    trace = secrets.token_hex(16)
    path, uri = ("", "skill://sk/deploy-check/SKILL.md") if door == "/mcp client" else (
        "/sk", "skill://deploy-check/SKILL.md")
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "skills/get", "params": {
        "uri": uri, "_meta": {
            "traceparent": f"00-{trace}-{SPAN}-01",
            "io.modelcontextprotocol/protocolVersion": VERSION,
            "io.modelcontextprotocol/clientCapabilities": {"extensions": {
                "io.modelcontextprotocol/skills": {}}}}}}).encode()
    req = urllib.request.Request(home.call("gateway.status", {})["url"] + path, data=body,
                                 headers={
        "Authorization": f"Bearer {CLIENT_TOKEN}", "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": VERSION,
        "Mcp-Method": "skills/get"})
    with urllib.request.urlopen(req, timeout=PATIENCE) as r:
        said = json.loads(r.read())
    assert said["result"]["skill"]["uri"] == uri, said

    def spans() -> list[Any]:
        return [s for s in Receiver.received() if s.kind == CLIENT
                and s.trace_id.hex() == trace]
    (span,) = wait_until(spans, PATIENCE, "the read's span")
    assert (span.name, span.parent_span_id.hex()) == ("skills/get deploy-check", SPAN)
    a = attrs(span)
    assert (a["mcp.method.name"], a["corral.skill.name"], a["corral.mcp.server"],
            a["corral.call.door"], a["corral.gateway.client"]) == (
        "skills/get", "deploy-check", "sk", DOOR[door], GATEWAY_CLIENT), a
    assert not [k for k in a if k.startswith("gen_ai.")], a
