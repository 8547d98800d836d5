"""The door contract (DESIGN 28, docs/architecture.md "One door per call"): each link's
promise is one test, run at every door a tool call enters by — the worker link naming
its task and naming none, `/mcp`, `/mcp/NAME` and `/mcp/corral` from a task, and the
gateway's paths with the replica's token while it runs no task, and `corral mcp serve`
with it (its stdio bridged to /mcp); on both homes. Real
daemons, real agents (tests/doors/door_agent.py), real MCP servers."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import re
import subprocess
from typing import Any, Protocol
from urllib.parse import urlsplit

import pytest

from corral import jsonrpc
from corral.cli.client import CallFailed

from ..conftest import ROOT
from ..contract.home import Home, Tenant
from ..daemon_harness import corral_popen
from ..test_daemon_cli import wait_until
from .conftest import (
    AGENTS_CLIENT,
    CLIENT,
    CLIENT_DOORS,
    CLIENT_TOKEN,
    CLIENT_TOOLS,
    DOORS,
    IDLE_DOORS,
    ONE,
    ONE_TOKEN,
    RATED,
    TASK_DOORS,
    TOKEN_DOORS,
    WORKER_IDLE,
    Entry,
)
from .door_agent import VERSION, gateway

PATIENCE = 60.0
POOL = concurrent.futures.ThreadPoolExecutor(4)
# the command layer's tools.call (decision 2052): the HTTP API's POST /tools/NAME/call as an
# API token of mcp:call of no tenant, and `corral tools call`'s control method as the
# socket's operator; each a door of the one chain, as the operator's host's at stdio
REST_OPERATOR, CONTROL_OPERATOR = "REST operator", "control operator"
COMMAND_DOORS = (REST_OPERATOR, CONTROL_OPERATOR)
WHOLE = {"limit": 1 << 30}  # audit.list's rows: all of them
# by the home, not its id: a torn-down home's id is taken again by the next one's
_REST_TOKENS: dict[Home, Tenant] = {}


def rest_operator(d: Entry) -> Tenant:
    """The first entry's REST API as the home's API token of mcp:call (made once)."""
    rest = _REST_TOKENS.get(d.home)
    if rest is None:
        made = d.cli("token", "create", "door-rest", "--scope", "mcp:call")
        assert made.returncode == 0, made.stderr
        rest = _REST_TOKENS[d.home] = Tenant(d.home.ports[0], made.stdout.strip())
    return rest


def command_call(d: Entry, door: str, tool: str, arguments: dict[str, Any]
                 ) -> dict[str, Any]:
    """A tools.call at a command door: its outcome as door_agent.py's `gateway` says one."""
    if door == REST_OPERATOR:
        status, said = rest_operator(d)("POST", f"/tools/{tool}/call",
                                        {"arguments": arguments})
        if status != 200:
            return {"error": said.get("code"), "message": said.get("detail")}
    else:
        try:
            said = d.ask("tools.call", {"name": tool, "arguments": arguments})
        except CallFailed as e:
            return {"error": e.code, "message": e.message}
    content = said.get("content") or [{}]
    return {"text": content[0].get("text"), "isError": bool(said.get("isError"))}


class Made:
    """A call under way at a door: by a task of `agent` (its last call's outcome), or
    by the test with the replica's token (no task)."""

    def __init__(self, d: Entry, agent: str, door: str, tool: str,
                 arguments: dict[str, Any], before: list[dict[str, Any]] | None = None,
                 key: str | None = None, client: tuple[str, str] | None = None,
                 node: int = 0) -> None:
        """`key`: the call's idempotency key (at a gateway door, in its `_meta`);
        `client`: at a client's door, another client than CLIENT, (its name, its token);
        `node`: the entry whose replica makes a call of no task (a `local` run there: a
        cluster's task may be either node's; what the call asks is every node's,
        test_an_ask_of_a_call_of_no_task_is_every_nodes)."""
        if door == WORKER_IDLE:
            agent, door = f"{agent}-idle", "worker-no-task"
        self.d, self.agent = d, agent
        self.task_id: str | None = None
        if door in COMMAND_DOORS:
            self.agent = "token door-rest" if door == REST_OPERATOR else "operator"
            self.owner = f"replica:gateway:{self.agent}:"
            self.future = POOL.submit(command_call, d, door, tool, arguments)
            return
        if door in TASK_DOORS:
            calls = [*(before or []), {"door": door, "tool": tool, "arguments": arguments,
                                       "key": key}]
            self.task_id = d.ask("tasks.submit", {"agent": agent,
                                                  "input": {"calls": calls}})["task_id"]
            return
        token: str | None
        if door in (*CLIENT_DOORS, AGENTS_CLIENT):  # no agent's (a token's, the operator)
            name, token = client or (("operator", None) if door == "stdio operator"
                                     else (CLIENT, CLIENT_TOKEN))
            self.agent = name
            self.owner = f"replica:gateway:{self.agent}:"  # (its asks': the call's own)
            url = d.ask("gateway.status", {})["url"]
        else:
            env = d.home.call("tasks.run", {"agent": agent, "input": {"env": True},
                                            "local": True}, at=node)["output"]
            url, token = env["CORRAL_MCP_URL"], env["CORRAL_MCP_TOKEN"]
            self.owner = f"replica:{agent}#"  # (its asks': its incarnation's)
        if door.startswith("stdio"):  # at the node whose gateway the replica was told of
            at = next(i for i in range(len(d.home.entries))
                      if d.home.call("gateway.status", {}, at=i)["url"] == url)
            sock = str(d.home.entry(at).sock)
            for step in before or []:
                stdio(sock, step["tool"], step.get("arguments", {}), token)
            self.future = POOL.submit(stdio, sock, tool, arguments, token, key)
            return
        server, _, own = tool.partition("__")
        at, name = ("", tool) if door.split()[0] == "/mcp" else (f"/{server}", own)
        for step in before or []:
            gateway(at if step["door"] == door else "", step["tool"] if at == "" else
                    step["tool"].partition("__")[2], step.get("arguments", {}), url, token)
        self.future = POOL.submit(gateway, at, name, arguments, url, token, key)

    def outcome(self) -> dict[str, Any]:
        if self.task_id is None:
            said: dict[str, Any] = self.future.result(PATIENCE)
            return said
        done = self.d.ask("tasks.get", {"task_id": self.task_id, "wait": True})
        assert done["status"] == "succeeded", done
        outcomes: list[dict[str, Any]] = done["output"]
        return outcomes[-1] if len(outcomes) == 1 else {"all": outcomes}

    def ask(self, at: int = 0) -> dict[str, Any]:
        """The person's ask the call waits on, once it is listed at entry `at`."""
        def mine() -> dict[str, Any] | None:
            for a in self.d.home.call("approvals.list", at=at)["asks"]:
                if a["agent"] == self.agent and (
                        a["task_id"] == self.task_id if self.task_id is not None
                        else a["task_id"].startswith(self.owner)):
                    return dict(a)
            if self.task_id is not None:
                done = self.d.ask("tasks.get", {"task_id": self.task_id})
                assert done["finished"] is None, f"ended with no ask: {done}"
            else:
                assert not self.future.done(), f"answered with no ask: {self.future.result()}"
            return None
        found: dict[str, Any] = wait_until(mine, PATIENCE, f"an ask of {self.agent}")
        return found


