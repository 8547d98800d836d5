"""The door contract for a task submitted (DESIGN 28: "a task submitted" and "an A2A
message" are calls): each link's promise that applies to a submission is one test, run at
every door that takes one, on both homes: REST (`POST /api/v1/tasks` with a token), A2A
(`SendMessage` with a token, and with none at an `[a2a] anonymous` agent), and
`/mcp/corral` (an agent called as a tool, from a task: its spawn, and of no task: the
replica's token while it runs none). The submitted agent is `mailer` (door_agent.py), its
`pol__send_mail` held for a person by its `approve`."""

from __future__ import annotations

import contextlib
import itertools
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from corral import jsonrpc
from corral.cli.client import CallFailed

from ..test_daemon_cli import wait_until
from .conftest import CLIENT_TOKEN, TASK_DOORS, Entry
from .door_agent import gateway
from .test_doors import PATIENCE, POOL, Made, decide

ENDED = ("succeeded", "failed", "timed_out", "cancelled", "lost")

# the doors a task is submitted by (a task's: "/mcp/corral"; the others' of no task)
SUBMIT_DOORS = ("REST", "A2A", "A2A anonymous", "/mcp/corral", "/mcp/corral idle")
MAIL = {"to": "x@example.org", "body": "hi"}
SEND = [{"door": "worker", "tool": "pol__send_mail", "arguments": MAIL}]
FETCH = {"tool": "pol__fetch", "arguments": {"url": "https://evil.example"}}
ANONYMOUS = "a2a anonymous mailer"  # the anonymous caller's label (its `who`)
SENT = itertools.count()


def token(d: Entry, *more: str) -> str:
    """An operator's token at the first entry (a cluster's tokens are a node's own)."""
    r = d.cli("token", "create", f"sub-{next(SENT)}", "--scope", "tasks:run", "--scope",
              "tasks:read", "--scope", "approvals", *more)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def http(d: Entry, path: str, body: Any, secret: str | None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{d.home.ports[0]}{path}", data=json.dumps(body).encode(),
        method="POST", headers={"Content-Type": "application/json", **(headers or {}), **(
            {"Authorization": f"Bearer {secret}"} if secret is not None else {})})
    try:
        with urllib.request.urlopen(req, timeout=PATIENCE) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def a2a(d: Entry, agent: str, method: str, params: dict[str, Any], secret: str | None
        ) -> tuple[int, Any]:
    return http(d, f"/a2a/{agent}", {"jsonrpc": "2.0", "id": next(SENT), "method": method,
                                     "params": params}, secret)


def message(task_input: Any, context: str | None = None, message_id: str | None = None
            ) -> dict[str, Any]:
    sent: dict[str, Any] = {"messageId": message_id or f"m-{next(SENT)}",
                            "role": "ROLE_USER", "parts": [{"data": task_input}]}
    if context is not None:
        sent["contextId"] = context
    return {"message": sent, "configuration": {"returnImmediately": True}}


class Submitted:
    """A submission of `mailer` at a door: `task_id` its task's (REST, A2A), or the
    caller's call under way (`made`, /mcp/corral; its task found by its ask)."""

    def __init__(self, d: Entry, door: str, task_input: dict[str, Any], *,
                 key: str | None = None, before: list[dict[str, Any]] | None = None,
                 agent: str = "mailer", secret: str | None = None) -> None:
        self.d, self.door = d, door
        self.task_id: str | None = None
        self.made: Made | None = None
        self.future: Any = None
        self.said: tuple[int, Any]
        if door == "REST":
            self.said = http(d, "/api/v1/tasks", {"agent": agent, "input": task_input},
                             secret or token(d), {"Idempotency-Key": key} if key else None)
            if self.said[0] < 300:
                self.task_id = self.said[1]["task_id"]
        elif door.startswith("A2A"):
            self.said = a2a(d, agent, "SendMessage", message(task_input, key, key), secret or (
                None if door == "A2A anonymous" else token(d)))
            if "result" in (self.said[1] or {}):
                self.task_id = self.said[1]["result"]["task"]["id"]
        elif door in TASK_DOORS:  # (an agent called by the caller's task: its child)
            self.made = Made(d, "caller", door, f"corral__{agent}", task_input,
                             before=[{"door": "worker", **b} for b in before or []], key=key)
        else:  # of no task: the test calls with the idle replica's own token
            env = d.ask("tasks.run", {"agent": "caller", "input": {"env": True}})["output"]
            url, secret = env["CORRAL_MCP_URL"], env["CORRAL_MCP_TOKEN"]
            for b in before or []:
                gateway("", b["tool"], b["arguments"], url, secret)
            self.future = POOL.submit(gateway, "/corral", agent, task_input, url, secret,
                                      key)

    def outcome(self) -> Any:
        """The caller's outcome: the task's output (REST, A2A), the tool call's (else)."""
        if self.made is not None:
            return self.made.outcome()
        if self.future is not None:
            return self.future.result(PATIENCE)
        done = self.d.ask("tasks.get", {"task_id": self.task_id, "wait": True})
        assert done["status"] == "succeeded", done
        return done["output"]


