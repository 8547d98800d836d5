"""An attacker's pass over session 14's changes (docs/security.md keeps them): the
budgets' per-second fold (d7096703) against an agent's burst, calls of two models in
turn, a reload and a removal; a session's bounds and ttl computed above the stores
(426b2cff) against a client choosing its entry on the cluster's home; what a removal
forgets (decision 1980) against a tenant's budget. The agent is tests/raw_model_agent.py,
which hands its replica's token on as a hostile agent would; the upstream one on a
loopback port in this loop (tests/test_attacks_models.Hostile)."""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from corral import jsonrpc
from corral.daemon.caller import Caller
from corral.taskoptions import TaskOptions

from .conftest import ROOT
from .daemon_harness import PY, free_port, in_process
from .test_attacks_models import (  # noqa: F401 - the fixtures, shared
    CHAT,
    HERE,
    Hostile,
    asked,
    hostile,
    provider_key,
)
from .test_gateway_stdio import wait_until_async

OPERATOR = Caller(via="socket")


def budgeted(upstream: Hostile) -> str:
    """Agent raw (tests/raw_model_agent.py) at tokens_per_minute 20, and model m."""
    return textwrap.dedent(f"""
        [agents.raw]
        command = ["{PY}", "{HERE}/raw_model_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        retries = 0
        tokens_per_minute = 20

        [gateway]
        listen = "127.0.0.1:{free_port()}"

        [models.m]
        url = "{upstream.url}/v1"
        format = "openai"
        key_env = "CORRAL_TEST_PROVIDER_KEY"
    """)


async def remove_raw(d: Any, tmp_path: Path) -> str:
    """Agent raw removed by a reload; the configuration as it was, to add it again."""
    config = tmp_path / "corral.toml"
    text = config.read_text()
    config.write_text(text.replace(text[text.index("[agents.raw]"):text.index("[gateway]")],
                                   ""))
    assert (await d.dispatcher.call(OPERATOR, "config.reload", {})).removed == ["raw"]
    return text


async def test_a_removed_agents_call_answered_after_its_removal_leaves_it_no_usage(
        tmp_path: Path, hostile: Hostile) -> None:  # noqa: F811 - the fixture
    """An agent's model call held by its upstream past the agent's removal, answered
    then: the gateway counts it (the model's figures, the task's usage), and nothing of
    it is kept under the agent's name. It failed: the removal forgets the agent's
    budgets first (`forget_agent`), the call's end then counted it anew under the name
    (the fold's tally, kept for ever, /metrics' series of a removed agent), and the
    agent added again under that name started with 15 tokens of its 20 a minute used.
    A call's agent's budgets now count it only while that agent is the one of its name."""
    async with in_process(tmp_path, budgeted(hostile)) as d:
        task = d.sup.tasks.submit("raw", {"calls": [asked("hold")]}, TaskOptions(timeout=60))
        await asyncio.wait_for(hostile.one_held.wait(), 30)
        text = await remove_raw(d, tmp_path)
        hostile.release.set()
        await wait_until_async(lambda: d.services.gateway_status()["models"]["models"]["m"][
            "input_tokens"] == 10)
        assert (await d.sup.tasks.info(task.id)).usage.input_tokens == 10  # the task's
        (tmp_path / "corral.toml").write_text(text)
        assert (await d.dispatcher.call(OPERATOR, "config.reload", {})).added == ["raw"]
        st = msgspec.to_builtins(await d.dispatcher.call(OPERATOR, "stats.get", {}))
        assert st["agents"]["raw"]["usage"] is None


def test_a_session_begun_at_a_node_not_running_its_agent_is_refused_there_at_every_door(
        tmp_path: Path) -> None:
    """Node a runs chat (max_sessions 1), node b none: a session of chat begun at b is
    refused at each door that can begin one (the CLI's socket, REST), in words saying where
    to begin it, and a's one session stays the only one. It failed: b asked SUBMIT for no
    bound (`session_bounds` of an agent it does not know is none) and the default ttl, so a
    client choosing its entry kept two live sessions of an agent of one, the second for
    seven days (decision 1991). A turn of a live session still comes in at b (its ttl the
    hash's: tests/cluster/test_cluster_sessions.py). A2A at b serves no chat (no such
    agent), and a spawn names no session."""
    from .cluster.harness import STEADY_TTL, nodes
    from .cluster.test_cluster_sessions import both_alive, chat, done, submit
    from .contract.home import Tenant
    from .redis_harness import redis_server

    port = free_port()
    with redis_server(tmp_path / "redis") as redis, nodes(
            tmp_path, redis, {"a": chat("max_sessions = 1\n"),
                              "b": f'[http]\nlisten = "127.0.0.1:{port}"\n'},
            ttl=STEADY_TTL) as ns:
        both_alive(ns)
        assert done(ns["a"], submit(ns["a"], 1, "one"))["status"] == "succeeded"
        said = ("session two of agent chat not begun: node b does not run chat, so knows "
                "neither its max_sessions nor its session_ttl; begin it at a node that "
                "runs chat (`corral nodes`), its later turns at any node")
        r = ns["b"].cli("run", "chat", "--input", '{"turn": 1}', "--session", "two")
        assert (r.returncode, r.stderr) == (1, f"corral: {said}\n")
        made = ns["b"].cli("token", "create", "client", "--scope", "tasks:run")
        assert made.returncode == 0, made.stderr
        status, body = Tenant(port, made.stdout.strip())("POST", "/tasks", {
            "agent": "chat", "input": {"turn": 1}, "session": "two"})
        assert (status, body["detail"], body["code"]) == (409, said, jsonrpc.CONFLICT)
        assert [v["session"] for v in ns["a"].call("sessions.list", {"agent": "chat"})[
            "sessions"]] == ["one"]


