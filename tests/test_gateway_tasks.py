"""corral's agents as MCP tools whose calls are corral tasks (the tasks extension, issue 58
item 3; corral/daemon/mcptasks.py): through the real daemon's HTTP gateway at
/mcp/corral, a 2026-07-28 client that declares `io.modelcontextprotocol/tasks` gets a
handle, polls it, cancels it (which cancels the corral task) and reads its result; a
tenant's token sees and touches only its tenant's agents and handles, and a client's
handles not ended are bounded (max_tasks_per_client)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx2
import pytest

from .daemon_harness import PY, Daemon, free_port, running_daemon, shared_tmpdir, sleeper
from .test_daemon_cli import wait_until

TASKS = "io.modelcontextprotocol/tasks"
MANY = Path(__file__).parent / "servers" / "many_tools.py"
BOUND = 2


class Gateway(NamedTuple):
    daemon: Daemon
    origin: str
    tokens: dict[str, str]  # tenant -> its API token (mcp:call)


@contextlib.contextmanager
def started(gateway: str = "") -> Iterator[Gateway]:
    """acme's agent chat and globex's w behind the gateway (`gateway`: more of its keys)."""
    tmp = shared_tmpdir()
    port = free_port()
    agents = sleeper("chat") + 'tenant = "acme"\n' + sleeper("w") + 'tenant = "globex"\n'
    with running_daemon(tmp, agents, extra=f"""
[tenants.acme]
[tenants.globex]
[gateway]
listen = "127.0.0.1:{port}"
max_tasks_per_client = {BOUND}
{gateway}
""") as d:
        tokens = {t: d.json("token", "create", f"mcp-{t}", "--scope", "mcp:call",
                            "--tenant", t)["token"] for t in ("acme", "globex")}
        yield Gateway(d, f"http://127.0.0.1:{port}", tokens)


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    with started() as g:
        yield g


def rpc(g: Gateway, tenant: str, method: str, params: dict[str, Any],
        tasks: bool = True, at: str = "/mcp/corral") -> dict[str, Any]:
    """One 2026-07-28 request at `at` as `tenant`'s token: its JSON-RPC answer."""
    caps: dict[str, Any] = {"extensions": {TASKS: {}}} if tasks else {}
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": {
        **params, "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                            "io.modelcontextprotocol/clientCapabilities": caps}}}
    named = params.get("name", params.get("taskId"))
    headers = {"Authorization": f"Bearer {g.tokens[tenant]}",
               "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method,
               **({"Mcp-Name": named} if isinstance(named, str) else {})}
    r = httpx2.post(g.origin + at, json=body, headers=headers, timeout=60)
    answer: dict[str, Any] = r.json()
    return answer


def corral_task(g: Gateway, task_id: str) -> dict[str, Any]:
    info: dict[str, Any] = g.daemon.json("task", task_id)
    return info