def stdio(sock: str, tool: str, arguments: dict[str, Any], token: str | None,
          key: str | None = None, said: dict[str, Any] | None = None) -> dict[str, Any]:
    """A tools/call through `corral mcp serve --token` (none: as the socket's peer, the
    operator), as a 2025-11-25 host makes it: its outcome as door_agent.py's `gateway`
    says one; `said`: more of its `_meta`."""
    proc = corral_popen(
        ["--socket", sock, "mcp", "serve", *(("--token", token) if token is not None else ())],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    meta = {"io.corral/idempotency-key": key} if key is not None else {}
    meta.update(said or {})
    for rid, method, params in (
            (1, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                               "clientInfo": {"name": "host", "version": "1"}}),
            (None, "notifications/initialized", {}),
            (2, "tools/call", {"name": tool, "arguments": arguments, "_meta": meta})):
        proc.stdin.write(json.dumps({"jsonrpc": "2.0", "method": method, "params": params,
                                     **({"id": rid} if rid else {})}) + "\n")
    proc.stdin.flush()
    try:
        said = next(got for got in map(json.loads, proc.stdout) if got.get("id") == 2)
    finally:
        proc.stdin.close()
        proc.wait(PATIENCE)
    if "error" in said:
        return {"error": said["error"].get("code"), "message": said["error"].get("message")}
    content = said["result"].get("content") or [{}]
    return {"text": content[0].get("text"), "isError": bool(said["result"].get("isError"))}


def decide(d: Entry, ask: dict[str, Any], decision: str) -> None:
    said = d.cli("approvals", decision, ask["id"])
    assert said.returncode == 0, said.stderr


@pytest.mark.deadline(240)
@pytest.mark.parametrize("door", [x for x in DOORS + CLIENT_DOORS if "corral" not in x]
                         + list(COMMAND_DOORS))
def test_a_drifted_tool_is_blocked_until_a_person_approves_its_ask(daemon: Entry,
                                                                   door: str) -> None:
    """The pins link: the tool's definition changed since it was pinned; the call waits
    on an ask `corral approvals` shows, and is made once a person approves it (at the
    command doors too: tools.call is a door of the chain, decision 2052)."""
    d = daemon
    d.each("tools.list")  # its definition as it is now seen, so pinned
    description = f"Fetch a URL, changed for {door}."
    (d.dir / "description").write_text(description)
    d.each("mcp.restart", {"name": "drift"})
    made = Made(d, "caller", door, "drift__fetch", {"url": door})
    ask = made.ask()
    assert ask["kind"] == "approval" and ask["subject"]["tool"] == "drift__fetch", ask
    assert ask["subject"]["pin"]["now"]["description"] == description
    listed = d.cli("approvals")
    assert ask["id"] in listed.stdout, listed.stdout
    decide(d, ask, "approve")
    assert made.outcome() == {"text": f"fetched {door}", "isError": False}


@pytest.mark.deadline(240)
@pytest.mark.parametrize("door", [x for x in DOORS + CLIENT_DOORS if "corral" not in x]
                         + list(COMMAND_DOORS))
def test_a_drifted_tool_denied_is_refused_naming_the_drift_and_recorded(
        daemon: Entry, door: str) -> None:
    """The pins link, denied: the call is refused naming the drift, and the refusal is
    the boundary's (`boundary.refused` of kind pin, an audit row), at every door the
    chain has, the command doors' tools.call too (decision 2052)."""
    d = daemon
    d.each("tools.list")
    (d.dir / "description").write_text(f"Fetch a URL, denied for {door}.")
    d.each("mcp.restart", {"name": "drift"})
    before = len(refused(d, "pin", "drift__fetch"))
    made = Made(d, "caller", door, "drift__fetch", {"url": door})
    decide(d, made.ask(), "deny")
    said = made.outcome()
    assert said["error"] == jsonrpc.TOOL_NOT_ALLOWED and said["message"].startswith(
        "tool drift__fetch is blocked: its definition changed since it was pinned "
        "(description differ; pinned "), said
    recorded(d, made, "pin", "drift__fetch", before)