def two_models(upstream: Hostile, tokens_per_minute: int) -> str:
    return budgeted(upstream).replace("tokens_per_minute = 20",
                                      f"tokens_per_minute = {tokens_per_minute}") + \
        textwrap.dedent(f"""
            [models.m2]
            url = "{upstream.url}/v1"
            format = "openai"
            key_env = "CORRAL_TEST_PROVIDER_KEY"
        """)


def of(model: str) -> dict[str, Any]:
    call = asked("whole")
    call["body"]["model"] = model
    return call


IN_FLIGHT = re.compile(r"budget exceeded: agent raw's tokens_per_minute is 45, (0|15|30) used "
                       r"and \d+ held by its calls in flight \(each its estimate until it "
                       r"ends\); room again as they end")


async def token_of(d: Any, model: str) -> str:
    """The replica's token, handed on by a task of one call (the agent's own, made)."""
    task = d.sup.tasks.submit("raw", {"calls": [of(model)], "tell": True},
                              TaskOptions(timeout=60))
    output = d.sup.tasks.output(task.id)
    token: str = (await anext(output)).data
    await d.sup.tasks.info(task.id, wait=True)
    done = await d.sup.tasks.outcome(task, decode=True)
    assert done.status == "succeeded" and done.output["answers"][0]["status"] == 200, (
        done.output, token)
    await output.aclose()
    return token


async def usage_of(d: Any) -> Any:
    st = msgspec.to_builtins(await d.dispatcher.call(OPERATOR, "stats.get", {}))
    return st["agents"]["raw"]["usage"]