def ended(g: Gateway, tenant: str, task_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        got = rpc(g, tenant, "tasks/get", {"taskId": task_id})["result"]
        return got if got["status"] in ("completed", "failed", "cancelled") else None
    result: dict[str, Any] = wait_until(done, timeout=30, what=f"task {task_id} ended")
    return result


def test_an_agent_called_as_a_task_runs_as_its_corral_task_and_answers_its_output(
        gateway: Gateway) -> None:
    g = gateway
    listed = rpc(g, "acme", "tools/list", {})["result"]["tools"]
    assert [(t["name"], t["execution"]) for t in listed] == \
        [("chat", {"taskSupport": "optional"})]
    made = rpc(g, "acme", "tools/call", {"name": "chat", "arguments": {"do": "echo",
                                                                       "say": "hi"}})
    handle = made["result"]
    assert handle["resultType"] == "task" and handle["status"] == "working", made
    task_id = handle["_meta"]["corral/task"]
    done = ended(g, "acme", handle["taskId"])
    assert done["status"] == "completed"
    assert done["result"]["structuredContent"] == {"do": "echo", "say": "hi"}
    assert done["result"]["isError"] is False
    assert corral_task(g, task_id)["status"] == "succeeded"
    # without the extension the call waits for the task and answers its result
    sync = rpc(g, "acme", "tools/call", {"name": "chat", "arguments": {"do": "fail"}},
               tasks=False)["result"]
    assert sync["isError"] is True and "failed" in sync["content"][0]["text"], sync
    assert "taskId" not in sync


def test_cancelling_the_handle_cancels_the_corral_task_and_globex_touches_none_of_acmes(
        gateway: Gateway) -> None:
    g = gateway
    assert [t["name"] for t in rpc(g, "globex", "tools/list", {})["result"]["tools"]] == \
        ["w"]
    handle = rpc(g, "acme", "tools/call", {"name": "chat", "arguments": {
        "do": "sleep", "seconds": 60}})["result"]
    tid, task_id = handle["taskId"], handle["_meta"]["corral/task"]
    wait_until(lambda: corral_task(g, task_id)["status"] == "running", what="running")
    for method in ("tasks/get", "tasks/cancel"):
        refused = rpc(g, "globex", method, {"taskId": tid})["error"]
        assert refused == {"code": -32602, "message": f"invalid params: no task {tid} of "
                           "this client", "data": {"taskId": tid}}, (method, refused)
    assert rpc(g, "acme", "tasks/get", {"taskId": tid})["result"]["status"] == "working"
    assert corral_task(g, task_id)["status"] == "running"
    # globex cannot run acme's agent either: no handle, no task
    before = len(g.daemon.json("tasks")["tasks"])
    err = rpc(g, "globex", "tools/call", {"name": "chat", "arguments": {}})["error"]
    assert "no such agent: chat" in err["message"], err
    assert len(g.daemon.json("tasks")["tasks"]) == before
    # acme's cancel: an empty ack, the handle cancelled, and so is the corral task
    assert rpc(g, "acme", "tasks/cancel", {"taskId": tid}) == \
        {"jsonrpc": "2.0", "id": 7, "result": {"resultType": "complete"}}
    assert ended(g, "acme", tid)["status"] == "cancelled"
    wait_until(lambda: corral_task(g, task_id)["status"] == "cancelled", what="cancelled")


def test_a_clients_handles_not_ended_are_bounded_and_one_past_submits_no_task(
        gateway: Gateway) -> None:
    g = gateway
    held = [rpc(g, "acme", "tools/call", {"name": "chat", "arguments": {
        "do": "sleep", "seconds": 60}})["result"] for _ in range(BOUND)]
    assert all(h["status"] == "working" for h in held)
    before = len(g.daemon.json("tasks")["tasks"])
    refused = rpc(g, "acme", "tools/call", {"name": "chat", "arguments": {}})["error"]
    assert refused["code"] == -32012 and refused["message"] == (
        f"gateway client token mcp-acme has {BOUND} tasks not ended, its "
        f"max_tasks_per_client {BOUND}: wait for one to end or cancel one"), refused
    assert len(g.daemon.json("tasks")["tasks"]) == before  # nothing was submitted
    # another tenant's client has its own bound
    other = rpc(g, "globex", "tools/call", {"name": "w", "arguments": {"do": "echo"}})
    assert other["result"]["resultType"] == "task", other
    rpc(g, "acme", "tasks/cancel", {"taskId": held[0]["taskId"]})
    ended(g, "acme", held[0]["taskId"])
    again = rpc(g, "acme", "tools/call", {"name": "chat", "arguments": {"do": "echo"}})
    assert again["result"]["resultType"] == "task", again


def test_tasks_methods_of_a_client_that_did_not_declare_the_extension_are_refused(
        gateway: Gateway) -> None:
    err = rpc(gateway, "acme", "tasks/get", {"taskId": "x"}, tasks=False)["error"]
    assert err == {"code": -32021, "message": "missing required client capability: "
                   f"tasks/get needs the {TASKS} extension",
                   "data": {"requiredCapabilities": {"extensions": {TASKS: {}}}}}


def test_a_2025_11_25_session_that_declared_the_extension_is_offered_it_and_no_other_is(
        gateway: Gateway) -> None:
    """The extension is advertised to a 2025-11-25 client only if it declared it in
    initialize (an older schema has no `extensions`); its session's calls are tasks."""
    g = gateway

    def session(declared: bool) -> tuple[httpx2.Client, dict[str, Any]]:
        c = httpx2.Client(base_url=g.origin, timeout=60, headers={
            "Authorization": f"Bearer {g.tokens['acme']}",
            "Accept": "application/json, text/event-stream"})
        r = c.post("/mcp/corral", json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "clientInfo": {"name": "t", "version": "1"},
                "capabilities": {"extensions": {TASKS: {}}} if declared else {}}})
        c.headers["Mcp-Session-Id"] = r.headers["Mcp-Session-Id"]
        caps: dict[str, Any] = r.json()["result"]["capabilities"]
        return c, caps

    plain, caps = session(False)
    with contextlib.closing(plain):
        assert "extensions" not in caps
        refused = plain.post("/mcp/corral", json={"jsonrpc": "2.0", "id": 2,
                                                  "method": "tasks/get",
                                                  "params": {"taskId": "x"}}).json()
        assert refused["error"]["code"] == -32021, refused
    declared, caps = session(True)
    with contextlib.closing(declared):
        assert caps["extensions"] == {TASKS: {}}

        def ask(method: str, params: dict[str, Any]) -> dict[str, Any]:
            got: dict[str, Any] = declared.post("/mcp/corral", json={
                "jsonrpc": "2.0", "id": 3, "method": method, "params": params}).json()
            return got

        handle = ask("tools/call", {"name": "chat", "arguments": {"do": "echo"}})["result"]
        assert handle["resultType"] == "task", handle
        assert ask("tasks/update", {"taskId": handle["taskId"], "inputResponses": {}}) == \
            {"jsonrpc": "2.0", "id": 3, "result": {"resultType": "complete"}}
        assert ask("tasks/get", {})["error"] == {
            "code": -32602, "message": "invalid params: a taskId is needed"}
        assert ask("tasks/get", {"taskId": handle["taskId"]})["result"]["taskId"] == \
            handle["taskId"]