@pytest.mark.deadline(240)
def test_a_clients_ask_is_withdrawn_when_its_call_ends_first(daemon: Entry) -> None:
    """The pins link's ask of a client that is no agent's is its call's own: the client
    gone before a person decided (its connection closed), the ask is withdrawn and none
    is left pending in `corral approvals` (an attacker's pass: else each call a client
    left would hold one of its tenant's pending asks for ever)."""
    d = daemon
    d.each("tools.list")
    (d.dir / "description").write_text("Fetch a URL, changed for a client that goes.")
    d.each("mcp.restart", {"name": "drift"})
    url = urlsplit(d.ask("gateway.status", {})["url"])
    assert url.hostname is not None
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=PATIENCE)
    conn.request("POST", url.path, json.dumps({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "drift__fetch", "arguments": {"url": "gone"}, "_meta": {
                "io.modelcontextprotocol/protocolVersion": VERSION,
                "io.modelcontextprotocol/clientCapabilities": {}}}}), {
        "Authorization": f"Bearer {CLIENT_TOKEN}", "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": VERSION,
        "Mcp-Method": "tools/call", "Mcp-Name": "drift__fetch"})

    def pending() -> dict[str, Any] | None:
        return next((a for a in d.ask("approvals.list")["asks"]
                     if a["task_id"].startswith(f"replica:gateway:{CLIENT}:")), None)
    ask = wait_until(pending, PATIENCE, "the client's ask")
    conn.close()
    ended = wait_until(lambda: (lambda a: a if a["end"] is not None else None)(
        d.ask("approvals.get", {"id": ask["id"]})), PATIENCE, "the ask ended")
    assert (ended["end"], ended["by"]) == ("withdrawn", "corral"), ended
    assert pending() is None


def audit(d: Entry) -> list[dict[str, Any]]:
    """Every node's audit rows, the whole log, in the order they were written: a row is
    the node's that wrote it (a cluster's task, and so its call's refusal, may be either
    node's), and a window of the latest rows lets an earlier row of the same target slide
    out as the call writes its own, so a count waited on to grow stays as it was."""
    return sorted((e for at in range(len(d.home.entries))
                   for e in d.home.call("audit.list", WHOLE, at=at)["entries"]),
                  key=lambda e: e["time"])


def refused(d: Entry, kind: str, target: str) -> list[tuple[str, str | None]]:
    """The (agent, task) of each `boundary.refused` audit row of `kind` and `target`."""
    return [(e["params"]["agent"], e["params"]["task"]) for e in audit(d)
            if e["method"] == "boundary.refused" and e["params"]["kind"] == kind
            and e["params"]["target"] == target]


class Caller(Protocol):
    """Whose a call is, as its refusal's row names it (test_model_door.py's Made too)."""

    agent: str
    task_id: str | None


def recorded(d: Entry, made: Caller, kind: str, target: str, before: int) -> None:
    """The refusal is the boundary's: one `boundary.refused` row more, naming the agent,
    the call's task (a call of no task: none) and `target`."""
    rows = wait_until(lambda: (lambda now: now if len(now) > before else None)(
        refused(d, kind, target)), PATIENCE, f"the {kind} refusal's audit row")
    assert rows[before:] == [(made.agent, made.task_id)], rows


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", (*DOORS, *CLIENT_DOORS, AGENTS_CLIENT, *COMMAND_DOORS))
def test_a_policy_deny_is_the_tools_error_and_recorded(daemon: Entry, door: str) -> None:
    """The policy rules link: a rule's deny, whatever the door and whoever calls (a
    client that is no agent's too, the operator's own host included: decision 1641; the
    operator's tools.call by the HTTP API and the control socket: decision 2052); the
    refusal the boundary's (`boundary.refused` of kind policy, its one audit row)."""
    tool, rule, arguments = ("corral__denied", "no denied agent", {"amount": 1}) \
        if "corral" in door else ("pol__http_get", "no pay host", {"host": "pay.example"}) \
        if door in (*CLIENT_DOORS, *COMMAND_DOORS) else ("pol__pay", "no pay", {"amount": 1})
    target = f"{tool} (policy rule {rule})"
    before = len(refused(daemon, "policy", target))
    made = Made(daemon, "caller", door, tool, arguments)
    said = made.outcome()
    assert said == {"text": f"tool call {tool} is denied by policy rule {rule}",
                    "isError": True}, said
    recorded(daemon, made, "policy", target, before)


def nested(levels: int, leaf: Any) -> Any:
    """`leaf` under `levels` objects, each of one member."""
    for _ in range(levels):
        leaf = {"a": leaf}
    return leaf


# a call's arguments the worker link and the gateway take (their JSON decoders' depth),
# deeper than a walk of two frames a level reaches (attacker's pass, session 17)
DEEP = 700


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", (*DOORS, *COMMAND_DOORS, *CLIENT_DOORS, AGENTS_CLIENT))
def test_a_policy_deny_of_arguments_nested_deep_is_refused_and_recorded(
        daemon: Entry, door: str) -> None:
    """The policy rules link's deny of a call whose arguments are nested as deep as the
    doors' decoders take: the rule's refusal, recorded as the boundary's, as for any
    arguments (an agent's denied call was an internal error and left no row: its
    verdict's shape, walked for the record, recursed past the interpreter's limit)."""
    tool, rule = ("corral__denied", "no denied agent") if "corral" in door else (
        "pol__http_get", "no pay host") if door in (*CLIENT_DOORS, *COMMAND_DOORS) else (
        "pol__pay", "no pay")
    arguments = {"amount": 1, "host": "pay.example", "deep": nested(DEEP, 1)}
    target = f"{tool} (policy rule {rule})"
    before = len(refused(daemon, "policy", target))
    made = Made(daemon, "caller", door, tool, arguments)
    said = made.outcome()
    assert said == {"text": f"tool call {tool} is denied by policy rule {rule}",
                    "isError": True}, said
    recorded(daemon, made, "policy", target, before)


