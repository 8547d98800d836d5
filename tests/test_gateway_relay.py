"""A server's requests for input relayed through the gateway to the client that made the
call (corral/mcp/relay.py, relayseal.py, mcptasks.py; issue 58): a real daemon fronting
the conformance fixture server (tests/servers/conformance_fixtures.py, the official
SDK's, speaking 2026-07-28) at /mcp/fx over HTTP and through `corral mcp serve`.

A client that declared elicitation gets the server's `input_required` as its own, with
a state sealed to it and the tool; its answers reach the server. One that did not gets
corral's answer (declined), as before. A task waits in `input_required` for
`tasks/update`. The attacker's pass: another tenant's client cannot answer with a state
given to someone else, nor touch the task; a forged state is refused; the rounds and the
wait are bounded, each refusal naming its bound."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import string
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx2
import pytest

from .conftest import ROOT
from .daemon_harness import (
    Daemon,
    Proc,
    corral_popen,
    free_port,
    running_daemon,
    shared_tmpdir,
)
from .test_daemon_cli import wait_until
from .warmforks import sdk_toml

FIXTURES = Path(__file__).parent / "servers" / "conformance_fixtures.py"
# a fork of this process's MCP SDK server (tests/warmforks.py)
FIXTURES_CMD = sdk_toml(str(FIXTURES))
pytestmark = pytest.mark.usefixtures("warm_mcp_sdk")
TASKS = "io.modelcontextprotocol/tasks"
VERSION = "2026-07-28"
ELICITING = {"elicitation": {}}
ACCEPT = {"action": "accept", "content": {"confirm": "yes"}}
B64URL = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
# the gateway is plain HTTP on loopback: a client made with httpx's default TLS settings
# loads the CA bundle first, most of a request's CPU here, for no TLS at all
post = functools.partial(httpx2.post, verify=False)
delete = functools.partial(httpx2.delete, verify=False)
streamed = functools.partial(httpx2.stream, verify=False)


class Gateway(NamedTuple):
    daemon: Daemon
    url: str  # /mcp/fx
    tokens: dict[str, str]  # tenant -> its API token (mcp:call)


def config(port: int, input_wait: float) -> str:
    return f"""
[tenants.acme]
[tenants.globex]

[mcp_servers.fx]
command = {FIXTURES_CMD}
start_timeout = 30.0
shared = true

[mcp_servers.fx.task_tools]
confirm_delete = "optional"
multi_input = "optional"

[mcp_servers.fr]  # the same, whose callers' roots are theirs to give
command = {FIXTURES_CMD}
start_timeout = 30.0
shared = true
relay_roots = true

[gateway]
listen = "127.0.0.1:{port}"
input_wait = {input_wait}
"""


def started(input_wait: float) -> Iterator[Gateway]:
    port = free_port()
    with running_daemon(shared_tmpdir(), "", extra=config(port, input_wait)) as d:
        tokens = {t: d.json("token", "create", f"mcp-{t}", "--scope", "mcp:call",
                            "--tenant", t)["token"] for t in ("acme", "globex")}
        yield Gateway(d, f"http://127.0.0.1:{port}/mcp/fx", tokens)


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    yield from started(600.0)


@pytest.fixture
def hasty() -> Iterator[Gateway]:
    """A gateway whose relayed requests wait half a second for their answers."""
    yield from started(0.5)


def rpc(g: Gateway, tenant: str, method: str, params: dict[str, Any],
        caps: dict[str, Any]) -> dict[str, Any]:
    """One 2026-07-28 request as `tenant`'s token, declaring `caps`: its JSON-RPC answer."""
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {
        **params, "_meta": {"io.modelcontextprotocol/protocolVersion": VERSION,
                            "io.modelcontextprotocol/clientCapabilities": caps}}}
    named = params.get("name", params.get("taskId"))
    headers = {"Authorization": f"Bearer {g.tokens[tenant]}",
               "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": VERSION, "Mcp-Method": method,
               **({"Mcp-Name": named} if isinstance(named, str) else {})}
    answer: dict[str, Any] = post(g.url, json=body, headers=headers,
                                         timeout=60).json()
    return answer


def call(g: Gateway, tenant: str, tool: str, caps: dict[str, Any], **extra: Any
         ) -> dict[str, Any]:
    return rpc(g, tenant, "tools/call", {"name": tool, "arguments": extra.pop("args", {}),
                                         **extra}, caps)


def text(result: dict[str, Any]) -> str:
    return str(result["content"][0]["text"])