async def test_a_burst_of_two_models_calls_is_counted_each_once_and_the_cap_misses_none(
        tmp_path: Path, hostile: Hostile) -> None:  # noqa: F811 - the fixture
    """The budgets' per-second fold (d7096703) against an agent holding its replica's
    token (handed on by its first task): at tokens_per_minute 45 and 15 tokens a call,
    six calls at once of two models in turn pass no more than the cap allows (each
    admission reads the fold's tally first), each passed counted once under its model and
    each refused in the budget's words; calls one at a time then, of the two models in
    turn within a second or two, are refused at 45 used, the figures 45 of three calls."""
    async with in_process(tmp_path, two_models(hostile, 45)) as d:
        token = await token_of(d, "m")
        url = d.services.gateway.url.rpartition("/mcp")[0] + CHAT
        headers = {"authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            async def call(model: str) -> tuple[int, Any]:
                async with http.post(url, json=of(model)["body"], headers=headers) as r:
                    return r.status, await r.json()

            models = ["m2", "m"] * 3
            burst = await asyncio.gather(*(call(m) for m in models))
            passed = ["m"] + [m for m, (status, _) in zip(models, burst, strict=True)
                              if status == 200]
            for status, said in burst:
                if status != 200:
                    message = said["error"]["message"]
                    assert status == 429 and IN_FLIGHT.fullmatch(message), message
            n = len(passed)
            assert 2 <= n <= 3 and hostile.calls == n, (passed, hostile.calls)
            usage = await usage_of(d)
            assert (usage["input_tokens"], usage["output_tokens"], usage["reports"],
                    usage["tokens_last_minute"]) == (10 * n, 5 * n, n, 15 * n)
            assert {m: u["reports"] for m, u in usage["models"].items()} == {
                m: passed.count(m) for m in set(passed)}
            while n < 3:  # (of the model the call before was not: the fold's next tally)
                model = "m" if passed[-1] == "m2" else "m2"
                status, said = await call(model)
                assert status == 200, (said, burst)
                passed.append(model)
                n += 1
            status, said = await call("m2")
            assert status == 429 and said["error"]["message"].startswith(
                "budget exceeded: agent raw's tokens_per_minute is 45, 45 used; room "
                "again at "), said
        assert hostile.calls == 3
        usage = await usage_of(d)
        assert (usage["input_tokens"], usage["output_tokens"], usage["reports"],
                usage["tokens_last_minute"]) == (30, 15, 3, 45)
        assert {m: (u["input_tokens"], u["reports"]) for m, u in usage["models"].items()
                } == {m: (10 * passed.count(m), passed.count(m)) for m in set(passed)}


async def test_a_replica_restarted_by_a_reload_keeps_its_model_calls(
        tmp_path: Path, hostile: Hostile) -> None:  # noqa: F811 - the fixture
    """A reload changing an agent (its budget) restarts its replica, which is given a
    new token: the new process's model call is answered. It failed 401 "not a corral
    model token": the gateway kept a replica's token by its label, and a rollout starts
    the new replica of the label before the old one exits, so the old process's exit
    (`forget_replica`, on ReplicaExit) took the new one's token away (its tools at /mcp
    take the same token). Tokens are now kept by the replica itself. The budget's fold
    is kept across the reload: what was used neither forgotten nor counted again,
    refused at the new cap."""
    async with in_process(tmp_path, two_models(hostile, 45)) as d:
        before = await token_of(d, "m")
        config = tmp_path / "corral.toml"
        config.write_text(config.read_text().replace("tokens_per_minute = 45",
                                                     "tokens_per_minute = 60"))
        assert (await d.dispatcher.call(OPERATOR, "config.reload", {})).changed == ["raw"]
        token = await token_of(d, "m2")
        assert token != before
        # what was used is kept across the reload, neither forgotten nor counted again
        url = d.services.gateway.url.rpartition("/mcp")[0] + CHAT
        async with aiohttp.ClientSession() as http:
            said = []
            for model in ("m", "m2", "m"):
                async with http.post(url, json=of(model)["body"], headers={
                        "authorization": f"Bearer {token}"}) as r:
                    said.append((r.status, await r.json()))
        assert [status for status, _ in said] == [200, 200, 429]
        assert said[2][1]["error"]["message"].startswith(
            "budget exceeded: agent raw's tokens_per_minute is 60, 60 used; room again at ")
        usage = await usage_of(d)
        assert (usage["input_tokens"], usage["output_tokens"], usage["reports"],
                usage["tokens_last_minute"]) == (40, 20, 4, 60)


async def test_an_agent_removed_and_added_again_does_not_reset_its_tenants_budget(
        tmp_path: Path, hostile: Hostile) -> None:  # noqa: F811 - the fixture
    """What a removal forgets (memory's maps, decision 1980; the budgets' `forget`) is the
    agent's own, never its tenant's: at the tenant's tokens_per_minute 20, a call of 15,
    the agent removed and added again under its name, its first call is admitted (15
    used before it) and its next refused at 30 used in the tenant budget's words. Removing and
    adding an agent again is no way round its tenant's budget."""
    toml = budgeted(hostile).replace("tokens_per_minute = 20\n", 'tenant = "acme"\n') + \
        'shared = true\n\n[tenants.acme]\ntokens_per_minute = 20\n'
    async with in_process(tmp_path, toml) as d:
        await token_of(d, "m")
        text = await remove_raw(d, tmp_path)
        config = tmp_path / "corral.toml"
        config.write_text(text)
        assert (await d.dispatcher.call(OPERATOR, "config.reload", {})).added == ["raw"]
        token = await token_of(d, "m")  # admitted: 15 used of 20
        url = d.services.gateway.url.rpartition("/mcp")[0] + CHAT
        async with aiohttp.ClientSession() as http, http.post(
                url, json=of("m")["body"], headers={"authorization": f"Bearer {token}"}) as r:
            assert r.status == 429
            said = (await r.json())["error"]["message"]
        assert said.startswith("budget exceeded: agent raw's tenant acme tokens_per_minute "
                               "is 20, 30 used; room again at "), said
        assert hostile.calls == 2


async def test_an_unbudgeted_agents_calls_of_two_models_in_turn_are_each_counted_once(
        tmp_path: Path, hostile: Hostile) -> None:  # noqa: F811 - the fixture
    """An agent of no budget is admitted without a look at its windows, so its calls of
    one second build the fold's tally (d7096703): six at once and four one at a time, of
    two models in turn within a second or two, are in its figures each once, under its
    own model (a tally of one second taking a call of another model, or one added twice,
    would show here)."""
    async with in_process(tmp_path, two_models(hostile, 0)) as d:
        token = await token_of(d, "m")
        url = d.services.gateway.url.rpartition("/mcp")[0] + CHAT
        headers = {"authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            async def call(model: str) -> int:
                async with http.post(url, json=of(model)["body"], headers=headers) as r:
                    return r.status

            assert await asyncio.gather(*(call(m) for m in ["m2", "m"] * 3)) == [200] * 6
            assert [await call(m) for m in ["m2", "m", "m2", "m2"]] == [200] * 4
        usage = await usage_of(d)
        assert (usage["input_tokens"], usage["output_tokens"], usage["reports"],
                usage["tokens_last_minute"]) == (110, 55, 11, 165)
        assert {m: (u["input_tokens"], u["reports"]) for m, u in usage["models"].items()
                } == {"m": (50, 5), "m2": (60, 6)}
        again = await usage_of(d)  # (a read adds what the tally held: once, not at each)
        assert (again["input_tokens"], again["reports"]) == (110, 11)