@pytest.mark.deadline(240)
@pytest.mark.parametrize("door", (*CLIENT_DOORS, *COMMAND_DOORS))
def test_a_clients_call_a_rule_holds_waits_for_a_person(daemon: Entry, door: str) -> None:
    """The policy rules link's approve for a client that is no agent's: its call waits on
    its own ask, which `corral approvals` shows naming the rule, and is made once a
    person approves it (decision 1641); the operator's tools.call by the HTTP API and the
    control socket alike (decisions 2052, 2105)."""
    made = Made(daemon, "caller", door, "pol__http_get", {"host": "ask.example"})
    ask = made.ask()
    assert (ask["subject"]["tool"], ask["subject"]["policy"]) == (
        "pol__http_get", "ask host"), ask
    decide(daemon, ask, "approve")
    assert made.outcome() == {"text": 'http_get {"host": "ask.example"}', "isError": False}


# a replica's calls of no task, at the doors a rule of the pol server's reaches
REPLICA_DOORS = tuple(x for x in (*IDLE_DOORS, "stdio idle") if "corral" not in x)


@pytest.mark.deadline(240)
@pytest.mark.parametrize("door", REPLICA_DOORS)
def test_an_ask_of_a_call_of_no_task_is_every_nodes(daemon: Entry, door: str) -> None:
    """The policy rules link's approve for a replica's call of no task on the last
    entry (a cluster's other node): `corral approvals` at the first lists the ask, and a
    person decides it there, once, as a cluster task's ask is listed and decided on any
    node (docs/approvals.md, "On a cluster"); the call waiting on the other node is made
    once approved, and a second decision where it was made is refused naming the first."""
    d = daemon
    made = Made(d, "caller", door, "pol__http_get", {"host": "ask.example"}, node=-1)
    held = made.ask(at=-1)
    listed = d.cli("approvals")
    if held["id"] not in listed.stdout:  # (decided where it is held: no call left waiting)
        assert d.home.decide(held["id"], "denied", at=-1)["end"] == "denied"
        made.outcome()
    assert held["id"] in listed.stdout, listed.stdout
    decide(d, held, "approve")
    assert made.outcome() == {"text": 'http_get {"host": "ask.example"}', "isError": False}
    code, message = d.home.refusal("approvals.resolve", {"id": held["id"],
                                                         "decision": "denied"}, at=-1)
    assert code == jsonrpc.CONFLICT and re.fullmatch(
        rf"ask {held['id']} has ended: approved by uid \d+ pid \d+ at \S+", message), message


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", CLIENT_DOORS)
def test_a_tenants_default_deny_binds_its_clients(daemon: Entry, door: str) -> None:
    """The policy rules link for a client of a tenant (its API token, at each of a
    client's doors): its tenant's default_deny refuses the call no rule of its allows,
    as the tool's error, the boundary's refusal naming the client. The operator is no
    tenant's: acme's default_deny does not bind it (decision 1641)."""
    d = daemon
    if door == "stdio operator":
        said = Made(d, "caller", door, "pol__http_get", {"host": "acme.example"}).outcome()
        assert said == {"text": 'http_get {"host": "acme.example"}', "isError": False}
        return
    name = f"acme{TOKEN_DOORS.index(door)}"
    token = d.ask("tokens.create", {"name": name, "scopes": ["mcp:call"],
                                    "tenant": "acme"})["token"]
    target = "pol__http_get (default_deny)"
    before = len(refused(d, "policy", target))
    made = Made(d, "caller", door, "pol__http_get", {"host": "acme.example"},
                client=(f"token {name}", token))
    said = made.outcome()
    assert said == {"text": "tool call pol__http_get is denied: its tenant's policy is "
                            "default_deny", "isError": True}, said
    recorded(d, made, "policy", target, before)


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", TASK_DOORS)
def test_a_tasks_tool_budget_counts_each_call_once_whatever_its_door(daemon: Entry,
                                                                      door: str) -> None:
    """The budget link: max_tool_calls_per_task 2, one call on the worker link naming the
    task, then two by the door: the third is refused naming the task, whether or not
    the call named it (a call of no task of a replica running one task is that task's)."""
    tool = "corral__target" if "corral" in door else "pol__http_get"
    arguments = {"do": "echo"} if "corral" in door else {"host": "example.org"}
    call = {"door": door, "tool": tool, "arguments": arguments}
    made = Made(daemon, "budgeted", door, tool, arguments,
                before=[{"door": "worker", "tool": "pol__http_get",
                         "arguments": {"host": "example.org"}}, call])
    first, second, third = made.outcome()["all"]
    assert "error" not in first and "error" not in second, (first, second)
    assert third == {"error": jsonrpc.TOOL_BUDGET_EXCEEDED,
                     "message": f"tool budget exceeded: task {made.task_id} has made 2 "
                                "tool calls (max_tool_calls_per_task 2)"}, third