def test_an_ended_handle_is_kept_task_ttl_seconds() -> None:
    """[gateway] task_ttl 2: a handle says its ttl, and is let go that long after it
    ended (its corral task is kept as any: only the handle goes)."""
    with started("task_ttl = 2") as g:
        handle = rpc(g, "acme", "tools/call", {"name": "chat", "arguments": {
            "do": "echo"}})["result"]
        assert handle["ttlMs"] == 2000
        tid, task_id = handle["taskId"], handle["_meta"]["corral/task"]
        assert ended(g, "acme", tid)["ttlMs"] == 2000
        gone = wait_until(lambda: rpc(g, "acme", "tasks/get", {"taskId": tid}).get("error"),
                          timeout=30, what="the handle let go")
        assert gone == {"code": -32602, "message": f"invalid params: no task {tid} of "
                        "this client", "data": {"taskId": tid}}
        assert corral_task(g, task_id)["status"] == "succeeded"


def test_a_servers_tools_run_as_tasks_as_its_task_tools_say() -> None:
    """[mcp_servers.NAME] task_tools: tools their server offers as no task are tasks as
    the operator says — "optional": a client of the extension is given a handle, one
    without it the result at once; "required": a client without it is refused, naming
    the extension; a tool it names not: answered at once to either."""
    with started(f"""
[mcp_servers.many]
command = ["{PY}", "{MANY}", "3"]
start_timeout = 30.0
tenant = "acme"
task_tools = {{ "forecast_*" = "optional", "create_invoice" = "required" }}
""") as g:
        def call(tool: str, tasks: bool) -> dict[str, Any]:
            return rpc(g, "acme", "tools/call", {"name": f"many__{tool}", "arguments": {
                "city": "Oslo"}}, tasks=tasks, at="/mcp")

        handle = call("forecast_weather", True)["result"]
        assert (handle["resultType"], handle["status"]) == ("task", "working"), handle
        done = wait_until(lambda: (r := rpc(g, "acme", "tasks/get", {
            "taskId": handle["taskId"]}, at="/mcp")["result"])["status"] == "completed"
            and r, timeout=30, what="the forecast's task completed")
        said = done["result"]["content"][0]["text"]
        assert "forecast_weather" in said and "Oslo" in said, done
        assert "taskId" not in call("forecast_weather", False)["result"]
        assert call("create_invoice", False)["error"] == {
            "code": -32021, "message": "missing required client capability: tool "
            f"many__create_invoice needs the {TASKS} extension",
            "data": {"requiredCapabilities": {"extensions": {TASKS: {}}}}}
        assert call("create_invoice", True)["result"]["resultType"] == "task"
        assert "taskId" not in call("create_ticket", True)["result"]
