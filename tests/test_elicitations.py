"""An MCP server's elicitation during an agent's task's tool call is a question of that
task in the inbox (issue 55 item 3, decision 680; docs/approvals.md#questions): the
server's message the prompt, its requestedSchema the schema, the server and the tool
named; the task waits; answered, the server has the answer as `accept`; declined, it has
`decline`; another tenant neither sees nor answers it; a call of no task is refused or
declined as before.

Real processes: the daemon in this loop, an SDK agent (examples/misbehave.py) calling
the fixture server's `ask_name` (tests/servers/conformance_fixtures.py), run twice: as a
2025-11-25 server (`--legacy`: elicitation/create in the middle of the call) and as a
2026-07-28 one (an input_required result); the person is `approvals.resolve`, as its
surfaces call it."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pytest
import pytest_asyncio

from corral import jsonrpc
from corral import methods as m
from corral.daemon.caller import Caller
from corral.daemon.tokens import tokens_of
from corral.supervisor.tasks.inbox import Ask, AskEnded

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, in_process
from .servers.conformance_fixtures import ASK_NAME_SCHEMA
from .test_gateway_stdio import wait_until_async
from .test_tenants import OPERATOR, refused
from .warmforks import sdk_toml

HERE = Path(__file__).parent
# the fixture server a fork of this process's MCP SDK server (tests/warmforks.py)
FIXTURES = f"{HERE}/servers/conformance_fixtures.py"
pytestmark = pytest.mark.usefixtures("warm_mcp_sdk")
SERVERS = {"legacy": "--legacy", "stateless": ""}


def fleet() -> str:
    servers = "".join(
        f'[mcp_servers.{name}]\ncommand = {sdk_toml(FIXTURES, *flag.split())}\nshared = true\n\n'
        for name, flag in SERVERS.items())
    return textwrap.dedent(f"""
        [agents.asker]
        command = ["{PY}", "{EXAMPLES}/misbehave.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tenant = "t"
        tools = ["legacy__*", "stateless__*"]
        retries = 1
        backoff_initial = 0.05

        # no attempt follows one of its tasks': a call made once at most, of no key
        [agents.once]
        command = ["{PY}", "{EXAMPLES}/misbehave.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tenant = "t"
        tools = ["legacy__*", "stateless__*"]
        retry_lost = 0

    """) + servers


TENANTS = "\n[tenants.t]\n\n[tenants.u]\n"


class Asker(NamedTuple):
    server: str
    d: Any  # the in-process daemon


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=list(SERVERS))
async def asker(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Asker]:
    """The fleet's daemon for the tests of one server that ask, answer and end their asks:
    each boot started the server, whose import of the MCP SDK is ~1 s of CPU; pytest runs
    the module's tests by this fixture's server, one daemon at once, and each test counts
    from its own start."""
    async with in_process(tmp_path_factory.mktemp(request.param), fleet(), TENANTS) as d:
        yield Asker(request.param, d)


def ask_name(server: str, greeting: str = "Hi") -> dict[str, Any]:
    return {"do": "tools", "tool": f"{server}__ask_name",
            "arguments": {"greeting": greeting}}


def asks_made(d: Any) -> asyncio.Queue[Ask]:
    """Each ask as the inbox makes it (pending), in order."""
    made: asyncio.Queue[Ask] = asyncio.Queue()
    d.sup.tasks.stream.subscribe(
        lambda e: made.put_nowait(e.ask) if e.ask.pending else None, AskEnded)
    return made


async def submit(d: Any, task_input: dict[str, Any], agent: str = "asker") -> str:
    submitted = await d.dispatcher.call(OPERATOR, "tasks.submit", msgspec.json.encode(
        {"agent": agent, "input": task_input}))
    task_id: str = submitted.task_id
    return task_id


async def finished(d: Any, task_id: str) -> tuple[Any, Any]:
    """The task's info once it ended, and its output."""
    info = await d.dispatcher.call(OPERATOR, "tasks.get", {"task_id": task_id, "wait": True})
    return info, msgspec.json.decode(info.output)


async def tenant_caller(d: Any, name: str, tenant: str) -> Caller:
    _, token = await tokens_of(d.services.store).create(name, sorted(m.SCOPES), None, None,
                                                        tenant)
    return Caller(via="http", token=token.name, scopes=token.scopes, tenant=token.tenant)


@pytest.mark.deadline(120)
@pytest.mark.asyncio(loop_scope="module")  # the loop of its server's daemon (`asker`)
async def test_a_servers_elicitation_is_a_question_answered_through_the_inbox(
        asker: Asker) -> None:
    server, d = asker
    made = asks_made(d)
    counted = (d.sup.tasks.elicitations.asked, d.sup.tasks.elicitations.replayed)
    task_id = await submit(d, ask_name(server))
    ask = await asyncio.wait_for(made.get(), 30)
    listed = (await d.dispatcher.call(OPERATOR, "approvals.list", {})).asks
    assert [(a.id, a.kind, a.task_id, a.tenant, a.key, a.subject) for a in listed] == [
        (ask.id, "question", task_id, "t", ask.key, {
            "prompt": "Hi: what is your name?", "schema": ASK_NAME_SCHEMA,
            "server": server, "tool": f"{server}__ask_name"})]
    assert ask.key.startswith(f"ask:elicit:{server}__ask_name:"), ask.key
    info = await d.dispatcher.call(OPERATOR, "tasks.get", {"task_id": task_id})
    assert (info.status, [a.id for a in info.asks]) == ("waiting", [ask.id])

    # another tenant's caller sees nothing of it and cannot answer it
    u = await tenant_caller(d, "tu", "u")
    assert (await d.dispatcher.call(u, "approvals.list", {})).asks == []
    assert await refused(d, u, "approvals.resolve", {
        "id": ask.id, "decision": "answered", "answer": {"name": "Eve"}}) == (
        jsonrpc.NOT_FOUND, f"no such ask: {ask.id}")
    # an answer that breaks the server's schema is refused, the ask still pending
    t = await tenant_caller(d, "tt", "t")
    assert await refused(d, t, "approvals.resolve", {
        "id": ask.id, "decision": "answered", "answer": {"name": 3}}) == (
        jsonrpc.INVALID_PARAMS,
        f"the answer does not fit ask {ask.id}'s schema: name: 3 is not of type "
        "'string'")
    ended = await d.dispatcher.call(t, "approvals.resolve", {
        "id": ask.id, "decision": "answered", "answer": {"name": "Ann"}})
    assert (ended.end, ended.data) == ("answered", {"name": "Ann"})

    done, output = await finished(d, task_id)
    assert done.status == "succeeded", done
    [result] = output
    assert result["content"][0]["text"] == "Hi, Ann!", result
    assert (d.sup.tasks.elicitations.asked - counted[0],
            d.sup.tasks.elicitations.replayed - counted[1]) == (1, 0)
    assert made.empty()


@pytest.mark.deadline(120)
@pytest.mark.asyncio(loop_scope="module")
async def test_each_elicitation_of_a_call_made_once_at_most_is_its_own_ask(
        asker: Asker) -> None:
    """A call no other attempt makes has no idempotency key to key its elicitation by
    (decision 1400): the same call made twice in a task is asked twice, neither answered
    by the other's answer."""
    server, d = asker
    made = asks_made(d)
    task_id = await submit(d, {**ask_name(server), "times": 2}, agent="once")
    keys = []
    for name in ("Ann", "Bob"):
        ask = await asyncio.wait_for(made.get(), 30)
        keys.append(ask.key)
        await d.dispatcher.call(OPERATOR, "approvals.resolve", {
            "id": ask.id, "decision": "answered", "answer": {"name": name}})
    done, output = await finished(d, task_id)
    assert done.status == "succeeded", done
    assert [r["content"][0]["text"] for r in output] == ["Hi, Ann!", "Hi, Bob!"]
    assert keys[0] != keys[1] and all(
        k.startswith(f"ask:elicit:{server}__ask_name:") for k in keys), keys
    assert made.empty()


@pytest.mark.deadline(120)
@pytest.mark.asyncio(loop_scope="module")
async def test_declined_the_server_sees_decline(asker: Asker) -> None:
    server, d = asker
    made = asks_made(d)
    task_id = await submit(d, ask_name(server, "Hello"))
    ask = await asyncio.wait_for(made.get(), 30)
    ended = await d.dispatcher.call(OPERATOR, "approvals.resolve", {
        "id": ask.id, "decision": "denied", "reason": "not telling"})
    assert (ended.end, ended.data) == ("denied", {"reason": "not telling"})
    done, output = await finished(d, task_id)
    assert done.status == "succeeded", done
    assert output[0]["content"][0]["text"] == "elicitation decline"


@pytest.mark.deadline(120)
@pytest.mark.asyncio(loop_scope="module")
async def test_a_retry_after_the_worker_is_killed_waits_on_the_same_ask(
        asker: Asker) -> None:
    server, d = asker
    made = asks_made(d)
    tasks = d.sup.tasks
    task_id = await submit(d, ask_name(server))
    ask = await asyncio.wait_for(made.get(), 30)
    [replica] = d.sup.agents["asker"].replicas
    os.kill(replica.pid, signal.SIGKILL)
    # the retry makes the same call, the server asks the same: the same ask, pending
    await wait_until_async(lambda: (t := tasks.active.get(task_id)) is not None
                           and t.attempt == 2 and t.status == "waiting", 30)
    assert [a.id for a in tasks.inbox.waiting_for(task_id)] == [ask.id]
    await d.dispatcher.call(OPERATOR, "approvals.resolve", {
        "id": ask.id, "decision": "answered", "answer": {"name": "Bo"}})
    done, output = await finished(d, task_id)
    assert done.status == "succeeded", done
    assert [a.outcome for a in done.attempts] == ["lost", "succeeded"]
    assert output[0]["content"][0]["text"] == "Hi, Bo!"
    assert made.empty()  # nobody was asked twice


@pytest.mark.deadline(120)
async def test_a_call_of_no_task_is_refused_or_declined_as_before(tmp_path: Path) -> None:
    async with in_process(tmp_path, fleet(), TENANTS) as d:
        made = asks_made(d)

        def call(server: str) -> Any:
            gateway = d.services.gateway
            return gateway.forward(gateway.identify(agent="asker"), "tools/call", {
                "name": f"{server}__ask_name", "arguments": {"greeting": "Yo"}}, None)
        said = await call("stateless")
        assert said["content"][0]["text"] == "elicitation decline", said
        # the SDK's server fails the call with the client's refusal of its request
        with pytest.raises(jsonrpc.RpcError) as e:
            await call("legacy")
        assert e.value.message == ("elicitation/create: corral does not offer elicitation "
                                   "(it runs unattended; see docs/decisions.md)")
        assert made.empty()


@pytest.mark.deadline(120)
async def test_an_agent_cannot_answer_its_tasks_elicitation_ahead(tmp_path: Path) -> None:
    """A task's call made through the gateway as its attempt, with an elicitation answer
    of the agent's own and no requestState (as a client that is no agent's may give,
    decision 661): refused before the server is called, no ask made; the same call without
    it has the server's question asked of a person, whose answer the server gets. Fails
    without replicas kept out of the unasked elicitation results (no refusal: the first
    call let past the seal, its question asked of the person all the same)."""
    answerer = textwrap.dedent(f"""
        [agents.answerer]
        command = ["{PY}", "{HERE}/gateway_answering_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tenant = "t"
        tools = ["stateless__*"]

        [gateway]
        listen = "127.0.0.1:0"
    """)
    ahead = {"name": {"action": "accept", "content": {"name": "Mallory"}}}
    call = {"tool": "stateless__ask_name", "arguments": {"greeting": "Hi"}}
    async with in_process(tmp_path, fleet() + answerer, TENANTS) as d:
        made = asks_made(d)
        before = calls_of(d, "stateless")
        submitted = await d.dispatcher.call(OPERATOR, "tasks.submit", msgspec.json.encode(
            {"agent": "answerer", "input": {"calls": [
                {**call, "inputResponses": ahead}, call]}}))
        task_id = submitted.task_id
        asked = asyncio.ensure_future(made.get())
        ended = asyncio.ensure_future(finished(d, task_id))
        await asyncio.wait([asked, ended], timeout=60,
                           return_when=asyncio.FIRST_COMPLETED)
        assert asked.done() and not ended.done()  # the second call's question
        ask = asked.result()
        assert (ask.task_id, ask.subject["prompt"]) == (task_id, "Hi: what is your name?")
        await d.dispatcher.call(OPERATOR, "approvals.resolve", {
            "id": ask.id, "decision": "answered", "answer": {"name": "Ann"}})
        done, output = await ended
        assert done.status == "succeeded", done
        assert output[0] == {"error": {"code": jsonrpc.INVALID_PARAMS, "message": (
            "invalid params: stateless__ask_name: inputResponses 'name' answers no input "
            "request corral relayed (no requestState came with it)")}}, output
        assert output[1]["result"]["content"][0]["text"] == "Hi, Ann!", output
        assert done.tool_calls == 1 and calls_of(d, "stateless") == before + 1
        assert made.empty()


def calls_of(d: Any, server: str) -> int:
    """The tools/calls corral has sent the server (its instances' count)."""
    return sum(int(s["calls"]) for s in d.sup.mcp.status() if s["name"] == server)


@pytest.mark.deadline(120)
async def test_a_task_waiting_on_an_elicitation_is_not_suspended(tmp_path: Path) -> None:
    """The server's call is in flight while it asks: no next attempt could take it up
    where it stopped, so past suspend_after (the test's clock moved 20 s, within the
    call's timeout) the task keeps its attempt, and the answer reaches the same call."""
    toml = fleet().replace("retries = 1\n", "retries = 1\nsuspend_after = 5\n", 1)
    async with in_process(tmp_path, toml, TENANTS, supervisor="manual_clock = true") as d:
        made = asks_made(d)
        task_id = await submit(d, ask_name("legacy"))
        ask = await asyncio.wait_for(made.get(), 30)
        clock = d.sup.tasks.clock
        due = {t for t in clock.timers if t.when <= clock.time() + 20}
        assert due  # its suspend_after's timer, which the move fires
        await d.dispatcher.call(OPERATOR, "daemon.clock", {"advance": 20})
        await wait_until_async(lambda: not due & clock.timers)
        info = await d.dispatcher.call(OPERATOR, "tasks.get", {"task_id": task_id})
        assert info.status == "waiting" and d.sup.tasks.suspensions.suspended == 0
        await d.dispatcher.call(OPERATOR, "approvals.resolve", {
            "id": ask.id, "decision": "answered", "answer": {"name": "Ann"}})
        done, output = await finished(d, task_id)
        assert (done.status, len(done.attempts)) == ("succeeded", 1), done
        assert output[0]["content"][0]["text"] == "Hi, Ann!"