@pytest.mark.deadline(180)
@pytest.mark.parametrize("door", TASK_DOORS)
def test_a_retry_has_only_what_is_left_of_its_tasks_tool_budget_whatever_its_door(
        daemon: Entry, door: str) -> None:
    """The budget link across attempts (decision 1985, tests/contract/test_tool_budget.py
    on the worker link): max_tool_calls_per_task 2, two calls by the door, then the
    attempt's worker is killed; the retry is answered both from the task's journal and
    its third call is refused naming the task, the two it made earlier counted, the two
    its view says (tool_calls: decision 2035 on a cluster)."""
    tool = "corral__target" if "corral" in door else "pol__http_get"
    arguments = {"do": "echo"} if "corral" in door else {"host": "example.org"}
    call = {"door": door, "tool": tool, "arguments": arguments}
    made = Made(daemon, "budgeted", door, tool, arguments,
                before=[call, call, {"die": True}])
    done = daemon.ask("tasks.get", {"task_id": made.task_id, "wait": True})
    assert [a["outcome"] for a in done["attempts"]] == ["lost", "succeeded"], done
    assert done["tool_calls"] == 2, done
    first, second, retried, third = done["output"]
    assert "error" not in first and "error" not in second, (first, second)
    assert retried == {"attempt": 2}, retried
    assert third == {"error": jsonrpc.TOOL_BUDGET_EXCEEDED,
                     "message": f"tool budget exceeded: task {made.task_id} has made 2 "
                                "tool calls (max_tool_calls_per_task 2)"}, third


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", [x for x in DOORS if "corral" not in x])
def test_after_an_untrusted_tool_a_sensitive_one_needs_a_person(daemon: Entry,
                                                                 door: str) -> None:
    """The labels link: the caller read an untrusted tool's output (by the worker link
    for a task, by the same door for a call of no task); its sensitive call waits on
    a person's ask, and denied is not made: the boundary's refusal of kind taint."""
    fetch = {"door": "worker" if door in TASK_DOORS else door, "tool": "pol__fetch",
             "arguments": {"url": "https://evil.example"}}
    target = "pol__send_mail (taint (after untrusted pol__fetch): denied)"
    before = len(refused(daemon, "taint", target))
    made = Made(daemon, "caller", door, "pol__send_mail", {"to": "x@example.org"},
                before=[fetch])
    ask = made.ask()
    assert ask["subject"]["tool"] == "pol__send_mail", ask
    decide(daemon, ask, "deny")
    said = made.outcome()
    last = said["all"][-1] if "all" in said else said
    assert last["isError"] and last["text"].startswith(
        "tool call pol__send_mail was denied by "), last
    recorded(daemon, made, "taint", target, before)


def tool_rows(d: Entry, tool: str) -> list[dict[str, Any]]:
    """The audit rows naming `tool`, every node's."""
    return [e for e in audit(d)
            if isinstance(e["params"], dict) and e["params"].get("tool") == tool]


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", DOORS + CLIENT_DOORS + COMMAND_DOORS)
def test_the_call_is_audited(daemon: Entry, door: str) -> None:
    """The audit link: one row of the audit log a call, naming its tool (a cluster's
    audit is each node's: the row is the node's that ran the call)."""
    d = daemon
    tool = "corral__target" if "corral" in door else "pol__http_get"
    arguments = {"do": "echo"} if "corral" in door else {"host": "example.org"}
    before = len(tool_rows(d, tool))
    said = Made(d, "caller", door, tool, arguments).outcome()
    assert "error" not in said, said
    rows = wait_until(lambda: (lambda got: got if len(got) > before else None)(
        tool_rows(d, tool)), PATIENCE, "the call's audit row")
    assert len(rows) == before + 1, rows
    if door == "stdio operator":  # its process's uid, as the local socket's peer says it
        assert {e["uid"] for e in rows if e["params"]["client"] == "operator"} == \
            {os.getuid()}, rows


def refusal_rows(d: Entry, tool: str, refusal: str) -> list[dict[str, Any]]:
    return [e for e in tool_rows(d, tool) if e["outcome"] == f"error: {refusal}"]


def one_row_more(d: Entry, tool: str, refusal: str, before: int) -> list[dict[str, Any]]:
    """The refusal's audit rows, once there is one more than `before`: as many as that."""
    now = wait_until(lambda: (lambda got: got if len(got) > before else None)(
        refusal_rows(d, tool, refusal)), PATIENCE, "the refusal's audit row")
    assert len(now) == before + 1, now
    return now


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", (*TOKEN_DOORS, AGENTS_CLIENT))
def test_a_clients_call_outside_its_allowlist_is_the_views_refusal_and_one_row(
        daemon: Entry, door: str) -> None:
    """The identity and view link for a client that is no agent's: a tool outside its
    allowlist is refused by the chain's first link in the one form every door's caller
    is refused in, and the refusal is the audit link's one row, in the link's words; at
    /mcp/corral too, an agent its allowlist does not name (decision 1690: the door
    judged it first, in words of its own, and wrote no row)."""
    d = daemon
    tool = "corral__queued" if door == AGENTS_CLIENT else "pol__pay"
    refusal = (f"tool {tool} is not allowed for gateway client {CLIENT} (its tools "
               f"allowlist: {CLIENT_TOOLS})")
    before = len(refusal_rows(d, tool, refusal))
    said = Made(d, CLIENT, door, tool, {"amount": 1}).outcome()
    assert said == {"error": jsonrpc.TOOL_NOT_ALLOWED, "message": refusal}, said
    now = one_row_more(d, tool, refusal, before)
    assert now[0]["method"] == "gateway.call", now


SPAWNING_DOORS = ("worker", "worker-no-task", "/mcp/corral", "/mcp/corral idle")


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", SPAWNING_DOORS)
def test_an_agent_its_spawns_do_not_name_is_the_views_refusal_at_every_door(
        daemon: Entry, door: str) -> None:
    """The identity and view link for an agent called as a tool: its allowlist names
    corral__caller but its `spawns` do not name caller, so the call is refused by the
    chain's first link in its one form at every door, before any other link counts it,
    one audit row (decision 1690: the worker link refused it only at the spawn, in the
    spawn's words, the gateway at its door, in the door's)."""
    d = daemon
    before = sum(1 for e in tool_rows(d, "corral__caller")
                 if e["outcome"].startswith("error: tool corral__caller is not allowed"))
    said = Made(d, "caller", door, "corral__caller", {"do": "echo"}).outcome()
    assert said["error"] == jsonrpc.TOOL_NOT_ALLOWED, said
    message = said["message"]
    assert message.startswith("tool corral__caller is not allowed for agent caller (its "
                              "tools allowlist: ["), said
    assert message.endswith("; its spawns list ['target', 'denied', 'mailer', 'queued'] "
                            "does not name agent caller)"), said
    one_row_more(d, "corral__caller", message, before)


