"""A team's calls in a namespace of their own (methods/calls.py): `teams.call` starts one,
`calls.get`, `calls.list` and `calls.cancel` read and end it, over the socket's dispatcher
and REST alike; the task methods naming the team stay its aliases and see the same call;
a limited caller reaches only the calls of the teams it sees, each refusal said as for a
call that never was; the CLI's `corral teams call` and `corral teams calls` are their
fronts."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import msgspec
import pytest

from corral import methods as m
from corral.daemon.caller import Caller
from corral.daemon.tokens import tokens_of
from corral.jsonrpc import RpcError

from .daemon_harness import Daemon, free_port, in_process
from .test_teams import OPERATOR, agents_toml

TEAMS = ('[teams.pair]\nmode = "broadcast"\nmembers = ["pub1", "pub2"]\n'
         '[teams.sneak]\nmode = "broadcast"\nmembers = ["pub1", "sec1"]\n')


async def test_a_team_is_called_read_listed_and_cancelled_in_its_own_namespace(
        tmp_path: Path) -> None:
    port = free_port()
    async with in_process(tmp_path, agents_toml(tmp_path, "pub1 pub2 sec1"),
                          TEAMS + f'[http]\nlisten = "127.0.0.1:{port}"\n') as d:
        done = await d.dispatcher.call(OPERATOR, "teams.call", m.TeamsCall(
            name="pair", input=msgspec.Raw(b'{"x": 1}'), wait=60))
        assert done.status == "succeeded"
        assert done.output["pub2"]["output"] == {"who": "pub2", "got": {"x": 1}}
        info = await d.dispatcher.call(OPERATOR, "calls.get", m.CallsGet(
            call_id=done.task_id))
        assert (info.agent, info.status, sorted(s["step"] for s in info.progress["steps"])
                ) == ("pair", "succeeded", ["member:pub1", "member:pub2"])
        # the task methods are its aliases: the same call
        alias = await d.dispatcher.call(OPERATOR, "tasks.get", m.TasksGet(
            task_id=done.task_id))
        assert (alias.agent, alias.status, alias.output) == ("pair", "succeeded",
                                                             info.output)

        # a slow call: listed newest last, cancelled at once (before its driver first
        # ran: it ends so, kept, no step started; a call's running steps are cancelled
        # with it, test_teams.py::test_cancel_a_call_cancels_its_members_tasks)
        slow = await d.dispatcher.call(OPERATOR, "teams.call", m.TeamsCall(
            name="pair", input=msgspec.Raw(b'{"sleep_for": {"pub1": 30, "pub2": 30}}')))
        assert slow.status == "running"
        listed = await d.dispatcher.call(OPERATOR, "calls.list", m.CallsList(name="pair"))
        assert [t.task_id for t in listed.tasks] == [done.task_id, slow.task_id]
        ended = await d.dispatcher.call(OPERATOR, "calls.cancel", m.CallsCancel(
            call_id=slow.task_id))
        assert (ended.status, ended.error.message if ended.error else None) == (
            "cancelled", "cancelled")
        # (read back from the store: its driver is gone)
        assert (await d.dispatcher.call(OPERATOR, "calls.get", m.CallsGet(
            call_id=slow.task_id))).status == "cancelled"
        with pytest.raises(RpcError) as again:
            await d.dispatcher.call(OPERATOR, "calls.cancel", m.CallsCancel(
                call_id=slow.task_id))
        assert again.value.message == f"task {slow.task_id} already finished (cancelled)"

        # an id that is no call (a task's, a made-up one), and a name that is no team
        for method, params, said in (
                ("calls.get", m.CallsGet(call_id="nope"), "no such call: nope"),
                ("calls.cancel", m.CallsCancel(call_id="nope"), "no such call: nope"),
                ("teams.call", m.TeamsCall(name="pub1"), "no such team: pub1"),
                ("calls.list", m.CallsList(name="ghost"), "no such team: ghost")):
            with pytest.raises(RpcError) as refused:
                await d.dispatcher.call(OPERATOR, method, params)
            assert refused.value.message == said, method

        # REST: the routes the declarations give
        secret, _ = await tokens_of(d.services.store).create(
            "op", ["tasks:run", "tasks:read"], None, None)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {secret}"}
                                         ) as http:
            base = f"http://127.0.0.1:{port}/api/v1"
            async with http.post(f"{base}/teams/pair/calls?wait=60",
                                 json={"input": {"y": 2}}) as r:
                made = await r.json()
                assert (r.status, made["status"]) == (200, "succeeded"), made
            async with http.get(f"{base}/calls/{made['task_id']}") as r:
                got = await r.json()
                assert (r.status, got["agent"], got["output"]["pub1"]["output"]) == (
                    200, "pair", {"who": "pub1", "got": {"y": 2}})
            async with http.get(f"{base}/teams/pair/calls?limit=1") as r:
                page = await r.json()
                assert (r.status, [t["task_id"] for t in page["tasks"]]) == (
                    200, [made["task_id"]])
                assert "next" in page


async def test_a_limited_caller_reaches_only_the_calls_of_the_teams_it_sees(
        tmp_path: Path) -> None:
    async with in_process(tmp_path, agents_toml(tmp_path, "pub1 pub2 sec1"), TEAMS) as d:
        hidden = await d.dispatcher.call(OPERATOR, "teams.call", m.TeamsCall(
            name="sneak", input=msgspec.Raw(b"1"), wait=60))
        assert hidden.status == "succeeded"
        _, token = await tokens_of(d.services.store).create(
            "pub", ["tasks:run", "tasks:read"], "pub*", None)
        pub = Caller(via="http", token=token.name, scopes=token.scopes, agents=token.agents)
        mine = await d.dispatcher.call(pub, "teams.call", m.TeamsCall(
            name="pair", input=msgspec.Raw(b"2"), wait=60))
        assert mine.status == "succeeded"
        assert (await d.dispatcher.call(pub, "calls.get", m.CallsGet(
            call_id=mine.task_id))).agent == "pair"
        for method, params, said in (
                ("teams.call", m.TeamsCall(name="sneak"), "no such team: sneak"),
                ("calls.list", m.CallsList(name="sneak"), "no such team: sneak"),
                ("calls.get", m.CallsGet(call_id=hidden.task_id),
                 f"no such call: {hidden.task_id}"),
                ("calls.cancel", m.CallsCancel(call_id=hidden.task_id),
                 f"no such call: {hidden.task_id}")):
            with pytest.raises(RpcError) as refused:
                await d.dispatcher.call(pub, method, params)
            assert refused.value.message == said, method
        # nothing of the hidden call changed
        kept = await d.dispatcher.call(OPERATOR, "calls.get", m.CallsGet(
            call_id=hidden.task_id))
        assert kept.status == "succeeded"


def test_the_cli_calls_a_team_and_lists_its_calls(tmp_path: Path) -> None:
    d = Daemon(tmp_path, agents_toml(tmp_path, "pub1 pub2 sec1") + TEAMS)
    try:
        d.start()
        r = d.cli("teams", "call", "pair", "--input", '{"x": 1}', "--wait", "60", "--json",
                  timeout=90)
        made = json.loads(r.stdout)
        assert (r.returncode, made["status"], made["output"]["pub1"]["output"]) == (
            0, "succeeded", {"who": "pub1", "got": {"x": 1}})
        r = d.cli("teams", "calls", "pair", "--json")
        assert (r.returncode, [t["task_id"] for t in json.loads(r.stdout)["tasks"]]) == (
            0, [made["task_id"]])
        r = d.cli("teams", "calls", "pair")
        assert r.returncode == 0 and made["task_id"] in r.stdout and "succeeded" in r.stdout
        # the call is a task of the team too (the alias)
        assert d.json("task", made["task_id"])["agent"] == "pair"
        r = d.cli("teams", "call", "ghost")
        assert (r.returncode, r.stderr.strip()) == (1, "corral: no such team: ghost")
    finally:
        d.close()
