"""Labels belong to the data (docs/security.md#taint, DESIGN 28): the untrusted text a
task read is carried by what it hands on, so a sensitive tool needs a person whichever
owner the text reached it by. Each test is a way around a taint kept per task id that
sent the mail before (issue 86), and each now asks a person, naming the taint, and sends
once approved: a replica's call of no task before a task's call and after one, a spawned
child (`ctx.spawn` and `corral__AGENT`), an agent called at /mcp/corral, and a session's
next turn (across a daemon restart: the labels are kept in the task's home).

Real processes: a daemon, SDK agents (examples/misbehave.py) and the MCP server
tests/servers/policy_mcp.py, whose fetcher is untrusted and whose mail sender sensitive."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.daemon.caller import Caller
from corral.taskoptions import TaskOptions

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon, in_process, shared_tmpdir
from .servers.model_upstream import StandIn
from .test_boundary_calls import asks_of, finished, raw_call, replica_env, session, text
from .test_gateway_stdio import wait_until_async
from .test_model_gateway import fleet, provider_key, upstream  # noqa: F401 (fixtures)
from .test_policy import HERE, made, wait_for
from .test_questions import asks_made

AGENT = f"""
    command = ["{PY}", "{EXAMPLES}/misbehave.py"]
    env = {{ PYTHONPATH = "{ROOT}" }}
    tools = ["pol__*"]
    max_concurrent_tasks = 2
    stop_timeout = 10.0
"""
FLEET = textwrap.dedent(f"""
    [agents.reader]{AGENT.replace('"pol__*"', '"pol__*", "corral__writer"')}spawns = ["writer"]

    [agents.writer]{AGENT}
    [mcp_servers.pol]
    command = ["{PY}", "{HERE}/servers/policy_mcp.py"]
    tools_untrusted = ["fetch", "read_*"]
    tools_sensitive = ["send_mail", "pay"]

    [gateway]
    listen = "127.0.0.1:0"
""")
FETCH: dict[str, Any] = {"tool": "pol__fetch",
                         "arguments": {"url": "https://evil.example/page"}}
SEND: dict[str, Any] = {"tool": "pol__send_mail",
                        "arguments": {"to": "me@example.com", "body": "hi"}}
TAINT = "taint (after untrusted pol__fetch)"
FETCHED = {"content": [{"type": "text", "text": made("fetch", **FETCH["arguments"])}],
           "isError": False}
SENT = {"content": [{"type": "text", "text": made("send_mail", **SEND["arguments"])}],
        "isError": False}


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = Daemon(shared_tmpdir(), FLEET)
    try:
        d.start()
        yield d
    finally:
        d.close()


def submit(d: Daemon, agent: str, task_input: dict[str, Any], **more: Any) -> str:
    task_id: str = d.ask("tasks.submit", {"agent": agent, "input": task_input,
                                          **more})["task_id"]
    return task_id


def sequence(*calls: dict[str, Any]) -> dict[str, Any]:
    return {"do": "sequence", "calls": list(calls)}


def output(d: Daemon, task_id: str) -> Any:
    return finished(d, task_id)["output"]


def asked(d: Daemon, agent: str) -> dict[str, Any]:
    """The agent's one pending ask, once there is one."""
    [ask] = wait_for(lambda: asks_of(d, agent), f"an ask of {agent}'s")
    return ask


def approve(d: Daemon, ask: dict[str, Any]) -> None:
    said = d.cli("approvals", "approve", ask["id"])
    assert said.returncode == 0, said.stderr


def fetched(d: Daemon, n: int = 1) -> None:
    """The fetcher's answer journaled as a step (n of them in all)."""
    wait_for(lambda: d.ask("stats.get")["tasks"]["steps"]["journaled"] >= n,
             "the fetch journaled")


@pytest.mark.deadline(180)
def test_a_call_of_no_task_taints_the_next_task_of_its_replica(daemon: Daemon) -> None:
    """The replica reads the fetcher's output in a call that names no task; a task it
    runs afterwards calls the sender: its process read the text, so a person is asked."""
    d = daemon
    assert output(d, submit(d, "reader", raw_call(FETCH["tool"], FETCH["arguments"])))[
        "result"] == FETCHED
    task_id = submit(d, "reader", sequence(SEND))
    ask = asked(d, "reader")
    assert (ask["task_id"], ask["subject"]) == (task_id, {**SEND, "policy": TAINT})
    approve(d, ask)
    assert output(d, task_id) == [SENT]