def tasks_of(d: Entry, agent: str) -> int:
    return len(d.ask("tasks.list", {"agent": agent, "limit": 1000})["tasks"])


def new_ask(d: Entry, before: set[str]) -> dict[str, Any]:
    """The mailer's ask made since `before` (the ids pending then), once it is listed."""
    found: dict[str, Any] = wait_until(lambda: next(
        (a for a in d.ask("approvals.list")["asks"]
         if a["agent"] == "mailer" and a["id"] not in before), None), PATIENCE,
        "the mailer's ask")
    return found


def pending(d: Entry) -> set[str]:
    return {a["id"] for a in d.ask("approvals.list")["asks"]}


@pytest.mark.deadline(240)
@pytest.mark.parametrize("door", (*SUBMIT_DOORS, "worker", "worker-no-task"))
def test_a_submitted_task_is_handed_its_callers_labels(daemon: Entry, door: str) -> None:
    """The labels link: the task holds what its caller read: an anonymous caller's
    message is text from no one (its own label), a caller that read an untrusted tool's
    output hands that on (from its task, to the child its call of the agent spawns, at
    the worker link naming the task or not, or at /mcp/corral; or its replica's of no
    task), a token's holder hands none. Its sensitive call then waits for a person, who
    is told which label."""
    d = daemon
    label = None if door in ("REST", "A2A") else ANONYMOUS if door == "A2A anonymous" \
        else "pol__fetch"
    before = pending(d)
    sent = Submitted(d, door, {"calls": SEND},
                     before=[FETCH] if label == "pol__fetch" else None)
    ask = new_ask(d, before)
    if sent.task_id is not None:
        assert ask["task_id"] == sent.task_id, (ask, sent.said)
    assert ask["subject"] == {"tool": "pol__send_mail", "arguments": MAIL} | (
        {"policy": f"taint (after untrusted {label})"} if label else {}), ask
    decide(d, ask, "deny")
    said = sent.outcome()
    assert "error" not in said, said


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", ["REST", "A2A", "A2A anonymous"])
def test_an_approval_is_a_persons_and_an_anonymous_caller_gives_none(daemon: Entry,
                                                                     door: str) -> None:
    """The approval link: the caller that submitted the task answers its ask (REST:
    approvals.resolve; A2A: a message to the task), but an approval is a person's: a
    token's holder's is, an anonymous caller's is refused, the ask as it was. (At
    /mcp/corral the caller is an agent: no ask is its to answer.)"""
    d = daemon
    secret = None if door == "A2A anonymous" else token(d)
    before = pending(d)
    sent = Submitted(d, door, {"calls": SEND}, secret=secret)
    ask = new_ask(d, before)
    if door == "REST":
        said = http(d, f"/api/v1/approvals/{ask['id']}/resolve", {"decision": "approved"},
                    secret)
        assert said[0] == 200, said
    else:
        said = a2a(d, "mailer", "SendMessage", {"message": {
            "messageId": f"m-{next(SENT)}", "role": "ROLE_USER", "taskId": sent.task_id,
            "parts": [{"text": "yes"}]}, "configuration": {"returnImmediately": True}},
            secret)
    if door == "A2A anonymous":
        assert said[1]["error"]["message"] == (
            f"task {sent.task_id} waits for a person's approval, which an anonymous "
            "caller does not give: a token's holder or `corral approvals` gives it"), said
        assert ask["id"] in pending(d)
        decide(d, ask, "approve")
    assert sent.outcome() == [{"text": f"send_mail {json.dumps(MAIL, sort_keys=True)}",
                               "isError": False}]


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", SUBMIT_DOORS)
def test_a_submission_sent_again_with_its_key_is_the_same_task(daemon: Entry,
                                                               door: str) -> None:
    """The journal link: the same submission sent twice with its key (REST's
    idempotency_key, A2A's messageId in its context, /mcp/corral's `_meta`
    `io.corral/idempotency-key`) is one task, answered by the first. (From a task, the
    agent sends its call again in the same task, as its retry of a call it lost would.)"""
    d = daemon
    key = f"key-{next(SENT)}"
    before = tasks_of(d, "mailer")
    if door == "/mcp/corral":
        again = {"door": door, "tool": "corral__mailer", "arguments": {"calls": []},
                 "key": key}
        first = Submitted(d, door, {"calls": []}, key=key, before=[again])
        assert first.made is not None
        said = first.made.outcome()["all"]
        assert said[0] == said[1] and "error" not in said[0], said
    else:
        secret = None if door in ("A2A anonymous", "/mcp/corral idle") else token(d)
        first = Submitted(d, door, {"calls": []}, key=key, secret=secret)
        said = first.outcome()  # (at /mcp/corral idle: its replica is running no task)
        second = Submitted(d, door, {"calls": []}, key=key, secret=secret)
        assert second.outcome() == said
        assert first.task_id == second.task_id
    assert tasks_of(d, "mailer") == before + 1


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", ["REST", "A2A", "/mcp/corral idle"])
def test_a_key_is_its_callers_own_and_tells_nothing_of_another_callers(daemon: Entry,
                                                                      door: str) -> None:
    """A key names its caller's submission (its token, its gateway client): another
    caller of the same tenant sending the key (here the same input to another agent) makes
    a task of its own. The key was its tenant's, so that caller was refused `used for
    another request` (the first caller's submission told to it: that key, another
    agent), or, with the same request, answered the first caller's task; and could take
    a key another caller was about to use (review's pass, session 7's closing note;
    decision 1792). Each caller's own key still names its own task when sent again."""
    d = daemon
    key = f"shared-{next(SENT)}"
    if door == "/mcp/corral idle":  # the caller's replica, and the tokens file's client
        env = d.ask("tasks.run", {"agent": "caller", "input": {"env": True}})["output"]
        url = d.ask("gateway.status", {})["url"]

        def send(agent: str, task_input: dict[str, Any], secret: str) -> Any:
            return gateway("/corral", agent, task_input,
                           env["CORRAL_MCP_URL"] if agent == "mailer" else url, secret, key)
        first, second = env["CORRAL_MCP_TOKEN"], CLIENT_TOKEN
    else:
        def send(agent: str, task_input: dict[str, Any], secret: str) -> Any:
            sent = Submitted(d, door, task_input, key=key, agent=agent, secret=secret)
            assert sent.task_id is not None, sent.said
            return sent.task_id, sent.outcome()
        first, second = token(d), token(d)
    mailed, targeted = tasks_of(d, "mailer"), tasks_of(d, "target")
    mine = send("mailer", {"calls": []}, first)
    theirs = send("target", {"calls": []}, second)  # (A2A's key: the message and its id)
    assert "error" not in json.dumps(theirs), theirs
    assert send("target", {"calls": []}, second) == theirs
    assert send("mailer", {"calls": []}, first) == mine
    assert (tasks_of(d, "mailer"), tasks_of(d, "target")) == (mailed + 1, targeted + 1)


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", ["/mcp/corral", "/mcp/corral idle"])
def test_a_submission_sent_again_with_another_key_is_another_task(daemon: Entry,
                                                                  door: str) -> None:
    """The key names the submission: the same call with another key, or none, is
    another task, each its own (the key is the caller's, not its arguments')."""
    d = daemon
    before = tasks_of(d, "mailer")
    keys = [f"key-{next(SENT)}", f"key-{next(SENT)}", None]
    if door == "/mcp/corral":
        calls = [{"door": door, "tool": "corral__mailer", "arguments": {"calls": []},
                  "key": k} for k in keys[:2]]
        sent = Submitted(d, door, {"calls": []}, key=keys[2], before=calls)
        assert sent.made is not None
        assert all("error" not in o for o in sent.made.outcome()["all"])
    else:
        for k in keys:
            assert "error" not in Submitted(d, door, {"calls": []}, key=k).outcome()
    assert tasks_of(d, "mailer") == before + 3


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", ["/mcp/corral", "/mcp/corral idle"])
def test_a_key_past_its_bound_is_refused_naming_it(daemon: Entry, door: str) -> None:
    """A key of 256 characters (the Idempotency-Key header's bound is 255) is refused
    in words naming `_meta`'s member and its bound, and nothing is made."""
    d = daemon
    before = tasks_of(d, "mailer")
    said = Submitted(d, door, {"calls": []}, key="k" * 256).outcome()
    assert said == {"error": jsonrpc.INVALID_PARAMS, "message": "invalid params: _meta's "
                    "io.corral/idempotency-key is a string of 1 to 255 characters"}, said
    assert tasks_of(d, "mailer") == before


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", SUBMIT_DOORS)
def test_a_caller_that_may_not_run_the_agent_starts_nothing(daemon: Entry,
                                                            door: str) -> None:
    """The identity and view link: a caller that may not run the agent (a token limited
    to another, an anonymous caller of an agent the operator did not name, an agent whose
    allowlist names it not) is refused, and no task is made."""
    d = daemon
    before = tasks_of(d, "budgeted")
    limited = token(d, "--agents", "target") if door in ("REST", "A2A") else None
    sent = Submitted(d, door, {"calls": []}, agent="budgeted", secret=limited)
    if door in ("REST", "A2A", "A2A anonymous"):
        status, body = sent.said
        assert status == 404, sent.said
        text = body["detail"] if door == "REST" else body["error"]["message"]
        assert text == "no such agent: budgeted" + (
            " (agents: target)" if door == "REST" else ""), sent.said
    else:
        said = sent.outcome()
        assert said["error"] == jsonrpc.TOOL_NOT_ALLOWED and "corral__budgeted" in \
            said["message"], said
    assert tasks_of(d, "budgeted") == before


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", SUBMIT_DOORS)
def test_a_submission_past_its_agents_budget_is_refused_naming_it(daemon: Entry,
                                                                  door: str) -> None:
    """The budget link: the agent's own bounds on what waits for it (here its
    `max_queue`, one task waiting behind one running at each node) refuse a submission at
    every door, in the same words (its home's), and nothing is made."""
    d = daemon
    with queue_full(d):
        before = tasks_of(d, "queued")
        sent = Submitted(d, door, {"do": "echo"}, agent="queued")
        said = json.dumps(sent.said if door in ("REST", "A2A", "A2A anonymous")
                          else sent.outcome())
        # (in one home's words as in the other's: admission.queue_full)
        assert "queue full: agent queued has 1 task waiting (max_queue 1)" in said, said
        assert tasks_of(d, "queued") == before