def test_a_client_that_can_answer_gets_the_servers_request_and_its_answer_reaches_it(
        gateway: Gateway) -> None:
    g = gateway
    asked = call(g, "acme", "confirm_delete", ELICITING, args={"filename": "a.txt"})["result"]
    assert asked["resultType"] == "input_required", asked
    assert asked["inputRequests"]["confirm"]["method"] == "elicitation/create"
    assert asked["inputRequests"]["confirm"]["params"]["message"] == "Delete a.txt?"
    state = asked["requestState"]
    assert isinstance(state, str) and state, asked
    done = call(g, "acme", "confirm_delete", ELICITING, args={"filename": "a.txt"},
                inputResponses={"confirm": ACCEPT}, requestState=state)["result"]
    assert done["resultType"] == "complete" and text(done) == "Deleted a.txt", done
    # the server's own state (test_tool_with_task's "asked-name") goes back as it came
    named = call(g, "acme", "test_tool_with_task", ELICITING)["result"]
    assert named["resultType"] == "input_required" and named["requestState"] != \
        "asked-name", named
    hello = call(g, "acme", "test_tool_with_task", ELICITING, requestState=named[
        "requestState"], inputResponses={"user_name": {"action": "accept", "content": {
            "name": "Alice"}}})["result"]
    assert text(hello) == "Hello, Alice!", hello


def test_a_client_that_did_not_declare_elicitation_gets_it_declined_as_before(
        gateway: Gateway) -> None:
    done = call(gateway, "acme", "confirm_delete", {}, args={"filename": "b.txt"})["result"]
    assert done["resultType"] == "complete" and text(done) == "Kept b.txt", done


def test_another_tenants_client_cannot_answer_with_a_state_given_to_someone_else(
        gateway: Gateway) -> None:
    g = gateway
    asked = call(g, "acme", "confirm_delete", ELICITING, args={"filename": "c.txt"})["result"]
    state = asked["requestState"]
    stolen = call(g, "globex", "confirm_delete", ELICITING, args={"filename": "c.txt"},
                  inputResponses={"confirm": ACCEPT}, requestState=state)
    assert stolen["error"] == {"code": -32602, "message": (
        "invalid params: fx__confirm_delete: requestState was not given to "
        "gateway client token mcp-globex for fx__confirm_delete")}, stolen
    # nor is it good for another tool of the same client
    other = call(g, "acme", "multi_input", ELICITING, inputResponses={"first": ACCEPT},
                 requestState=state)
    assert other["error"]["message"] == (
        "invalid params: fx__multi_input: requestState was not given to "
        "gateway client token mcp-acme for fx__multi_input"), other
    # a state changed by one character is not corral's: nor one spelled otherwise that
    # decodes to the same bytes (the last character's unused low bit flipped, a
    # character outside the alphabet added), which the decoder alone would take
    last = B64URL.index(state[-1])
    for forged in (state[:-1] + ("A" if state[-1] != "A" else "B"),
                   state[:-1] + B64URL[last ^ 1], state + "!", state[:5] + "*" + state[5:]):
        bad = call(g, "acme", "confirm_delete", ELICITING, args={"filename": "c.txt"},
                   inputResponses={"confirm": ACCEPT}, requestState=forged)
        assert bad["error"] == {"code": -32602, "message": (
            "invalid params: fx__confirm_delete: requestState is not one corral "
            "gave")}, (forged, bad)
    # inputResponses that are not an object are refused before the server is asked
    refused = call(g, "acme", "confirm_delete", ELICITING, args={"filename": "c.txt"},
                   inputResponses=12345)
    assert refused["error"] == {"code": -32602, "message": (
        "invalid params: fx__confirm_delete: inputResponses must be an "
        "object")}, refused


def test_a_state_is_not_good_for_another_tenants_token_of_the_same_name(
        gateway: Gateway) -> None:
    """A name is not an identity: acme's token is revoked and one of its name made for
    globex, which brings acme's state back within its wait: refused (the seal names the
    tenant), the server never asked. Fails with the seal over the client's name alone."""
    g = gateway
    d = g.daemon
    made = d.json("token", "create", "reused", "--scope", "mcp:call", "--tenant", "acme")
    tokens = {**g.tokens, "acme": made["token"]}
    asked = call(g._replace(tokens=tokens), "acme", "confirm_delete", ELICITING,
                 args={"filename": "r.txt"})["result"]
    assert asked["resultType"] == "input_required", asked
    assert d.cli("token", "revoke", "reused").returncode == 0
    again = d.json("token", "create", "reused", "--scope", "mcp:call", "--tenant", "globex")
    theirs = g._replace(tokens={**tokens, "globex": again["token"]})
    stolen = call(theirs, "globex", "confirm_delete", ELICITING, args={"filename": "r.txt"},
                  inputResponses={"confirm": ACCEPT}, requestState=asked["requestState"])
    assert stolen["error"] == {"code": -32602, "message": (
        "invalid params: fx__confirm_delete: requestState was not given to "
        "gateway client token reused for fx__confirm_delete")}, stolen
    assert d.cli("token", "revoke", "reused").returncode == 0