AGENT_CALLING_IDLE = ("/mcp idle", "/mcp/corral idle", "stdio idle", WORKER_IDLE)


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", AGENT_CALLING_IDLE)
def test_a_replicas_call_of_an_agent_of_no_task_is_a_task_of_its_own_at_every_door(
        daemon: Entry, door: str) -> None:
    """Dispatch for a call of no task (DESIGN 28: its replica's): an agent called as a
    tool by a replica that runs no sole task is a task of its own, its output the call's
    result, whatever the door. At /mcp and stdio it was the pool's, "no such tool", until
    decision 1806; on the worker link until decision 1830."""
    n = AGENT_CALLING_IDLE.index(door)  # (each door's output its own)
    said = Made(daemon, "caller", door, "corral__target", {"do": "echo", "n": n}).outcome()
    assert said == {"text": f'{{"do":"echo","n":{n}}}', "isError": False}, said


assert set(IDLE_DOORS) < set(DOORS)


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", (*IDLE_DOORS, "stdio idle"))
def test_a_replicas_calls_of_no_task_count_in_its_incarnations_budget(daemon: Entry,
                                                                      door: str) -> None:
    """The budget link without a task: max_tool_calls_per_task 2 counts a replica's
    calls of no task per incarnation (a new one, here: the agent restarted), whatever
    the door; the third is refused naming the replica, and is not made."""
    d = daemon
    d.each("agents.restart", {"names": ["budgeted"]})
    tool = "corral__target" if "corral" in door else "pol__http_get"
    arguments = {"do": "echo"} if "corral" in door else {"host": "example.org"}
    made = Made(d, "budgeted", door, tool, arguments, before=[
        {"door": door, "tool": tool, "arguments": arguments}] * 2)
    said = made.outcome()
    assert said["error"] == jsonrpc.TOOL_BUDGET_EXCEEDED and said["message"].startswith(
        "tool budget exceeded: replica budgeted#"), said
    assert said["message"].endswith(
        " has made 2 tool calls of no task (max_tool_calls_per_task 2, counted per "
        "incarnation for calls that name no task)"), said


TASKS = "io.modelcontextprotocol/tasks"


def agents_rpc(url: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """One request of CLIENT at /mcp/corral, a 2026-07-28 client that declares the tasks
    extension: its JSON-RPC answer."""
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": {
        "io.modelcontextprotocol/protocolVersion": VERSION,
        "io.modelcontextprotocol/clientCapabilities": {"extensions": {TASKS: {}}}}}}
    named = params.get("name", params.get("taskId"))
    url = urlsplit(url + "/corral")
    assert url.hostname is not None
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=PATIENCE * 2)
    try:
        conn.request("POST", url.path, json.dumps(body), {
            "Authorization": f"Bearer {CLIENT_TOKEN}", "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": VERSION,
            "Mcp-Method": method, **({"Mcp-Name": named} if isinstance(named, str) else {})})
        said: dict[str, Any] = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return said


def targets(d: Entry) -> list[str]:
    """The ids of agent target's tasks, every node's."""
    return sorted(t["task_id"] for t in d.ask("tasks.list", {"agent": "target",
                                                             "limit": 1000})["tasks"])


@pytest.mark.deadline(240)
@pytest.mark.parametrize("decision", ("approve", "deny"))
def test_a_clients_agent_call_a_rule_holds_gets_its_handle_once_a_person_decides(
        daemon: Entry, decision: str) -> None:
    """The tasks extension at /mcp/corral under a policy rule's `approve` (decision 1645):
    the client's call waits on its own ask with no handle given and no task submitted;
    approved, it is answered the handle of the task then submitted, which ends with the
    agent's output; denied, it is answered the rule's denial as the tool's error, and no
    task is submitted."""
    d = daemon
    url = d.ask("gateway.status", {})["url"]
    arguments = {"do": "echo", "say": "ask", "decision": decision}
    before = targets(d)
    made = POOL.submit(agents_rpc, url, "tools/call", {"name": "target",
                                                        "arguments": arguments})

    def ask() -> dict[str, Any] | None:
        assert not made.done(), f"answered with no ask: {made.result()}"
        return next((a for a in d.ask("approvals.list")["asks"]
                     if a["task_id"].startswith(f"replica:gateway:{CLIENT}:")
                     and a["subject"]["arguments"] == arguments), None)
    held = wait_until(ask, PATIENCE, "the client's ask")
    assert (held["subject"]["tool"], held["subject"]["policy"]) == (
        "corral__target", "ask target"), held
    assert targets(d) == before and not made.done()  # no task, no handle yet
    decide(d, held, decision)
    said = made.result(PATIENCE)
    if decision == "deny":
        ended = d.ask("approvals.get", {"id": held["id"]})
        assert said == {"jsonrpc": "2.0", "id": 1, "result": {
            "content": [{"type": "text", "text": "tool call corral__target was denied by "
                                                 f"{ended['by']} (ask {held['id']})"}],
            "isError": True, "resultType": "complete"}}, said  # (a result, not a handle)
        assert targets(d) == before
        return
    handle = said["result"]
    assert (handle["resultType"], handle["status"]) == ("task", "working"), said
    task_id = handle["_meta"]["corral/task"]
    assert targets(d) == sorted([*before, task_id])

    def done() -> dict[str, Any] | None:
        got: dict[str, Any] = agents_rpc(url, "tasks/get", {"taskId": handle["taskId"]})[
            "result"]
        return got if got["status"] == "completed" else None
    result = wait_until(done, PATIENCE, "the handle completed")["result"]
    assert (result["structuredContent"], result["isError"]) == (arguments, False), result