@pytest.mark.deadline(120)
def test_a_submission_at_another_priority_past_its_agents_budget_is_refused_too(
        daemon: Entry) -> None:
    """The budget link's `max_queue` bounds what waits for the agent, whatever its
    priority, on both homes: a node's queue counts every task waiting, but the cluster's
    submit counted what waited unread in the stream of the submission's own priority (a
    stream each), so a caller queued `max_queue` tasks a priority, past the bound as far
    as it liked (review's pass over the cluster's accounting, decision 1832)."""
    d = daemon
    with queue_full(d):
        before = tasks_of(d, "queued")
        with pytest.raises(CallFailed) as refused:
            d.ask("tasks.submit", {"agent": "queued", "priority": 7,
                                   "input": {"do": "echo"}})
        assert refused.value.message == (
            "queue full: agent queued has 1 task waiting (max_queue 1)"), refused.value
        assert tasks_of(d, "queued") == before


@contextlib.contextmanager
def queue_full(d: Entry) -> Iterator[None]:
    """`queued` full: a task running at each node and one waiting (its max_queue), each
    cancelled and ended after."""
    held: list[str] = []
    try:
        for _ in d.home.entries:  # (a cluster's nodes each run one: its agent is each's)
            held.append(sleeping(d))
        wait_until(lambda: all(d.ask("tasks.get", {"task_id": t})["status"] == "running"
                               for t in held), PATIENCE, "a task running at each node")
        held.append(sleeping(d))
        yield
    finally:
        for task_id in held:
            d.ask("tasks.cancel", {"task_id": task_id})
        all_ended(d, held)


