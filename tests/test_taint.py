"""Taint (docs/security.md#taint): a real daemon, a real SDK agent
(examples/misbehave.py) calling a real MCP server (tests/servers/policy_mcp.py) whose
fetcher is marked untrusted and whose mail sender is sensitive. A task that read the
fetcher's output needs a person for the sender (the "lethal trifecta" closed once the
marks are written); one that did not calls it freely; the taint outlives a retry."""

from __future__ import annotations

import asyncio
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral.daemon.caller import Caller
from corral.taskoptions import TaskOptions

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon, in_process, shared_tmpdir
from .servers.model_upstream import StandIn
from .test_boundary_calls import (
    asks_of,
    finished,
    raw_call,
    replica_env,
    session,
    text,
    two_running,
)
from .test_gateway_stdio import wait_until_async
from .test_model_gateway import fleet, provider_key, upstream  # noqa: F401 (fixtures)
from .test_policy import HERE, made, wait_for
from .test_questions import asks_made

FLEET = textwrap.dedent(f"""
    [agents.reader]
    command = ["{PY}", "{EXAMPLES}/misbehave.py"]
    env = {{ PYTHONPATH = "{ROOT}" }}
    tools = ["pol__*"]
    retries = 1
    max_concurrent_tasks = 2
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
    assert ('approval of pol__send_mail {"to":"me@example.com","body":"hi"} by policy: '
            "taint (after untrusted pol__fetch)") in d.cli("approvals").stdout
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


async def test_model_calls_pass_rules_on_their_model_and_max_tokens_and_taint(
        tmp_path: Path, upstream: StandIn) -> None:  # noqa: F811 - the fixture
    """Through the model gateway, by the real client libraries (tests/model_agent.py): a
    rule on a model's `max_tokens` allows a bounded call and denies one with no bound, in
    the provider's words; a sensitive model called after an untrusted tool's output
    waits for a person, and the same call before it does not. The deny is recorded as
    the boundary's refusal (`boundary.refused` of kind policy)."""
    rules = textwrap.dedent("""
        [[policy]]
        name = "short answers"
        match = { model = "gpt-*" }
        when = { "max_tokens" = { below = 100 } }
        effect = "allow"

        [[policy]]
        name = "no long gpt"
        match = { model = "gpt-*" }
        effect = "deny"
    """)
    toml = fleet(tmp_path, upstream.url, agent_extra='tools = ["counting__*"]',
                 claude_extra="sensitive = true") + textwrap.dedent(f"""
            [mcp_servers.counting]
            command = ["{PY}", "{HERE}/servers/counting_mcp.py", "{tmp_path}/server-count"]
            tools_untrusted = ["bump"]
        """) + rules
    async with in_process(tmp_path, toml) as d:
        made = asks_made(d)

        async def run(task_input: dict[str, Any]) -> Any:
            res = await d.sup.tasks.run("writer", task_input, TaskOptions(timeout=60))
            assert res.status == "succeeded", res
            return res.output["answers"]

        assert await run({"api": "chat", "model": "gpt-small", "calls": 1,
                          "extra": {"max_tokens": 50}}) == ["echo: call 1"]
        [refused] = await run({"api": "chat", "model": "gpt-small", "calls": 1})
        assert refused["status"] == 403
        assert "model call gpt-small is denied by policy rule no long gpt" in \
            refused["message"], refused
        assert len(upstream.requests) == 1  # the denied call never reached it
        # the deny is the boundary's refusal, as a tool call's is (its one audit row)
        rows = [msgspec.json.decode(r[4]) for r in await d.services.store.audit_log_now()
                if r[3] in ("boundary.refused", "policy")]
        assert [(r["agent"], r["kind"], r["target"], r["task"] is not None)
                for r in rows] == [
            ("writer", "policy", "gpt-small (policy rule no long gpt)", True)], rows
        assert d.sup.parts.refusals.counts[("writer", "policy")] == 1
        # the sensitive model: its first call before the untrusted tool, freely; the
        # second after it, asked
        running = asyncio.ensure_future(run({"api": "messages", "model": "claude-small",
                                             "calls": 2, "tools": 1}))
        ask = await asyncio.wait_for(made.get(), 30)
        assert ask.subject == {"model": "claude-small", "endpoint": "/v1/messages",
                               "cost": 0.0, "why": "taint (after untrusted counting__bump)"}
        assert len(upstream.requests) == 2
        await d.dispatcher.call(Caller(via="socket"), "approvals.resolve",
                                {"id": ask.id, "decision": "approved"})
        assert await running == ["echo: call 1", "bumped 1", "echo: call 2"]
        assert made.empty()


async def read_in_no_task(d: Daemon) -> None:
    """The daemon started, and the reader's replica reads the untrusted fetcher over the
    worker link in a call naming no task: its incarnation's labels are tainted."""
    await asyncio.to_thread(d.start)
    read = await asyncio.to_thread(finished, d, submit_input(d, raw_call(
        FETCH["tool"], FETCH["arguments"])))
    assert read["output"]["result"]["content"][0]["text"] == made(
        "fetch", **FETCH["arguments"])


async def denied_at_the_gateway(d: Daemon) -> dict[str, Any]:
    """The reader's sensitive call at the gateway's /mcp, of no task either (two tasks
    running): a person is asked, naming the taint; denied, the client reads the tool's
    error. The ask."""
    env = await asyncio.to_thread(replica_env, d, "reader")
    async with two_running(d, "reader"), session(env["CORRAL_MCP_URL"],
                                                 env["CORRAL_MCP_TOKEN"]) as s:
        call = asyncio.ensure_future(s.call_tool(SEND["tool"], SEND["arguments"]))
        await wait_until_async(lambda: asks_of(d, "reader") or call.done())
        assert not call.done(), call.result()
        [ask] = asks_of(d, "reader")
        assert ask["subject"] == {**SEND, "policy": "taint (after untrusted pol__fetch)"}
        said = await asyncio.to_thread(d.cli, "approvals", "deny", ask["id"])
        assert said.returncode == 0, said.stderr
        result = await call
        assert result.is_error and text(result).startswith(
            "tool call pol__send_mail was denied by "), result
    return ask


@pytest.mark.deadline(180)
async def test_a_replicas_calls_of_no_task_are_tainted_at_every_door() -> None:
    """A call of no task is its replica's incarnation's: an untrusted tool's output read
    over the worker link (a `tools/call` naming no task) taints the incarnation, and its
    sensitive call at the gateway's /mcp, of no task either (two tasks running), asks a
    person owned by the incarnation; denied, the client reads the tool's error."""
    d = Daemon(shared_tmpdir(), FLEET + '\n[gateway]\nlisten = "127.0.0.1:0"\n')
    try:
        await read_in_no_task(d)
        ask = await denied_at_the_gateway(d)
        assert ask["task_id"].startswith("replica:reader#0:"), ask
    finally:
        await asyncio.to_thread(d.close)


def submit_input(d: Daemon, task_input: dict[str, Any]) -> str:
    task_id: str = d.ask("tasks.submit", {"agent": "reader", "input": task_input})["task_id"]
    return task_id


@pytest.mark.deadline(240)
def test_the_taint_outlives_a_daemon_restart_by_the_step_journal(daemon: Daemon) -> None:
    """The first attempt reads the fetcher's output (journaled as its step) and is lost
    with the daemon (stopped under it); the next daemon's attempt is given the fetcher's
    answer back from the step journal, which taints it again: its sensitive call asks."""
    d = daemon
    hold = d.dir / "hold"
    task_id = submit(d, FETCH, {"await": str(hold), "attempt": 1}, SEND)
    # its step handed to the journal (a graceful stop writes what was handed to it)
    wait_for(lambda: d.ask("stats.get")["tasks"]["steps"]["journaled"] == 1,
             "the fetch journaled")
    d.stop()
    d.start()
    [ask] = wait_for(lambda: d.ask("approvals.list")["asks"], "the next attempt's ask")
    assert (ask["task_id"], ask["attempt"]) == (task_id, 2)
    assert ask["subject"]["policy"] == "taint (after untrusted pol__fetch)"
    assert d.cli("approvals", "approve", ask["id"]).returncode == 0
    done = d.ask("tasks.get", {"task_id": task_id, "wait": True})
    assert done["attempts"][-1]["replayed"] == 1, done
    assert texts(done) == [(False, made("fetch", **FETCH["arguments"])),
                           (False, made("send_mail", **SEND["arguments"]))]
