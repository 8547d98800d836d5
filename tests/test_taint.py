"""Taint (docs/security.md#taint): a real daemon, a real SDK agent
(examples/misbehave.py) calling a real MCP server (tests/servers/policy_mcp.py) whose
fetcher is marked untrusted and whose mail sender is sensitive. A task that read the
fetcher's output needs a person for the sender (the "lethal trifecta" closed once the
marks are written); one that did not calls it freely; the taint outlives a retry."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon, shared_tmpdir
from .test_policy import HERE, made, wait_for

FLEET = textwrap.dedent(f"""
    [agents.reader]
    command = ["{PY}", "{EXAMPLES}/misbehave.py"]
    env = {{ PYTHONPATH = "{ROOT}" }}
    tools = ["pol__*"]
    retries = 1
    stop_timeout = 10.0

    [mcp_servers.pol]
    command = ["{PY}", "{HERE}/servers/policy_mcp.py"]
    tools_untrusted = ["fetch", "read_*"]
    tools_sensitive = ["send_mail", "pay"]
""")
FETCH: dict[str, Any] = {"tool": "pol__fetch",
                         "arguments": {"url": "https://evil.example/page"}}
SEND: dict[str, Any] = {"tool": "pol__send_mail",
                        "arguments": {"to": "me@example.com", "body": "hi"}}


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = Daemon(shared_tmpdir(), FLEET)
    try:
        d.start()
        yield d
    finally:
        d.close()


def texts(done: dict[str, Any]) -> list[tuple[bool, str]]:
    assert done["status"] == "succeeded", done
    return [(bool(r.get("isError")), r["content"][0]["text"]) for r in done["output"]]


def submit(d: Daemon, *calls: dict[str, Any]) -> str:
    task_id: str = d.ask("tasks.submit", {"agent": "reader", "input": {
        "do": "sequence", "calls": list(calls)}})["task_id"]
    return task_id


def result(d: Daemon, task_id: str) -> list[tuple[bool, str]]:
    return texts(d.ask("tasks.get", {"task_id": task_id, "wait": True}))


@pytest.mark.deadline(180)
def test_a_sensitive_tool_after_an_untrusted_one_waits_for_a_person(daemon: Daemon
                                                                      ) -> None:
    d = daemon
    # without the untrusted read: no ask, the mail is sent
    assert result(d, submit(d, SEND)) == [(False, made("send_mail", **SEND["arguments"]))]
    assert d.ask("approvals.list")["asks"] == []
    # after it: the sender waits for a person, who is told why
    task_id = submit(d, FETCH, SEND)
    [ask] = wait_for(lambda: d.ask("approvals.list")["asks"], "the tainted call's ask")
    assert ask["task_id"] == task_id
    assert ask["subject"] == {**SEND, "policy": "taint (after untrusted pol__fetch)"}
    assert d.cli("approvals", "approve", ask["id"]).returncode == 0
    assert result(d, task_id) == [(False, made("fetch", **FETCH["arguments"])),
                                  (False, made("send_mail", **SEND["arguments"]))]
    # denied: the agent reads the tool's error, nothing is sent
    task_id = submit(d, {"tool": "pol__read_mail"}, SEND)
    [ask] = wait_for(lambda: d.ask("approvals.list")["asks"], "the second ask")
    assert ask["subject"]["policy"] == "taint (after untrusted pol__read_mail)"
    assert d.cli("approvals", "deny", ask["id"]).returncode == 0
    [read, sent] = result(d, task_id)
    assert read == (False, made("read_mail"))
    assert sent[0] and sent[1].startswith(
        f"tool call pol__send_mail was denied by uid {os.getuid()} "), sent
    # a non-sensitive call of a tainted task asks no one
    assert result(d, submit(d, FETCH, {"tool": "pol__http_get",
                                       "arguments": {"host": "a"}}))[1] == (
        False, made("http_get", host="a"))
    assert d.ask("approvals.list")["asks"] == []


@pytest.mark.deadline(180)
def test_the_taint_outlives_a_retry(daemon: Daemon) -> None:
    """The first attempt reads the fetcher's output and its worker dies; the retry
    calls only the sender: it is the same task, tainted, and asks."""
    d = daemon
    task_id = submit(d, {**FETCH, "attempt": 1}, {"crash": 1}, {**SEND, "attempt": 2})
    [ask] = wait_for(lambda: d.ask("approvals.list")["asks"], "the retry's ask")
    assert (ask["task_id"], ask["attempt"]) == (task_id, 2)
    assert ask["subject"]["policy"] == "taint (after untrusted pol__fetch)"
    assert d.cli("approvals", "approve", ask["id"]).returncode == 0
    assert result(d, task_id) == [(False, made("send_mail", **SEND["arguments"]))]