def all_ended(d: Entry, held: list[str]) -> None:
    """Each cancelled task ended; one that did not is named with its view and the nodes'
    (a fresh clone's loaded run once waited past the test's deadline on one of them)."""
    def views() -> list[Any]:
        return [d.ask("tasks.get", {"task_id": t}) for t in held]
    try:
        wait_until(lambda: all(v["status"] in ENDED for v in views()), PATIENCE,
                   "the cancelled tasks ended")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {json.dumps(views())}; nodes: "
                             f"{json.dumps(d.ask('nodes.list'))}") from exc


def sleeping(d: Entry) -> str:
    """A task of `queued` that sleeps until cancelled, once its queue has room (a cluster's
    stream holds a task the test before cancelled while it waited until a node pulls it)."""
    def submitted() -> str | None:
        try:
            task_id: str = d.ask("tasks.submit", {"agent": "queued", "input": {
                "do": "sleep", "seconds": 1000}})["task_id"]
        except CallFailed as e:
            if "queue" not in e.message:
                raise
            return None
        return task_id
    found: str = wait_until(submitted, PATIENCE, "room in the queue of queued")
    return found


@pytest.mark.deadline(120)
def test_an_anonymous_caller_reaches_only_the_tasks_it_started(daemon: Entry) -> None:
    """The view of an anonymous caller (issue 88): it is no one, limited to its agent and
    to the tasks it started, which hold its label (records.py `started`): another
    caller's task of the same agent is not found by any operation, nor listed."""
    d = daemon
    theirs = d.ask("tasks.submit", {"agent": "mailer", "input": {"calls": []}})["task_id"]
    mine = Submitted(d, "A2A anonymous", {"calls": []})
    assert mine.task_id is not None, mine.said
    nowhere = {"code": -32001, "message": f"no such task: {theirs}"}
    for method, params in (
            ("GetTask", {"id": theirs}), ("CancelTask", {"id": theirs}),
            ("SubscribeToTask", {"id": theirs}),
            ("SendMessage", {"message": {"messageId": f"m-{next(SENT)}", "role": "ROLE_USER",
                                         "taskId": theirs, "parts": [{"text": "yes"}]}}),
            ("CreateTaskPushNotificationConfig", {"taskId": theirs, "id": "hook",
                                                  "url": "http://127.0.0.1:9/hook"}),
            ("ListTaskPushNotificationConfigs", {"taskId": theirs})):
        _, said = a2a(d, "mailer", method, params, None)
        assert {k: said["error"][k] for k in ("code", "message")} == nowhere, (method, said)
    mine.outcome()
    _, got = a2a(d, "mailer", "GetTask", {"id": mine.task_id}, None)
    assert got["result"]["id"] == mine.task_id, got
    _, listed = a2a(d, "mailer", "ListTasks", {"pageSize": 100}, None)
    ids = [t["id"] for t in listed["result"]["tasks"]]
    assert mine.task_id in ids and theirs not in ids, ids
    # a token's holder is someone: it reaches both
    _, listed = a2a(d, "mailer", "ListTasks", {"pageSize": 100}, token(d))
    ids = [t["id"] for t in listed["result"]["tasks"]]
    assert mine.task_id in ids and theirs in ids, ids


