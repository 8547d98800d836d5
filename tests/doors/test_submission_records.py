"""The audit and trace links of a task submitted (DESIGN 28: "a task submitted" and "an A2A
message" are calls; decisions 1250, 1251): a submission accepted is one audit row,
`task.submitted`, naming who asked, the door it came by, its agent and its task, at every
door that takes one (REST with a token, A2A's SendMessage with a token and with none at an
`[a2a] anonymous` agent, and its SendStreamingMessage; `/mcp/corral` of no task with the
replica's own token), on both homes, written by the entry the submission came to; and, with
[tracing], one `invoke_agent` span of the submission, a child of the caller's context and the
parent of its task's own span, exported to a real OTLP receiver (tests/doors/test_spans.py's;
`/mcp/corral`'s is its tool call's span, held there). The doors and their submissions are
tests/doors/test_submissions.py's."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..contract.home import KINDS, made
from ..test_daemon_cli import wait_until
from .conftest import Entry, agents
from .test_doors import PATIENCE, audit
from .test_spans import SERVER, SPAN, TRACE, Receiver, attrs
from .test_submissions import ANONYMOUS, SENT, Submitted, http, message, token

# each door as the row names it (daemon/submitted.py), and who its row says asked
RECORDED = {"REST": ("REST", "token sub-"), "A2A": ("A2A", "token sub-"),
            "A2A stream": ("A2A", "token sub-"),
            "A2A anonymous": ("A2A", ANONYMOUS),
            "/mcp/corral idle": ("/mcp/corral", "gateway client caller#")}
DONE = {"calls": []}  # the mailer's task that makes no call: it ends at once


def streamed(d: Entry, context: str | None, headers: dict[str, str] | None = None) -> str:
    """A `SendStreamingMessage` with a token, read to its end: its task's id."""
    body = {"jsonrpc": "2.0", "id": next(SENT), "method": "SendStreamingMessage",
            "params": {"message": message(DONE, context)["message"]}}
    with httpx.stream("POST", f"http://127.0.0.1:{d.home.ports[0]}/a2a/mailer", json=body,
                      headers={"Authorization": f"Bearer {token(d)}", **(headers or {})},
                      timeout=PATIENCE) as r:
        assert r.status_code == 200, r.read()
        events = [json.loads(line[len("data:"):])["result"] for line in r.iter_lines()
                  if line.startswith("data:")]
    task_id: str = events[0]["task"]["id"]
    return task_id


def mailers(d: Entry) -> set[str]:
    return {t["task_id"] for t in d.ask("tasks.list", {"agent": "mailer",
                                                       "limit": 1000})["tasks"]}


def submitted_rows(d: Entry, task_id: str) -> list[dict[str, Any]]:
    """Every entry's `task.submitted` rows of the task."""
    return [e for e in audit(d) if e["method"] == "task.submitted"
            and isinstance(e["params"], dict) and e["params"].get("task") == task_id]


@pytest.mark.deadline(240)
@pytest.mark.parametrize("door", RECORDED)
def test_a_submission_accepted_is_one_audit_row_naming_who_its_door_agent_and_task(
        daemon: Entry, door: str) -> None:
    d = daemon
    before = mailers(d)
    if door == "A2A stream":
        task_id = streamed(d, None)
        assert d.ask("tasks.get", {"task_id": task_id, "wait": True})["status"] == "succeeded"
    else:
        sent = Submitted(d, door, DONE)
        sent.outcome()
        task_id = sent.task_id or wait_until(lambda: next(iter(mailers(d) - before), None),
                                             PATIENCE, "the submitted task")
    named, who = RECORDED[door]
    # (written before the submission was answered; audit.list waits for its commit)
    rows = submitted_rows(d, task_id)
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["params"] == {"door": named, "agent": "mailer", "task": task_id}
    assert row["outcome"] == "ok"
    assert row["who"].startswith(who), row


@pytest.fixture(scope="module", params=KINDS)
def traced(request: pytest.FixtureRequest) -> Iterator[Entry]:
    """The suite's home with [tracing], exporting to a receiver of its own."""
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    tmp = Path(tempfile.mkdtemp(prefix="subspans-"))
    try:
        with made(request.param, tmp, agents(tmp) + (
                f'\n[tracing]\nendpoint = "http://127.0.0.1:{receiver.server_address[1]}'
                '/v1/traces"\nsample = 1.0\nexport_interval = 0.2\n')) as home:
            yield Entry(home)
    finally:
        receiver.shutdown()
        receiver.server_close()
        thread.join()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.deadline(240)
@pytest.mark.parametrize("door", ("REST", "A2A", "A2A anonymous", "A2A stream"))
def test_a_submission_accepted_is_one_invoke_agent_span_the_parent_of_its_tasks(
        traced: Entry, door: str) -> None:
    """The caller sends its context (its request's `traceparent` header): the span is its
    child. An A2A message names its conversation (contextId): the span's
    gen_ai.conversation.id, the task's id its corral.task.id (the conventions'
    conversation is a session, or thread)."""
    d = traced
    context = f"conversation-{next(SENT)}"
    sent = {"traceparent": f"00-{TRACE}-{SPAN}-01"}
    if door == "REST":
        said = http(d, "/api/v1/tasks", {"agent": "mailer", "input": DONE}, token(d), sent)
        task_id = said[1]["task_id"]
    elif door == "A2A stream":
        task_id = streamed(d, context, sent)
    else:
        said = http(d, "/a2a/mailer", {"jsonrpc": "2.0", "id": next(SENT),
                                       "method": "SendMessage",
                                       "params": message(DONE, context)},
                    None if door == "A2A anonymous" else token(d), sent)
        task_id = said[1]["result"]["task"]["id"]
    done = d.ask("tasks.get", {"task_id": task_id, "wait": True})
    assert done["status"] == "succeeded", done

    def of_task(s: Any) -> bool:
        return bool(attrs(s).get("corral.task.id") == task_id)
    # each span is put at its own end, and a loaded exporter may send them in two batches
    (task_span,) = wait_until(lambda: [s for s in Receiver.received()
                                       if s.name == "invoke_agent mailer" and of_task(s)],
                              PATIENCE, "the task's span")
    (span,) = wait_until(lambda: [s for s in Receiver.received()
                                  if s.name == "tasks.submit mailer" and of_task(s)],
                         PATIENCE, "the submission's span")
    a = attrs(span)
    assert span.kind == SERVER
    assert (a["gen_ai.operation.name"], a["gen_ai.agent.name"], a["corral.call.door"]) == (
        "invoke_agent", "mailer", RECORDED[door][0]), a
    assert (task_span.trace_id, task_span.parent_span_id) == (span.trace_id, span.span_id)
    assert (span.trace_id.hex(), span.parent_span_id.hex()) == (TRACE, SPAN)
    if door == "REST":
        assert "gen_ai.conversation.id" not in a
    else:
        assert a["gen_ai.conversation.id"] == context