@pytest.mark.deadline(180)
def test_a_tainted_task_taints_its_replicas_calls_of_no_task(daemon: Daemon) -> None:
    """A task reads the fetcher's output and runs on; meanwhile its replica calls the
    sender naming no task: the replica carries its running tasks' labels."""
    d = daemon
    hold = d.dir / "hold"
    reading = submit(d, "reader", sequence(FETCH, {"await": str(hold), "attempt": 1}))
    fetched(d)
    sending = submit(d, "reader", raw_call(SEND["tool"], SEND["arguments"]))
    ask = asked(d, "reader")
    assert ask["task_id"].startswith("replica:reader#0:"), ask
    assert ask["subject"] == {**SEND, "policy": TAINT}
    approve(d, ask)
    assert output(d, sending)["result"] == SENT
    hold.touch()
    assert output(d, reading) == [FETCHED]


@pytest.mark.deadline(180)
def test_a_spawned_child_is_given_its_parents_labels(daemon: Daemon) -> None:
    """The parent reads the fetcher's output, then spawns a writer (`ctx.spawn`) that
    calls the sender, and calls another as a tool (`corral__writer`): each child, of
    another agent and replica, asks."""
    d = daemon
    parent = submit(d, "reader", sequence(
        FETCH, {"spawn": "writer", "input": sequence(SEND)},
        {"tool": "corral__writer", "arguments": sequence(SEND)}))
    for _ in range(2):
        ask = asked(d, "writer")
        assert ask["subject"] == {**SEND, "policy": TAINT}
        assert ask["task_id"] != parent
        approve(d, ask)
        wait_for(lambda ask=ask: all(a["id"] != ask["id"] for a in asks_of(d, "writer")),
                 "the ask ended")
    fetch, spawned, called = output(d, parent)
    assert fetch == FETCHED
    assert (spawned["status"], spawned["output"]) == ("succeeded", [SENT])
    assert (called["isError"], json.loads(called["content"][0]["text"])) == (False, [SENT])
    assert asks_of(d, "reader") == []


@pytest.mark.deadline(180)
def test_a_parent_that_reads_a_childs_outcome_is_given_its_labels(daemon: Daemon) -> None:
    """A child reads the fetcher's output and returns it; its parent, which read nothing
    itself, waits for it (`ctx.wait`, and a `corral__writer` call's answer) and then
    calls the sender: each parent asks."""
    d = daemon
    waited = submit(d, "reader", sequence({"spawn": "writer", "input": sequence(FETCH)},
                                          SEND))
    ask = asked(d, "reader")
    assert (ask["task_id"], ask["subject"]) == (waited, {**SEND, "policy": TAINT})
    approve(d, ask)
    spawned, sent = output(d, waited)
    assert (spawned["output"], sent) == ([FETCHED], SENT)
    called = submit(d, "reader", sequence({"tool": "corral__writer",
                                           "arguments": sequence(FETCH)}, SEND))
    ask = asked(d, "reader")
    assert (ask["task_id"], ask["subject"]) == (called, {**SEND, "policy": TAINT})
    approve(d, ask)
    answer, sent = output(d, called)
    assert (json.loads(answer["content"][0]["text"]), sent) == ([FETCHED], SENT)


@pytest.mark.deadline(180)
async def test_an_agent_called_at_mcp_corral_is_given_the_callers_labels() -> None:
    """While a task of reader that read the fetcher's output runs, its replica calls
    agent writer at /mcp/corral (a call of no task: two may run): writer's task, on its
    own replica, is given reader's labels and asks before it sends."""
    d = Daemon(shared_tmpdir(), FLEET)
    try:
        await asyncio.to_thread(d.start)
        env = await asyncio.to_thread(replica_env, d, "reader")
        hold = d.dir / "hold"
        reading = await asyncio.to_thread(submit, d, "reader", sequence(
            FETCH, {"await": str(hold), "attempt": 1}))
        await asyncio.to_thread(fetched, d)
        async with session(env["CORRAL_MCP_URL"], env["CORRAL_MCP_TOKEN"], "/corral") as s:
            call = asyncio.ensure_future(s.call_tool("writer", sequence(SEND)))
            await wait_until_async(lambda: asks_of(d, "writer") or call.done())
            assert not call.done(), call.result()
            [ask] = asks_of(d, "writer")
            assert ask["subject"] == {**SEND, "policy": TAINT}
            await asyncio.to_thread(approve, d, ask)
            result = await call
            assert (result.is_error, json.loads(text(result))) == (False, [SENT])
        hold.touch()
        assert await asyncio.to_thread(output, d, reading) == [FETCHED]
    finally:
        await asyncio.to_thread(d.close)