def turn(d: Entry, session: str, calls: list[dict[str, Any]]) -> str:
    """The operator's turn of the mailer's session (a token's holder: anyone's session)."""
    task_id: str = d.ask("tasks.submit", {"agent": "mailer", "input": {"calls": calls},
                                          "session": session})["task_id"]
    return task_id


@pytest.mark.deadline(120)
def test_an_anonymous_caller_continues_only_a_context_it_started(daemon: Entry) -> None:
    """An anonymous caller's contextId (issue 88): a new one, or one it started; the
    operator's session of its agent (whose state its turn would read and write), or the
    context of the operator's task, is refused naming it, nothing accepted."""
    d = daemon
    theirs = f"ops-{next(SENT)}"
    d.ask("tasks.get", {"task_id": turn(d, theirs, []), "wait": True})
    alone = d.ask("tasks.submit", {"agent": "mailer", "input": {"calls": []}})["task_id"]
    before = tasks_of(d, "mailer")
    for context in (theirs, alone):
        _, said = a2a(d, "mailer", "SendMessage", message({"calls": []}, context), None)
        assert said.get("error") == {
            "code": -32602, "message": f"contextId {context} is a context this caller did "
            "not start: an anonymous caller continues only its own (send no contextId to "
            "begin one)"}, said
    assert tasks_of(d, "mailer") == before
    mine = f"anon-{next(SENT)}"
    first = Submitted(d, "A2A anonymous", {"calls": []}, key=mine)
    assert first.said[1]["result"]["task"]["contextId"] == mine, first.said
    first.outcome()
    _, said = a2a(d, "mailer", "SendMessage", message({"calls": []}, mine), None)
    assert said["result"]["task"]["contextId"] == mine, said
    assert said["result"]["task"]["id"] != first.task_id
    # the context of its own first task, which named none, is its own too
    _, said = a2a(d, "mailer", "SendMessage", message({"calls": []}), None)
    own = said["result"]["task"]["id"]
    d.ask("tasks.get", {"task_id": own, "wait": True})
    _, said = a2a(d, "mailer", "SendMessage", message({"calls": []}, own), None)
    assert said["result"]["task"]["contextId"] == own, said