SKILLS = "io.modelcontextprotocol/skills"
SKILL_DOORS = ("/mcp client", "/mcp/NAME client", "/mcp idle", "/mcp/NAME idle")


def skill_read(url: str, token: str, method: str, uri: str) -> dict[str, Any]:
    """One 2026-07-28 request of a skill's URI at `url` with `token` (the MCP SDK has no
    skills client): its JSON-RPC answer."""
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"uri": uri, "_meta": {
        "io.modelcontextprotocol/protocolVersion": VERSION,
        "io.modelcontextprotocol/clientCapabilities": {"extensions": {SKILLS: {}}}}}}
    where = urlsplit(url)
    assert where.hostname is not None
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=PATIENCE)
    try:
        conn.request("POST", where.path, json.dumps(body), {
            "Authorization": f"Bearer {token}", "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": VERSION,
            "Mcp-Method": method, **({"Mcp-Name": uri} if method == "resources/read"
                                     else {})})
        said: dict[str, Any] = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return said


def skill_rows(d: Entry, skill: str) -> list[tuple[str, str, str]]:
    """The (client, method, outcome) of each audit row of a read of `skill`, every node's."""
    return [(e["params"]["client"], e["params"]["read"], e["outcome"]) for e in audit(d)
            if isinstance(e["params"], dict) and e["params"].get("skill") == skill]


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", SKILL_DOORS)
def test_a_skill_read_is_a_call_the_view_link_judges_and_the_audit_keeps(
        daemon: Entry, door: str) -> None:
    """DESIGN 28 names a skill read a call (decision 1691): the caller's read of a skill
    its allowlist admits (as SERVER__SKILL) is made, its file or its entry alike, one row
    each; one it does not admit is refused by the chain's view link in the one form every
    caller is refused in, and each refusal is one row (the gateway judged it itself, in
    words of its own, and kept no row)."""
    d = daemon
    if door in TOKEN_DOORS:
        url, token = d.ask("gateway.status", {})["url"], CLIENT_TOKEN
        caller = f"gateway client {CLIENT}"
    else:
        env = d.ask("tasks.run", {"agent": "caller", "input": {"env": True}})["output"]
        url, token = env["CORRAL_MCP_URL"], env["CORRAL_MCP_TOKEN"]
        caller = "agent caller"
    at, base = (url + "/sk", "skill://") if "NAME" in door else (url, "skill://sk/")
    before = {s: len(skill_rows(d, s)) for s in ("sk__deploy-check", "sk__weather-report")}
    got = skill_read(at, token, "skills/get", f"{base}deploy-check/SKILL.md")
    assert got["result"]["skill"]["uri"] == f"{base}deploy-check/SKILL.md", got
    refused = skill_read(at, token, "skills/get", f"{base}weather-report/SKILL.md")
    error = refused["error"]
    assert error["code"] == jsonrpc.TOOL_NOT_ALLOWED and error["message"].startswith(
        f"skill sk__weather-report is not allowed for {caller} (its tools allowlist: ["), \
        refused
    if door in TOKEN_DOORS:
        assert error["message"] == (f"skill sk__weather-report is not allowed for {caller} "
                                    f"(its tools allowlist: {CLIENT_TOOLS})"), refused
    file = skill_read(at, token, "resources/read", f"{base}weather-report/templates/report.md")
    assert file.get("error") == error, file

    def rows_past(skill: str, more: int) -> list[tuple[str, str, str]] | None:
        now = skill_rows(d, skill)
        return now[before[skill]:] if len(now) >= before[skill] + more else None
    made = wait_until(lambda: rows_past("sk__deploy-check", 1), PATIENCE, "the read's row")
    held = wait_until(lambda: rows_past("sk__weather-report", 2), PATIENCE,
                      "the refusals' rows")
    assert [(m, o) for _, m, o in made] == [("skills/get", "ok")], made
    assert sorted((m, o) for _, m, o in held) == [
        ("resources/read", f"error: {error['message']}"),
        ("skills/get", f"error: {error['message']}")], held
    assert len({c for c, _, _ in made + held}) == 1, (made, held)  # one caller's


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", sorted(RATED))
def test_a_skill_read_takes_a_token_of_its_clients_rate_at_every_door(
        daemon: Entry, door: str) -> None:
    """A skill read is a call the audit keeps (decision 1691), so it takes a token of its
    client's rate_per_minute as every audited gateway call does (6a5ef737): a client of
    one call a minute reads a skill once, and its next read, its entry or its file, is
    the rate's refusal, not another row; its skills/list, a view read, takes a slot
    alone and is answered still. At each door a skill is read at, /mcp (`skill://sk/N`)
    and /mcp/NAME (`skill://N`)."""
    d = daemon
    name, token = RATED[door]
    url = d.ask("gateway.status", {})["url"]
    at, base = (url + "/sk", "skill://") if "NAME" in door else (url, "skill://sk/")
    got = skill_read(at, token, "skills/get", f"{base}deploy-check/SKILL.md")
    assert got["result"]["skill"]["uri"] == f"{base}deploy-check/SKILL.md", got
    over = {"code": jsonrpc.REFUSED,
            "message": f"gateway client {name} is over its rate of 1 call a minute"}
    again = skill_read(at, token, "skills/get", f"{base}deploy-check/SKILL.md")
    assert again.get("error") == over, again
    file = skill_read(at, token, "resources/read", f"{base}deploy-check/SKILL.md")
    assert file.get("error") == over, file
    listed = skill_read(at, token, "skills/list", "")
    assert [s["uri"] for s in listed["result"]["skills"]] == [
        f"{base}deploy-check/SKILL.md"], listed