def test_a_server_that_asks_for_ever_is_given_up_after_max_input_rounds(
        gateway: Gateway) -> None:
    g = gateway
    state = None
    for _ in range(8):  # MAX_INPUT_ROUNDS: half an answer each time, so it asks again
        extra = {} if state is None else {"requestState": state,
                                          "inputResponses": {"first": ACCEPT}}
        asked = call(g, "acme", "multi_input", ELICITING, **extra)["result"]
        assert asked["resultType"] == "input_required", asked
        state = asked["requestState"]
    over = call(g, "acme", "multi_input", ELICITING, requestState=state,
                inputResponses={"first": ACCEPT})
    assert over["error"]["message"] == (
        "fx__multi_input: the server still asked for input after 8 rounds "
        "(corral's bound MAX_INPUT_ROUNDS): given up"), over


def until(g: Gateway, tenant: str, tid: str, status: str) -> dict[str, Any]:
    def seen() -> dict[str, Any] | None:
        got: dict[str, Any] = rpc(g, tenant, "tasks/get", {"taskId": tid},
                                  TASKS_CAPS)["result"]
        return got if got["status"] == status else None
    found: dict[str, Any] = wait_until(seen, timeout=30, what=f"task {tid} {status}")
    return found


TASKS_CAPS = {**ELICITING, "extensions": {TASKS: {}}}


def test_a_task_waits_in_input_required_for_its_clients_answers_alone(
        gateway: Gateway) -> None:
    g = gateway
    made = call(g, "acme", "multi_input", TASKS_CAPS)["result"]
    assert made["resultType"] == "task", made
    tid = made["taskId"]
    waiting = until(g, "acme", tid, "input_required")
    assert sorted(waiting["inputRequests"]) == ["first", "second"], waiting
    # globex's client can neither see the task nor answer it
    for method, params in (("tasks/get", {}),
                           ("tasks/update", {"inputResponses": {"first": ACCEPT}})):
        refused = rpc(g, "globex", method, {"taskId": tid, **params}, TASKS_CAPS)["error"]
        assert refused == {"code": -32602, "message": f"invalid params: no task {tid} of "
                           "this client", "data": {"taskId": tid}}, (method, refused)
    # an answer that is not an object is refused; one of a key not asked is ignored
    bad = rpc(g, "acme", "tasks/update", {"taskId": tid, "inputResponses": []}, TASKS_CAPS)
    assert bad["error"] == {"code": -32602, "message": "invalid params: tasks/update needs "
                            "inputResponses, an object"}, bad
    one = {"action": "accept", "content": {"name": "Ann"}}
    for answers in ({"nobody-asked": one}, {"first": one}):
        ack = rpc(g, "acme", "tasks/update", {"taskId": tid, "inputResponses": answers},
                  TASKS_CAPS)["result"]
        assert ack == {"resultType": "complete"}, ack
    partial = rpc(g, "acme", "tasks/get", {"taskId": tid}, TASKS_CAPS)["result"]
    assert partial["status"] == "input_required", partial
    assert list(partial["inputRequests"]) == ["second"], partial
    rpc(g, "acme", "tasks/update", {"taskId": tid, "inputResponses": {"second": {
        "action": "accept", "content": {"name": "Bo"}}}}, TASKS_CAPS)
    done = until(g, "acme", tid, "completed")
    assert text(done["result"]) == "Ann and Bo", done


def test_unanswered_input_fails_the_task_and_expires_the_state_naming_input_wait(
        hasty: Gateway) -> None:
    g = hasty
    asked = call(g, "acme", "confirm_delete", ELICITING, args={"filename": "d.txt"})["result"]
    state = asked["requestState"]
    tid = call(g, "acme", "confirm_delete", TASKS_CAPS, args={"filename": "d.txt"})[
        "result"]["taskId"]
    failed = until(g, "acme", tid, "failed")
    assert failed["error"]["message"] == ("its server's input requests were not all "
                                          "answered within [gateway] input_wait 0.5 s"), failed
    # the plain call's state, older than the task's whole wait, is expired by now
    late = call(g, "acme", "confirm_delete", ELICITING, args={"filename": "d.txt"},
                inputResponses={"confirm": ACCEPT}, requestState=state)
    assert late["error"] == {"code": -32602, "message": (
        "invalid params: fx__confirm_delete: requestState expired (older than "
        "[gateway] input_wait): call again without it")}, late