@pytest.mark.deadline(120)
def test_a_turn_that_makes_no_call_taints_its_sessions_next_turn(daemon: Entry) -> None:
    """An anonymous caller's turn that makes no call still leaves its label in its
    session (kept as the turn is accepted): the session's next turn, the operator's,
    holds it, and its sensitive call waits for a person, told why. That turn is not the
    anonymous caller's to reach: it did not start it (records.py `started`), though it
    holds its label."""
    d = daemon
    context = f"anon-{next(SENT)}"
    Submitted(d, "A2A anonymous", {"calls": []}, key=context).outcome()
    before = pending(d)
    theirs = turn(d, context, SEND)
    ask = new_ask(d, before)
    assert ask["task_id"] == theirs, ask
    assert ask["subject"] == {"tool": "pol__send_mail", "arguments": MAIL,
                              "policy": f"taint (after untrusted {ANONYMOUS})"}, ask
    decide(d, ask, "deny")
    d.ask("tasks.get", {"task_id": theirs, "wait": True})
    _, said = a2a(d, "mailer", "GetTask", {"id": theirs}, None)
    assert {k: said["error"][k] for k in ("code", "message")} == {
        "code": -32001, "message": f"no such task: {theirs}"}, said
    for listing in ({"pageSize": 100}, {"pageSize": 100, "contextId": context}):
        _, listed = a2a(d, "mailer", "ListTasks", listing, None)
        assert theirs not in [t["id"] for t in listed["result"]["tasks"]], listed


def refused_context(d: Entry, agent: str, context: str) -> None:
    _, said = a2a(d, agent, "SendMessage", message({"calls": []}, context), None)
    assert said.get("error") == {
        "code": -32602, "message": f"contextId {context} is a context this caller did "
        "not start: an anonymous caller continues only its own (send no contextId to "
        "begin one)"}, said