def test_a_handed_task_is_never_kept_without_its_labels(daemon: Daemon) -> None:
    """A task accepted with labels handed on (writer, started at /mcp/corral by a replica
    that read the fetcher, its handle answered at once) has them in the state database
    whenever its row is there: read in one snapshot from the moment the row is written,
    so a kill -9 at any instant leaves no retry of it unlabelled (they were kept only
    after the submission was answered, and a crash in between lost them)."""
    from .test_attacks_newest import stateless
    env = replica_env(daemon, "reader")
    url, token = env["CORRAL_MCP_URL"], env["CORRAL_MCP_TOKEN"]
    read = stateless(url, token, "tools/call", {"name": FETCH["tool"],
                                                "arguments": FETCH["arguments"]})
    assert read["result"]["content"] == FETCHED["content"], read
    db = sqlite3.connect(f"file:{daemon.state / 'corral.db'}?mode=ro", uri=True,
                         isolation_level=None)
    try:
        def snapshot() -> tuple[list[Any], list[Any]]:
            db.execute("BEGIN")
            try:
                rows = db.execute("SELECT id FROM tasks WHERE agent = 'writer'").fetchall()
                labels = db.execute("SELECT key, label FROM labels WHERE key IN "
                                    "(SELECT id FROM tasks WHERE agent = 'writer')"
                                    ).fetchall()
            finally:
                db.execute("COMMIT")
            return rows, labels
        assert snapshot() == ([], [])
        never = daemon.dir / "never"
        handle = stateless(url + "/corral", token, "tools/call", {
            "name": "writer", "arguments": sequence({"await": str(never), "attempt": 1},
                                                    SEND)})
        assert handle["result"]["resultType"] == "task", handle
        rows, labels = wait_for(lambda: (got := snapshot())[0] and got, "writer's row")
        [(task_id,)] = rows
        assert labels == [(task_id, "pol__fetch")], labels
    finally:
        db.close()


@pytest.mark.deadline(240)
def test_a_sessions_next_turn_carries_its_label_across_a_restart(daemon: Daemon) -> None:
    """A turn of session s1 reads the fetcher's output and ends; the daemon restarts; the
    next turn of s1 asks before it sends, and a turn of another session does not."""
    d = daemon
    assert output(d, submit(d, "reader", sequence(FETCH), session="s1")) == [FETCHED]
    d.stop()
    d.start()
    turn = submit(d, "reader", sequence(SEND), session="s1")
    ask = asked(d, "reader")
    assert (ask["task_id"], ask["subject"]) == (turn, {**SEND, "policy": TAINT})
    approve(d, ask)
    assert output(d, turn) == [SENT]
    assert output(d, submit(d, "reader", sequence(SEND), session="s2")) == [SENT]
    assert asks_of(d, "reader") == []


async def test_a_sessions_next_turn_asks_before_its_first_sensitive_model_call(
        tmp_path: Path, upstream: StandIn) -> None:  # noqa: F811 - the fixture
    """A turn reads an untrusted tool's output and ends; the session's next turn's first
    call is of a sensitive model, through the model gateway: it waits for a person, the
    turn's labels read from its home before the call is judged."""
    toml = fleet(tmp_path, upstream.url, agent_extra='tools = ["counting__*"]',
                 claude_extra="sensitive = true") + textwrap.dedent(f"""
            [mcp_servers.counting]
            command = ["{PY}", "{HERE}/servers/counting_mcp.py", "{tmp_path}/server-count"]
            tools_untrusted = ["bump"]
        """)
    async with in_process(tmp_path, toml) as d:
        made = asks_made(d)

        async def turn(task_input: dict[str, Any]) -> Any:
            res = await d.sup.tasks.run("writer", task_input,
                                        TaskOptions(timeout=60, session="s1"))
            assert res.status == "succeeded", res
            return res.output["answers"]

        assert await turn({"api": "chat", "model": "gpt-small", "calls": 1, "tools": 1}
                          ) == ["echo: call 1", "bumped 1"]
        assert made.empty()
        running = asyncio.ensure_future(turn({"api": "messages", "model": "claude-small",
                                              "calls": 1}))
        ask = await asyncio.wait_for(made.get(), 30)
        assert ask.subject["why"] == "taint (after untrusted counting__bump)", ask.subject
        await d.dispatcher.call(Caller(via="socket"), "approvals.resolve",
                                {"id": ask.id, "decision": "approved"})
        assert await running == ["echo: call 1"]
