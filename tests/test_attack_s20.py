"""An attacker's pass over what session 20's cuts touched (docs/security.md, session 20's
section): the Dispatcher's handlers and narrowed services, now looked up once a method and
kept; a refusal it re-raises without a local (a limited caller's "no such agent" worded
again for it); and the A2A door's answer to a new message, whose history is now the
message as the door read it rather than the bytes it kept. Real daemons, in this test's
loop, and real HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from corral import jsonrpc
from corral.daemon.caller import Caller
from corral.jsonrpc import RpcError
from corral.supervisor.errors import NoSuchAgent

from .daemon_harness import free_port, hello, in_process

OPERATOR = Caller(via="socket", uid=0)


async def _refused(d: Any, caller: Caller, method: str, params: Any) -> tuple[int, str]:
    with pytest.raises(RpcError) as e:
        await d.dispatcher.call(caller, method, params)
    return e.value.code, e.value.message


async def _outcomes(d: Any, method: str) -> list[str]:
    """The audit rows' outcomes of `method`, oldest first."""
    audit = await d.dispatcher.call(OPERATOR, "audit.list", {"limit": 100})
    return [e.outcome for e in audit.entries if e.method == method]


# -- the Dispatcher: a limited caller's refusal, worded again, in its answer and its row --

@pytest.mark.deadline(120)
async def test_a_limited_callers_refusal_names_no_agent_it_may_not_see(
        tmp_path: Path) -> None:
    """The attack: a token limited to `web-*` names an agent its glob matches that does
    not exist, to be told "did you mean" the nearest name of all the daemon's. The
    handler's refusal names the nearest of every agent (`wev-2` here, one letter away);
    the Dispatcher words it again for the caller, its agents alone, in the answer and in
    the audit row of the mutating call. Session 20 re-raised the refusal without keeping
    it in a local: the words of both must be as before."""
    async with in_process(tmp_path, hello("web-1111") + hello("wev-2")) as d:
        web = Caller(via="http", token="web", agents="web-*")
        told = NoSuchAgent("web-2", ["web-1111"]).message
        assert "wev" not in told
        for method in ("agents.restart", "agents.stop"):
            assert await _refused(d, web, method, {"names": ["web-2"]}) == (
                jsonrpc.NOT_FOUND, told), method
            # the row the operator reads says what the caller was told, no more
            assert (await _outcomes(d, method))[-1:] == [f"error: {told}"], method
        # the operator, who sees every agent, is told the nearest of all
        assert await _refused(d, OPERATOR, "agents.restart", {"names": ["web-2"]}) == (
            jsonrpc.NOT_FOUND, NoSuchAgent("web-2", ["web-1111", "wev-2"]).message)
        assert (await _outcomes(d, "agents.restart"))[-1] == \
            "error: " + NoSuchAgent("web-2", ["web-1111", "wev-2"]).message
        # and the limited caller's later refusal is its own again (nothing of the
        # operator's answer kept by the method's cached handler)
        assert await _refused(d, web, "agents.restart", {"names": ["web-2"]}) == (
            jsonrpc.NOT_FOUND, told)


@pytest.mark.deadline(120)
async def test_a_methods_kept_handler_holds_no_callers_view_and_sees_agents_added(
        tmp_path: Path) -> None:
    """The Dispatcher keeps each method's handler and its domain's services from its
    first call (session 20). What a caller sees is still decided at each call: a tenant's
    first call of agents.status fixes nothing for the next caller, the operator sees
    every agent, another tenant its own, and an agent added after the first call is in
    the next answer (the services are the daemon's own, not a copy of its agents)."""
    toml = "[tenants.acme]\n[tenants.other]\n"
    agents = hello("a-1", extra='tenant = "acme"\n') + hello("o-1", extra='tenant = "other"\n')
    async with in_process(tmp_path, agents, toml) as d:
        acme = Caller(via="http", token="acme-admin", tenant="acme")
        other = Caller(via="http", token="other-admin", tenant="other")

        async def names(caller: Caller) -> list[str]:
            status = await d.dispatcher.call(caller, "agents.status")
            return sorted(a.name for a in status.agents)

        assert await names(acme) == ["a-1"]          # the method's first call
        assert await names(OPERATOR) == ["a-1", "o-1"]
        assert await names(other) == ["o-1"]
        assert await _refused(d, other, "agents.describe", {"name": "a-1"}) == (
            jsonrpc.NOT_FOUND, NoSuchAgent("a-1", ["o-1"]).message)
        added = msgspec.json.decode(msgspec.json.encode(
            {"command": d.sup.agents["a-1"].spec.command, "tenant": "acme",
             "env": dict(d.sup.agents["a-1"].spec.env)}))
        await d.dispatcher.call(OPERATOR, "agents.add", {"agents": {"a-2": added}})
        assert await names(acme) == ["a-1", "a-2"]
        assert await names(other) == ["o-1"]
        assert await names(OPERATOR) == ["a-1", "a-2", "o-1"]


# -- the A2A door: a new message's answer, and the task read back -------------------------

async def _rpc(http: aiohttp.ClientSession, url: str, method: str, params: Any) -> Any:
    async with http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                    "params": params}) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    assert "result" in body, body
    return body["result"]


@pytest.mark.deadline(120)
async def test_an_a2a_answers_history_is_the_message_the_door_keeps_no_more(
        tmp_path: Path) -> None:
    """The attack: a client's message carries members the door does not know (a `kind`,
    a `secret` beside its parts), names in snake_case, and a data part and metadata of its
    own. Session 20 answers a new message's history from the message as the door read it
    (not the bytes it kept, decoded again): the answer must give what the task keeps and
    GetTask gives back, exactly: the unknown members in neither, the caller's own values
    (data, metadata: opaque) as sent, the taskId and contextId the task's whatever the
    message said of them."""
    port = free_port()
    toml = f'[http]\nlisten = "127.0.0.1:{port}"\nrate_per_minute = 0\n' \
           '[a2a]\nanonymous = ["hello"]\n'
    url = f"http://127.0.0.1:{port}/a2a/hello"
    sent = {"message_id": "m-s20", "role": "ROLE_USER", "kind": "message",
            "secret": "not kept", "context_id": "ctx-s20",
            "parts": [{"text": "hi", "secret": "nor this"},
                      {"data": {"snake_key": 1, "kind": "theirs"}}],
            "metadata": {"their_key": "kept"}, "extensions": ["urn:x"],
            "reference_task_ids": ["t-0"]}
    async with in_process(tmp_path, hello("hello"), toml) as d:
        async with aiohttp.ClientSession() as http:
            answer = await _rpc(http, url, "SendMessage", {"message": sent})
            task = answer["task"]
            got = await _rpc(http, url, "GetTask", {"id": task["id"]})
        assert task["contextId"] == "ctx-s20"
        first = task["history"][0]
        assert first == {
            "messageId": "m-s20", "role": "ROLE_USER",
            "parts": [{"text": "hi"}, {"data": {"snake_key": 1, "kind": "theirs"}}],
            "contextId": "ctx-s20", "taskId": task["id"],
            "metadata": {"their_key": "kept"}, "extensions": ["urn:x"],
            "referenceTaskIds": ["t-0"]}
        # the task read back gives the same first message, from the bytes it kept
        assert got["history"][0] == first
        assert "secret" not in msgspec.json.encode(answer).decode()
        kept = await d.dispatcher.call(OPERATOR, "tasks.get",
                                       {"task_id": task["id"], "input": True})
        assert "secret" not in msgspec.json.encode(kept.input).decode()