@pytest.mark.deadline(120)
def test_a_context_an_anonymous_caller_did_not_keep_is_not_its_own(daemon: Entry) -> None:
    """Who started a session goes with it: once it is ended, the operator's session begun
    anew under its name is not the anonymous caller's; and a turn refused (its agent's
    queue full) starts no session, so the name is not the anonymous caller's either."""
    d = daemon
    ended = f"anon-{next(SENT)}"
    Submitted(d, "A2A anonymous", {"calls": []}, key=ended).outcome()
    d.ask("sessions.end", {"agent": "mailer", "session": ended})
    d.ask("tasks.get", {"task_id": turn(d, ended, []), "wait": True})
    refused_context(d, "mailer", ended)
    held: list[str] = []
    try:
        for _ in d.home.entries:
            held.append(sleeping(d))
        wait_until(lambda: all(d.ask("tasks.get", {"task_id": t})["status"] == "running"
                               for t in held), PATIENCE, "a task running at each node")
        held.append(sleeping(d))
        tried = f"anon-{next(SENT)}"
        _, said = a2a(d, "queued", "SendMessage", message({"do": "echo"}, tried), None)
        assert "error" in said, said
    finally:
        for task_id in held:
            d.ask("tasks.cancel", {"task_id": task_id})
        all_ended(d, held)
    done = d.ask("tasks.submit", {"agent": "queued", "input": {"do": "echo"},
                                  "session": tried})["task_id"]
    d.ask("tasks.get", {"task_id": done, "wait": True})
    refused_context(d, "queued", tried)


def sends_only_once_asked(d: Entry, options: dict[str, Any]) -> None:
    """A task of the caller (its `options`) that sends mail holds what was handed on:
    its call waits for a person, told which label, and denied is not made."""
    sent = d.ask("tasks.submit", {"agent": "caller", **options, "input": {
        "calls": SEND}})["task_id"]
    ask: dict[str, Any] = wait_until(lambda: next(
        (a for a in d.ask("approvals.list")["asks"] if a["task_id"] == sent), None),
        PATIENCE, "the task's ask")
    assert ask["subject"] == {"tool": "pol__send_mail", "arguments": MAIL,
                              "policy": "taint (after untrusted pol__fetch)"}, ask
    decide(d, ask, "deny")
    done = d.ask("tasks.get", {"task_id": sent, "wait": True})
    assert done["output"][0]["isError"] and done["output"][0]["text"].startswith(
        "tool call pol__send_mail was denied by "), done


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", [x for x in TASK_DOORS if "corral" not in x])
def test_what_a_turn_read_taints_its_sessions_next_turn(daemon: Entry, door: str) -> None:
    """The labels link, handed on to a session's next turn: a turn read an untrusted
    tool's output by the door (naming its task or not); the session's next turn read
    nothing, yet holds it: its sensitive call waits for a person, told which label, and
    denied is not made."""
    d = daemon
    session = f"read-{next(SENT)}"
    first = d.ask("tasks.submit", {"agent": "caller", "session": session, "input": {
        "calls": [{"door": door, **FETCH}]}})["task_id"]
    done = d.ask("tasks.get", {"task_id": first, "wait": True})
    assert done["status"] == "succeeded" and "error" not in done["output"][0], done
    sends_only_once_asked(d, {"session": session})


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", ["/mcp idle", "/mcp/NAME idle"])
def test_what_a_call_of_no_task_read_taints_its_replicas_next_task(daemon: Entry,
                                                                  door: str) -> None:
    """The labels link the other way round: the replica (a new incarnation: its agent
    restarted) read an untrusted tool's output in a call of no task, by the door with its
    token while it ran none; a task it runs afterwards (on the same node) holds it, for
    its process read the text: its sensitive call waits for a person, told which label."""
    d = daemon
    d.each("agents.restart", {"names": ["caller"]})
    env = d.ask("tasks.run", {"agent": "caller", "input": {"env": True}, "local": True})[
        "output"]
    path, name = ("", FETCH["tool"]) if door == "/mcp idle" else ("/pol", "fetch")
    said = gateway(path, name, FETCH["arguments"], env["CORRAL_MCP_URL"],
                   env["CORRAL_MCP_TOKEN"])
    assert "error" not in said and not said["isError"], said
    sends_only_once_asked(d, {"local": True})