# what `corral mcp serve` may tell a client unasked, at any time (MCP orders no
# notification against the requests and answers around it): the lists changed, as a
# server instance starts serving (a shared server starts at its first call)
LIST_CHANGED = {"notifications/tools/list_changed", "notifications/resources/list_changed",
                "notifications/prompts/list_changed"}
HEAR_WAIT = 60.0  # a message's bound: the call's server may start first (start_timeout 30)


class Serve:
    """`corral mcp serve` on a gateway's daemon, spoken to a JSON-RPC line at a time.

    Its stdout is read on a thread of its own. `hear` gives the next message with an id
    (an answer, or a request of the server's relayed to the client: those come in the
    order the exchange causes them); the notifications written meanwhile are kept in
    `told`, in order, for the test to check. A message that does not come within
    HEAR_WAIT fails the test naming what it waited for, not at pytest's timeout."""

    def __init__(self, process: Proc) -> None:
        self.process = process
        self.told: list[dict[str, Any]] = []
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put("")  # its end

    def say(self, msg: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"jsonrpc": "2.0", **msg}) + "\n")
        self.process.stdin.flush()

    def hear(self, what: str) -> dict[str, Any]:
        """The next answer or request; `what`: the one the test waits for, for the
        failure's message."""
        deadline = time.monotonic() + HEAR_WAIT
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"corral mcp serve wrote no {what} within "
                                     f"{HEAR_WAIT:g} s (it told meanwhile: "
                                     f"{self.told})") from None
            if not line:
                self._lines.put("")  # a later hear meets the end too
                raise AssertionError(f"corral mcp serve closed its stdout (exit "
                                     f"{self.process.poll()}) before it wrote {what} (it "
                                     f"told meanwhile: {self.told})")
            got: dict[str, Any] = json.loads(line)
            if "id" in got:
                return got
            self.told.append(got)


@contextlib.contextmanager
def mcp_serve(g: Gateway) -> Iterator[Serve]:
    """`corral mcp serve`, ended by closing its stdin: it must exit 0."""
    serve = corral_popen(["--socket", str(g.daemon.sock), "mcp", "serve"],
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert serve.stdin is not None and serve.stdout is not None
    heard = Serve(serve)
    try:
        yield heard
    finally:
        serve.stdin.close()
        assert serve.wait(timeout=30) == 0
        heard.reader.join(timeout=30)  # to its end: the process is gone
        serve.stdout.close()


def test_corral_mcp_serve_relays_the_servers_request_over_stdio(gateway: Gateway) -> None:
    with mcp_serve(gateway) as serve:
        def ask(rid: int, **extra: Any) -> dict[str, Any]:
            serve.say({"id": rid, "method": "tools/call", "params": {
                "name": "fx__confirm_delete", "arguments": {"filename": "e.txt"}, **extra,
                "_meta": {"io.modelcontextprotocol/protocolVersion": VERSION,
                          "io.modelcontextprotocol/clientCapabilities": ELICITING}}})
            answer = serve.hear(f"answer to tools/call {rid}")
            assert answer["id"] == rid, answer
            return answer

        asked = ask(1)["result"]
        assert asked["resultType"] == "input_required", asked
        assert list(asked["inputRequests"]) == ["confirm"]
        done = ask(2, inputResponses={"confirm": ACCEPT},
                   requestState=asked["requestState"])["result"]
        assert text(done) == "Deleted e.txt", done
    # a 2026-07-28 client opened no listen stream and asked for no log: told nothing
    assert serve.told == [], serve.told


# -- a 2025-11-25 session: the server's requests asked of the client on the call's stream

LEGACY = "2025-11-25"


class Session(NamedTuple):
    g: Gateway
    tenant: str
    sid: str

    def headers(self, tenant: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.g.tokens[tenant or self.tenant]}",
                "Accept": "application/json, text/event-stream",
                "MCP-Protocol-Version": LEGACY, "Mcp-Session-Id": self.sid}

    def answer(self, rid: Any, result: dict[str, Any], tenant: str | None = None
               ) -> httpx2.Response:
        """The client's response to a request the gateway sent it."""
        return post(self.g.url, json={"jsonrpc": "2.0", "id": rid, "result": result},
                           headers=self.headers(tenant), timeout=30)


def legacy_session(g: Gateway, tenant: str, caps: dict[str, Any]) -> Session:
    r = post(g.url, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": LEGACY, "capabilities": caps,
        "clientInfo": {"name": "t", "version": "1"}}}, headers={
        "Authorization": f"Bearer {g.tokens[tenant]}",
        "Accept": "application/json, text/event-stream"}, timeout=30)
    sess = Session(g, tenant, r.headers["Mcp-Session-Id"])
    post(g.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                headers=sess.headers(), timeout=30)
    return sess