@pytest.mark.deadline(240)
@pytest.mark.parametrize("door", ("/mcp client", AGENTS_CLIENT))
def test_a_clients_call_held_for_a_person_holds_its_slot_at_every_door(
        daemon: Entry, door: str) -> None:
    """A client's limits bind at every door (decision 1692, an attacker's pass): of one
    call in flight (max_concurrent 1), its call a rule holds for a person holds its one
    slot, so a second is refused at once, naming the limit, and asks nobody. At
    /mcp/corral a client's call had taken no slot, so one client could hold as many of
    its tenant's pending asks as it liked (max_pending_asks_per_tenant, 1,000 by
    default), after which its tenant's agents' own asks were refused."""
    d = daemon
    tool, arguments = ("corral__target", {"do": "echo", "say": "ask", "one": 1}) \
        if door == AGENTS_CLIENT else ("pol__http_get", {"host": "ask.example"})
    first = Made(d, "caller", door, tool, arguments, client=(ONE, ONE_TOKEN))
    held = first.ask()
    second = Made(d, "caller", door, tool, arguments, client=(ONE, ONE_TOKEN)).outcome()
    assert second == {"error": jsonrpc.REFUSED, "message": f"gateway client {ONE} has 1 "
                      "call in flight, its limit (max_concurrent)"}, second
    assert [a["id"] for a in d.ask("approvals.list")["asks"] if a["agent"] == ONE] == [
        held["id"]]
    decide(d, held, "approve")
    said = first.outcome()
    assert said["isError"] is False, said


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", DOORS)
def test_a_tenants_agent_of_every_tool_calls_its_tenants_agents_and_no_others(
        daemon: Entry, door: str) -> None:
    """The identity and view link for an agent of a tenant whose allowlist is `*`: its
    allowlist is its tenant's view, each server its tenant sees, and the agents its
    tenant's (as an agent of the default tenant's `*` reaches the default tenant's);
    it dropped the agents, so such an agent could call none (review's pass, session 7's
    closing note; decision 1790). It calls its tenant's agent at every door, and an
    agent of another tenant is none there is. (At /mcp and stdio a replica's call of no
    task naming `corral__AGENT` was the pool's, "no such tool", where the same call made
    while it ran a task was its spawn: now a task of its own, as at /mcp/corral,
    decision 1806.)"""
    d = daemon
    own = Made(d, "beta-caller", door, "corral__beta-target", {"do": "echo"}).outcome()
    assert own == {"text": '{"do":"echo"}', "isError": False}, own
    other = Made(d, "beta-caller", door, "corral__target", {"do": "echo"}).outcome()
    # (the Dispatcher's not-found offers a name the caller sees: its tenant's alone)
    assert other["error"] == jsonrpc.NOT_FOUND and other["message"] in (
        "no such agent: target", "no such agent: target (did you mean `beta-target`?)"), other


# the allowlists' names (the caller agent's `corral__target`; the client's `pol__http_get`,
# and `corral__target` at /mcp/corral) and what spells a glob character in their place
LISTED_DOORS = (*DOORS, *TOKEN_DOORS, AGENTS_CLIENT)


def spelled(name: str) -> list[str]:
    """Names that spell a wildcard where `name` has a letter (`?`, a bracket class of it,
    `*` after it): each one fnmatch would read as a pattern matching `name`."""
    return [f"{name[:-1]}?", f"{name[:-1]}[{name[-1]}]", f"{name}*",
            f"{name[:-2]}[{name[-2]}]{name[-1]}"]


@pytest.mark.deadline(180)
@pytest.mark.parametrize("door", LISTED_DOORS)
def test_a_listed_name_is_admitted_and_one_that_spells_a_wildcard_is_not_at_every_door(
        daemon: Entry, door: str) -> None:
    """The identity and view link for a pattern of no wildcard, compared as a name, not
    matched (decision 2025): a name listed as it is by the caller's allowlist is admitted
    at every door; a name that spells a glob character in its place (`?`, a bracket class,
    `*`) is no name the list admits, and is refused by the link in its one form, naming
    it and the caller."""
    d = daemon
    n = LISTED_DOORS.index(door)  # (each door's output its own)
    client = door in (*TOKEN_DOORS, AGENTS_CLIENT)
    if door in TOKEN_DOORS and "NAME" not in door:  # (an agent is /mcp/corral's)
        tool, arguments = "pol__http_get", {"host": f"listed{n}.example"}
        text = f'http_get {{"host": "listed{n}.example"}}'
    else:
        tool, arguments = "corral__target", {"do": "echo", "listed": n}
        text = f'{{"do":"echo","listed":{n}}}'
    said = Made(d, "caller", door, tool, arguments).outcome()
    assert said == {"text": text, "isError": False}, said
    for name in spelled(tool):
        said = Made(d, "caller", door, name, arguments).outcome()
        if client:
            assert said == {"error": jsonrpc.TOOL_NOT_ALLOWED, "message": f"tool {name} is "
                            f"not allowed for gateway client {CLIENT} (its tools allowlist: "
                            f"{CLIENT_TOOLS})"}, said
        else:
            assert said["error"] == jsonrpc.TOOL_NOT_ALLOWED and said["message"].startswith(
                f"tool {name} is not allowed for agent caller (its tools allowlist: ["), said