def events(r: Any) -> Iterator[dict[str, Any]]:
    """The JSON-RPC messages of an SSE response, as they come."""
    data: list[str] = []
    for line in r.iter_lines():
        if line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            yield json.loads("\n".join(data))
            data = []


def legacy_call(s: Session, tool: str, args: dict[str, Any]) -> Any:
    return streamed("POST", s.g.url, json={
        "jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"name": tool, "arguments": args}}, headers=s.headers(), timeout=60)


def test_a_2025_11_25_client_is_asked_on_its_calls_stream_and_no_other_client_answers(
        gateway: Gateway) -> None:
    s = legacy_session(gateway, "acme", ELICITING)
    with legacy_call(s, "confirm_delete", {"filename": "f.txt"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        stream = events(r)
        asked = next(stream)
        assert asked["method"] == "elicitation/create", asked
        assert asked["params"]["message"] == "Delete f.txt?"
        # globex's token cannot answer on acme's session
        stolen = s.answer(asked["id"], ACCEPT, tenant="globex")
        assert stolen.status_code == 403, stolen.text
        assert "this session belongs to another client" in stolen.text
        assert s.answer(asked["id"], ACCEPT).status_code == 202
        done = next(stream)
    assert done["id"] == 5 and text(done["result"]) == "Deleted f.txt", done
    # a session that declared no elicitation is not asked: corral declines, as before
    plain = legacy_session(gateway, "acme", {})
    with legacy_call(plain, "confirm_delete", {"filename": "g.txt"}) as r:
        only = next(events(r)) if "event-stream" in r.headers["content-type"] \
            else json.loads(r.read())
    assert text(only["result"]) == "Kept g.txt", only


def test_a_2025_11_25_clients_error_answer_fails_the_call_saying_so(gateway: Gateway
                                                                    ) -> None:
    s = legacy_session(gateway, "acme", ELICITING)
    with legacy_call(s, "confirm_delete", {"filename": "h.txt"}) as r:
        stream = events(r)
        asked = next(stream)
        post(gateway.url, json={"jsonrpc": "2.0", "id": asked["id"], "error": {
            "code": -32603, "message": "the user closed the window"}}, headers=s.headers(),
            timeout=30)
        failed = next(stream)
    assert failed["error"] == {"code": -32603, "message": (
        "the client answered the server's input request with an error: the user closed "
        "the window")}, failed


def test_a_round_of_more_requests_than_max_asked_is_refused_before_any_is_sent(
        gateway: Gateway) -> None:
    s = legacy_session(gateway, "acme", ELICITING)
    with legacy_call(s, "many_questions", {"count": 17}) as r:
        got = [m for m in events(r)] if "event-stream" in r.headers["content-type"] \
            else [json.loads(r.read())]
    assert [m.get("method") for m in got] == [None], got  # no request reached the client
    assert got[0]["error"]["message"] == (
        "the server asked 17 input requests with 0 waiting on this session: past "
        "MAX_ASKED (16), the requests a session's client is asked at once"), got


def test_a_2025_11_25_client_that_never_answers_fails_the_call_at_input_wait(
        hasty: Gateway) -> None:
    s = legacy_session(hasty, "acme", ELICITING)
    with legacy_call(s, "confirm_delete", {"filename": "i.txt"}) as r:
        stream = events(r)
        assert next(stream)["method"] == "elicitation/create"
        failed = next(stream)
    assert failed["error"]["message"] == ("the client did not answer the server's input "
                                          "requests within [gateway] input_wait 0.5 s"), failed


def test_corral_mcp_serve_asks_a_2025_11_25_client_over_stdio(gateway: Gateway) -> None:
    with mcp_serve(gateway) as serve:
        serve.say({"id": 1, "method": "initialize", "params": {
            "protocolVersion": LEGACY, "capabilities": ELICITING,
            "clientInfo": {"name": "t", "version": "1"}}})
        assert serve.hear("answer to initialize")["result"]["protocolVersion"] == LEGACY
        serve.say({"method": "notifications/initialized"})
        serve.say({"id": 2, "method": "tools/call", "params": {
            "name": "fx__confirm_delete", "arguments": {"filename": "j.txt"}}})
        # fx's first call in the module starts it: its lists' list_changed may come first
        asked = serve.hear("elicitation/create of fx__confirm_delete")
        assert asked["method"] == "elicitation/create", asked
        serve.say({"id": asked["id"], "result": ACCEPT})
        done = serve.hear("answer to tools/call 2")
        assert done["id"] == 2 and text(done["result"]) == "Deleted j.txt", done
    # nothing else was told it: no log message (it set no level), no request
    assert {m.get("method") for m in serve.told} <= LIST_CHANGED, serve.told


def test_a_2026_servers_list_changed_reaches_a_clients_listen_stream(gateway: Gateway
                                                                     ) -> None:
    """The fixture server (2026-07-28) says a tool was added on the listen stream corral's
    client opened to it; the gateway's client hears it on its own."""
    g = gateway
    body = {"jsonrpc": "2.0", "id": "listen-1", "method": "subscriptions/listen", "params": {
        "notifications": {"toolsListChanged": True},
        "_meta": {"io.modelcontextprotocol/protocolVersion": VERSION,
                  "io.modelcontextprotocol/clientCapabilities": {}}}}
    headers = {"Authorization": f"Bearer {g.tokens['acme']}",
               "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": VERSION, "Mcp-Method": "subscriptions/listen"}
    with streamed("POST", g.url, json=body, headers=headers, timeout=60) as r:
        stream = events(r)
        ack = next(stream)
        assert ack["method"] == "notifications/subscriptions/acknowledged", ack
        changed = call(g, "acme", "test_trigger_tool_change", {})["result"]
        assert text(changed) == "Tool list changed", changed
        told = next(stream)
    assert told == {"jsonrpc": "2.0", "method": "notifications/tools/list_changed",
                    "params": {"_meta": {"io.modelcontextprotocol/subscriptionId":
                                         "listen-1"}}}, told
    listed = rpc(g, "acme", "tools/list", {}, {})["result"]["tools"]
    assert any(t["name"].startswith("added_tool_") for t in listed), listed


# -- resources/subscribe of a 2025-11-25 session, through to a 2026-07-28 server

WATCHED = "test://watched-resource"


def legacy_rpc(s: Session, method: str, params: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = post(s.g.url, json={
        "jsonrpc": "2.0", "id": 9, "method": method, "params": params},
        headers=s.headers(), timeout=30).json()
    return answer


def test_a_sessions_subscription_hears_the_servers_update_on_its_get_stream(
        gateway: Gateway) -> None:
    s = legacy_session(gateway, "acme", {})
    assert legacy_rpc(s, "resources/subscribe", {"uri": WATCHED}) == {
        "jsonrpc": "2.0", "id": 9, "result": {}}
    with streamed("GET", gateway.url, headers={
            **s.headers(), "Accept": "text/event-stream"}, timeout=60) as r:
        stream = events(r)
        # the stream is open once its first event could come: touch until it does
        touched = call(gateway, "acme", "touch_watched", {})["result"]
        assert text(touched) == "Touched", touched
        told = next(stream)
    assert told == {"jsonrpc": "2.0", "method": "notifications/resources/updated",
                    "params": {"uri": WATCHED}}, told
    assert legacy_rpc(s, "resources/unsubscribe", {"uri": WATCHED})["result"] == {}
    # a resource no server this client may use lists: -32602 with the uri
    missing = legacy_rpc(s, "resources/subscribe", {"uri": "test://nowhere"})["error"]
    assert missing == {"code": -32602, "message": "resource test://nowhere: no server "
                       "this client may use lists it", "data": {"uri": "test://nowhere"}}


def test_a_sessions_subscriptions_are_bounded_by_max_subscriptions(gateway: Gateway
                                                                   ) -> None:
    s = legacy_session(gateway, "acme", {})
    for n in range(64):  # MAX_SUBSCRIPTIONS, each an expansion of the fixture's template
        got = legacy_rpc(s, "resources/subscribe", {"uri": f"test://template/{n}/data"})
        assert got.get("result") == {}, (n, got)
    over = legacy_rpc(s, "resources/subscribe", {"uri": "test://template/64/data"})
    assert over["error"]["message"] == (
        "resources/subscribe test://template/64/data: this session holds 64 "
        "subscriptions, MAX_SUBSCRIPTIONS (64): unsubscribe from one first"), over
    # one held already is no new one; one ended makes room
    assert legacy_rpc(s, "resources/subscribe", {"uri": "test://template/0/data"}).get(
        "result") == {}
    legacy_rpc(s, "resources/unsubscribe", {"uri": "test://template/0/data"})
    assert legacy_rpc(s, "resources/subscribe", {"uri": "test://template/64/data"}).get(
        "result") == {}
    delete(gateway.url, headers=s.headers(), timeout=30)


def test_a_servers_roots_are_the_operators_never_a_gateway_clients(gateway: Gateway
                                                                    ) -> None:
    """A client that declared roots is not asked them: corral answers as configured (fx
    has none), so no gateway client widens what a server lets it reach."""
    rooted = {**ELICITING, "roots": {"listChanged": True}}
    done = call(gateway, "acme", "test_input_required_result_list_roots", rooted)["result"]
    assert done["resultType"] == "complete" and text(done) == "Roots: []", done
    s = legacy_session(gateway, "acme", rooted)
    with legacy_call(s, "test_input_required_result_list_roots", {}) as r:
        got = [m for m in events(r)] if "event-stream" in r.headers["content-type"] \
            else [json.loads(r.read())]
    assert [m.get("method") for m in got] == [None], got  # nothing asked of the client
    assert text(got[0]["result"]) == "Roots: []", got


def test_a_server_that_relays_roots_asks_its_caller_them_with_the_rest(gateway: Gateway
                                                                       ) -> None:
    """`relay_roots`: a client that declared roots answers the server's roots/list, in
    one round with its other input requests; one that did not gets corral's roots (fr
    has none), as at a server that does not relay them."""
    g = gateway._replace(url=gateway.url.removesuffix("/fx") + "/fr")
    rooted = {**ELICITING, "sampling": {}, "roots": {"listChanged": True}}
    asked = call(g, "acme", "test_input_required_result_list_roots", rooted)["result"]
    assert asked["resultType"] == "input_required", asked
    assert asked["inputRequests"]["client_roots"]["method"] == "roots/list", asked
    roots = {"roots": [{"uri": "file:///srv/acme", "name": "acme"}]}
    done = call(g, "acme", "test_input_required_result_list_roots", rooted,
                inputResponses={"client_roots": roots},
                requestState=asked["requestState"])["result"]
    assert text(done) == "Roots: ['file:///srv/acme']", done
    three = call(g, "acme", "test_input_required_result_multiple_inputs", rooted)["result"]
    assert sorted(r["method"] for r in three["inputRequests"].values()) == [
        "elicitation/create", "roots/list", "sampling/createMessage"], three
    answers = {"user_name": {"action": "accept", "content": {"name": "Alice"}},
               "greeting": {"role": "assistant", "model": "m", "content": {
                   "type": "text", "text": "Hello"}},
               "client_roots": roots}
    done = call(g, "acme", "test_input_required_result_multiple_inputs", rooted,
                inputResponses=answers, requestState=three["requestState"])["result"]
    assert text(done) == "Name Alice, roots ['file:///srv/acme']", done
    unrooted = call(g, "acme", "test_input_required_result_list_roots", ELICITING)["result"]
    assert unrooted["resultType"] == "complete" and text(unrooted) == "Roots: []", unrooted


def test_a_prompts_input_is_relayed_too_and_its_state_is_the_prompts_alone(
        gateway: Gateway) -> None:
    g = gateway
    prompt = "test_input_required_result_prompt"
    asked = rpc(g, "acme", "prompts/get", {"name": prompt}, ELICITING)["result"]
    assert asked["resultType"] == "input_required", asked
    assert list(asked["inputRequests"]) == ["user_context"], asked
    answers = {"user_context": {"action": "accept", "content": {"context": "tests"}}}
    got = rpc(g, "acme", "prompts/get", {"name": prompt, "inputResponses": answers,
                                         "requestState": asked["requestState"]},
              ELICITING)["result"]
    assert got["messages"][0]["content"]["text"] == "Use this context: tests", got
    # the prompt's state is not a tool's
    other = call(g, "acme", "confirm_delete", ELICITING, args={"filename": "k.txt"},
                 inputResponses={"confirm": ACCEPT}, requestState=asked["requestState"])
    assert other["error"]["message"] == (
        "invalid params: fx__confirm_delete: requestState was not given to gateway client "
        "token mcp-acme for fx__confirm_delete"), other
    # a 2025-11-25 session is asked on the prompts/get's stream
    s = legacy_session(g, "acme", ELICITING)
    with streamed("POST", g.url, json={"jsonrpc": "2.0", "id": 6, "method": "prompts/get",
                                            "params": {"name": prompt}},
                       headers=s.headers(), timeout=60) as r:
        stream = events(r)
        question = next(stream)
        assert question["method"] == "elicitation/create", question
        s.answer(question["id"], {"action": "accept", "content": {"context": "legacy"}})
        done = next(stream)
    assert done["result"]["messages"][0]["content"]["text"] == "Use this context: legacy"


def calls_of(g: Gateway, server: str) -> int:
    """The tools/calls corral has sent the server (its instances' count), as `corral mcp
    status` says it, asked on the socket."""
    return sum(s["calls"] for s in g.daemon.ask("mcp.status")["mcp_servers"]
               if s["name"] == server)


def test_answers_no_relayed_request_asked_for_are_refused_before_the_server_sees_them(
        gateway: Gateway) -> None:
    """The attacker's pass: a client hands the server roots of its choosing as the
    answer to a request nobody relayed to it (no requestState), or answers a key its
    state does not list: -32602 naming the key, the server never called. Fails without
    the asked requests sealed into the state (the server read "Roots: ['file:///etc']")."""
    g = gateway
    etc = {"client_roots": {"roots": [{"uri": "file:///etc"}]}}
    before = calls_of(g, "fx")
    for caps in ({}, ELICITING):
        forged = call(g, "acme", "test_input_required_result_list_roots", caps,
                      inputResponses=etc)
        assert forged["error"] == {"code": -32602, "message": (
            "invalid params: fx__test_input_required_result_list_roots: inputResponses "
            "'client_roots' answers no input request corral relayed (no requestState came "
            "with it)")}, forged
    # nor at a server whose callers' roots are theirs: only a relayed roots/list is
    fr = g._replace(url=g.url.removesuffix("/fx") + "/fr")
    rooted = {**ELICITING, "roots": {"listChanged": True}}
    fr_before = calls_of(g, "fr")
    unasked = call(fr, "acme", "test_input_required_result_list_roots", rooted,
                   inputResponses=etc)
    assert unasked["error"]["message"] == (
        "invalid params: fr__test_input_required_result_list_roots: inputResponses "
        "'client_roots' answers no input request corral relayed (no requestState came "
        "with it)"), unasked
    assert calls_of(g, "fx") == before and calls_of(g, "fr") == fr_before
    # nor roots dressed as an elicitation result (its action beside them, or inside its
    # content), nor beside a true one, nor a sampling answer: the key named is the one
    # that is no elicitation result
    before = calls_of(g, "fx")
    for disguised in ({"action": "accept", "roots": [{"uri": "file:///etc"}]},
                      {"action": "accept", "content": {"roots": [{"uri": "file:///etc"}]}},
                      {"role": "assistant", "content": {"type": "text", "text": "hi"},
                       "model": "m", "stopReason": "endTurn"}):
        forged = call(g, "acme", "test_input_required_result_list_roots", ELICITING,
                      inputResponses={"user_name": ACCEPT, "client_roots": disguised})
        assert forged["error"] == {"code": -32602, "message": (
            "invalid params: fx__test_input_required_result_list_roots: inputResponses "
            "'client_roots' answers no input request corral relayed (no requestState came "
            "with it)")}, (disguised, forged)
    assert calls_of(g, "fx") == before
    # a state of a round that asked other requests does not let a key it lacks through
    asked = call(g, "acme", "multi_input", ELICITING)["result"]
    assert sorted(asked["inputRequests"]) == ["first", "second"], asked
    before = calls_of(g, "fx")
    extra = call(g, "acme", "multi_input", ELICITING, requestState=asked["requestState"],
                 inputResponses={"first": ACCEPT, **etc})
    assert extra["error"] == {"code": -32602, "message": (
        "invalid params: fx__multi_input: inputResponses 'client_roots' answers no input "
        "request corral relayed with this requestState")}, extra
    assert calls_of(g, "fx") == before
    # the answers it lists still go through
    both = {k: {"action": "accept", "content": {"name": n}}
            for k, n in (("first", "Ann"), ("second", "Bo"))}
    done = call(g, "acme", "multi_input", ELICITING, requestState=asked["requestState"],
                inputResponses=both)["result"]
    assert text(done) == "Ann and Bo", done


def test_elicitation_results_a_client_gives_unasked_reach_the_server_as_it_would_answer(
        gateway: Gateway) -> None:
    """SEP-2322's client that answers ahead, with no requestState (the suite's
    -missing-input-response and -ignore-extra-params): answers that are elicitation
    results alone reach the server, which re-asks a key it lacks and ignores the others;
    a server's elicitation of this client's call is the client's to answer anyway.
    Fails without it (-32602: 'user_name' answers no input request corral relayed)."""
    g = gateway
    ahead = {"user_name": {"action": "accept", "content": {"name": "Ann"}},
             "extra": {"action": "decline"},
             "more": {"action": "accept", "content": {"n": 3, "tags": ["a"]},
                      "_meta": {}}}
    done = call(g, "acme", "test_input_required_result_elicitation", ELICITING,
                inputResponses=ahead)["result"]
    assert text(done) == "Hello, Ann!", done
    asked = call(g, "acme", "test_input_required_result_elicitation", ELICITING,
                 inputResponses={"wrong_key": ahead["user_name"]})["result"]
    assert (asked["resultType"], list(asked["inputRequests"])) == (
        "input_required", ["user_name"]), asked
    # the state it is given back lists what was asked: answered with it, as ever
    done = call(g, "acme", "test_input_required_result_elicitation", ELICITING,
                requestState=asked["requestState"],
                inputResponses={"user_name": ahead["user_name"]})["result"]
    assert text(done) == "Hello, Ann!", done
