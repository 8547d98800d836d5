"""The model gateway (docs/models.md): agents' model calls through corral with corral's
key, each call of a task's attempt a step of it.

Real parts throughout: the daemon in this loop, an agent process using the real `openai`
and `anthropic` client libraries configured by the environment corral gives it
(tests/model_agent.py), and a stand-in provider on a loopback port speaking both wire
formats, streaming included, that keeps every request it had
(tests/servers/model_upstream.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import textwrap
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import pytest_asyncio

from corral import methods as m
from corral.daemon.caller import Caller
from corral.taskoptions import TaskOptions

from .conftest import ROOT
from .daemon_harness import PY, config_text, free_port, in_process
from .servers.model_upstream import USAGE_IN, USAGE_OUT, StandIn, last_text
from .test_gateway_stdio import wait_until_async
from .warmforks import agent_toml

HERE = Path(__file__).parent
KEY = "sk-provider-SECRET-0123456789abcdef"  # the provider's key: corral's alone
ANTHROPIC_KEY = "sk-ant-provider-SECRET-fedcba9876543210"
TRACED = "[tracing]\nexport_interval = 0.05\n"
OPERATOR = Caller(via="socket")
# a test that kills the worker starts it again: its client library imported once, by a
# zygote, and each start a fork of it (decision 963), not ~0.7 s (openai) or ~1.5 s
# (anthropic) of CPU again
OPENAI = 'preload = ["openai"]'
UNAUTHORIZED = ("unauthorized: not a corral model token (corral gives each agent replica "
                "its own, as OPENAI_API_KEY and ANTHROPIC_API_KEY)")


@pytest.fixture
async def upstream() -> AsyncIterator[StandIn]:
    stand_in = StandIn()
    await stand_in.start()
    try:
        yield stand_in
    finally:
        await stand_in.close()


# The model tests' agents' heartbeat, past the tests' daemon's: a task's thread importing
# a client library (or encoding a body of megabytes) holds the GIL nearly all the time,
# and on a loaded host the main thread answered the daemon's ping seconds late; taken for
# hung, its attempt was lost and the retry made its failed or cut call again (nothing of
# such a call is journaled), a call the upstream then had twice
# (test_a_worker_silent_past_the_daemons_heartbeat_keeps_its_attempt)
HEARTBEAT = 30.0
# what the agents' server imports and makes once for its forks (tests/model_clients.py)
AGENTS_PRELOAD = ("tests.model_clients",)


def fleet(tmp: Path, upstream: str, agent_extra: str = "", models_extra: str = "",
          claude_extra: str = "", forked: bool = True) -> str:
    """`forked`: the agent a fork of the worker's agents' server, which imported both
    clients once (seconds of CPU at each start); its replica's pid is then a launcher's,
    which passes SIGTERM and SIGINT on and takes the fork with it when killed, and which
    a SIGSTOP stops alone. An agent of corral's own zygote (`preload`) is started as
    written."""
    (tmp / "anthropic.key").write_text(ANTHROPIC_KEY + "\n")
    agent = HERE / "model_agent.py"
    command = agent_toml(agent, *AGENTS_PRELOAD) \
        if forked and "preload" not in agent_extra else json.dumps([PY, str(agent)])
    return textwrap.dedent(f"""
        [agents.writer]
        command = {command}
        # (SSL_CERT_FILE set, and empty: the agent's clients speak plain HTTP to corral,
        # and each client OpenSSL made read the system's CA bundle, ~45 ms of CPU, one a
        # model call)
        env = {{ PYTHONPATH = "{ROOT}", PROVIDER_KEY_SEEN = "no", SSL_CERT_FILE = "" }}
        retries = 1
        backoff_initial = 0.05
        heartbeat_timeout = {HEARTBEAT}
        {agent_extra}

        [gateway]
        listen = "127.0.0.1:{free_port()}"

        [models.gpt-small]
        url = "{upstream}/v1"
        format = "openai"
        key_env = "CORRAL_TEST_PROVIDER_KEY"
        {models_extra}

        [models.claude-small]
        url = "{upstream}"
        format = "anthropic"
        key_file = "{tmp}/anthropic.key"
        model = "claude-upstream-name"
        {claude_extra}
    """)


@pytest.fixture(autouse=True)
def provider_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's own environment holds the key (key_env); the agent's never does."""
    monkeypatch.setenv("CORRAL_TEST_PROVIDER_KEY", KEY)


async def run_task(d: Any, task_input: dict[str, Any]) -> Any:
    return await d.sup.tasks.run("writer", task_input, TaskOptions(timeout=60))


class Shared(NamedTuple):
    d: Any  # the in-process daemon
    upstream: StandIn
    tmp: Path  # its directory


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Shared]:
    """The plain fleet's daemon and upstream for the tests that count from their own
    start: its worker imports each client library once (~0.7 s of CPU for openai, ~1.5 s
    for anthropic), not again in each test's worker."""
    tmp = tmp_path_factory.mktemp("shared")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CORRAL_TEST_PROVIDER_KEY", KEY)  # (provider_key is each test's)
        stand_in = StandIn()
        await stand_in.start()
        try:
            # (its agent started once, as written: a test stops it by its pid)
            async with in_process(tmp, fleet(tmp, stand_in.url, forked=False)) as d:
                yield Shared(d, stand_in, tmp)
        finally:
            await stand_in.close()


def model_stats(d: Any, model: str) -> Counter[str]:
    """A model's counts in the gateway's status: 0 for a model not called yet (the status
    names a model from its first call, and the shared daemon's tests run in any order)."""
    return Counter(d.services.gateway_status()["models"]["models"].get(model, {}))


@pytest.mark.asyncio(loop_scope="module")  # the loop of the shared daemon (`shared`)
async def test_an_agents_client_reaches_the_upstream_through_corral_with_corrals_key(
        shared: Shared) -> None:
    """Each endpoint, whole and streamed, by the real client library: the answer as the
    upstream gave it, the upstream sent corral's key (the model's own, of its format),
    the agent's variables pointing at corral, the usage read from the upstream's answer
    (one daemon and one agent for the six: a client library's import is seconds)."""
    d, upstream = shared.d, shared.upstream
    for api, model, key in (("chat", "gpt-small", KEY), ("responses", "gpt-small", KEY),
                            ("messages", "claude-small", ANTHROPIC_KEY)):
        for stream in (False, True):
            before = len(upstream.requests)
            res = await run_task(d, {"api": api, "model": model, "calls": 2,
                                     "stream": stream})
            assert res.status == "succeeded", res
            assert res.output["answers"] == ["echo: call 1", "echo: call 2"], \
                (api, stream)
            made = upstream.requests[before:]
            assert [r["key"] for r in made] == [key, key]
            assert [r["body"].get("stream", False) for r in made] == [stream, stream]
            if model == "claude-small":  # the upstream's name of it, as configured
                assert {r["body"]["model"] for r in made} == {"claude-upstream-name"}
            usage = (await d.sup.tasks.info(res.task_id)).usage
            assert usage is not None
            assert (usage.input_tokens, usage.output_tokens) == (2 * USAGE_IN,
                                                                 2 * USAGE_OUT)
    env = res.output["env"]
    assert env["OPENAI_BASE_URL"].endswith("/v1")
    assert env["OPENAI_API_KEY"] == env["ANTHROPIC_API_KEY"] != KEY


@pytest.mark.asyncio(loop_scope="module")  # the loop of the shared daemon (`shared`)
async def test_a_worker_silent_past_the_daemons_heartbeat_keeps_its_attempt(
        shared: Shared) -> None:
    """The model tests' agent stopped while its call is held at the upstream, for twice
    the tests' daemon's heartbeat_timeout, as a loaded host's worker importing a client
    library was silent: the agent's own heartbeat_timeout (HEARTBEAT) keeps it, and its
    task runs in one attempt, the upstream having the call once. Taken for hung, its
    attempt was lost and the retry made a failed or cut call again: CI's upstream had
    test_the_agent_never_sees_the_provider_key's 401 twice, and test_model_usage counted
    its stalled stream twice."""
    d, upstream = shared.d, shared.upstream
    replica = d.sup.agents["writer"].replicas[0]
    pid, before = replica.pid, len(upstream.requests)
    upstream.release.clear()
    task = d.sup.tasks.submit("writer", {"api": "chat", "model": "gpt-small",
                                         "texts": ["hold"]}, TaskOptions(timeout=60))
    await wait_until_async(lambda: len(upstream.requests) > before)
    os.kill(pid, signal.SIGSTOP)  # (its call in flight: the task's attempt is running)
    try:  # the fault itself: a silence past the daemon's heartbeat_timeout
        await asyncio.sleep(2 * d.sup.tuning.heartbeat_timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):  # (taken for hung: killed)
            os.kill(pid, signal.SIGCONT)
        upstream.release.set()
    info = await d.sup.tasks.info(task.id, wait=True)
    assert [(a.outcome, a.error) for a in info.attempts] == [("succeeded", None)]
    assert [last_text(r["body"]) for r in upstream.requests[before:]] == ["hold"]
    assert replica.pid == pid


def lines_of(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.mark.parametrize(("api", "model", "stream"), [("chat", "gpt-small", False),
                                                      ("messages", "claude-small", True)])
async def test_a_retry_after_a_worker_kill_makes_no_model_call_twice(
        tmp_path: Path, upstream: StandIn, api: str, model: str, stream: bool) -> None:
    """3 calls, the worker SIGKILLed after the 3rd: its retry is answered from the task's
    steps (the same answers, a stream as the same stream), the upstream has each call
    once, and the task's usage counts each once."""
    library = "anthropic" if api == "messages" else "openai"
    toml = fleet(tmp_path, upstream.url, agent_extra=f'preload = ["{library}"]')
    async with in_process(tmp_path, toml, TRACED) as d:
        res = await run_task(d, {"api": api, "model": model, "calls": 4, "stream": stream,
                                 "stop_after": 3, "marker": str(tmp_path / "marker")})
        assert res.status == "succeeded", res
        assert res.output["answers"] == [f"echo: call {i}" for i in range(1, 5)]
        assert res.output["attempt"] == 2
        sent = [last for r in upstream.requests
                for last in [r["body"]["messages"][-1]["content"]]]
        assert sent == ["call 1", "call 2", "call 3", "call 4"]  # none twice
        first, second = res.attempts
        assert first.outcome == "lost" and second.outcome == "succeeded"
        assert second.replayed == 3
        assert d.sup.stats.cold_fallbacks == 0  # both starts forks of the preload
        info = await d.sup.tasks.info(res.task_id)
        assert info.usage is not None
        assert (info.usage.input_tokens, info.usage.output_tokens) == (4 * USAGE_IN,
                                                                       4 * USAGE_OUT)
        stats = d.services.gateway_status()["models"]
        assert (stats["models"][model]["calls"], stats["models"][model]["replayed"]) == (7, 3)
        assert stats["unattributed"] == 0
        # every call a span under its attempt, by the GenAI conventions; the retry's
        # first three marked replayed
        view = await d.dispatcher.call(OPERATOR, "traces.get", {"task_id": res.task_id})
        assert isinstance(view, m.TraceView)
        runs = {s.attributes["corral.attempt"]: s.span_id for s in view.spans
                if s.name == "task/run writer"}
        calls = sorted((s.attributes["corral.attempt"],
                        bool(s.attributes.get("corral.step.replayed")),
                        s.parent_id == runs[s.attributes["corral.attempt"]],
                        s.attributes["gen_ai.operation.name"],
                        s.attributes["gen_ai.request.model"],
                        s.attributes.get("gen_ai.usage.input_tokens"))
                       for s in view.spans if s.name == f"chat {model}")
        live, replayed = (1, False, True, "chat", model, USAGE_IN), \
            (2, True, True, "chat", model, None)
        assert calls == [live, live, live, (2, False, True, "chat", model, USAGE_IN),
                         replayed, replayed, replayed]


async def test_model_and_tool_calls_of_a_task_are_one_sequence_replayed_after_a_kill(
        tmp_path: Path, upstream: StandIn) -> None:
    """model, tool, model, tool, model — the worker SIGKILLed after its 3rd model call
    and 2nd tool call: the retry makes none of them again (the upstream and the tool
    server each had every call once), its budget counts each model call once, its tool
    budget each tool call once."""
    toml = fleet(tmp_path, upstream.url, agent_extra=f'tools = ["counting__*"]\n{OPENAI}') + \
        textwrap.dedent(f"""
            [mcp_servers.counting]
            command = ["{PY}", "{HERE}/servers/counting_mcp.py", "{tmp_path}/server-count"]
        """)
    async with in_process(tmp_path, toml) as d:
        res = await run_task(d, {"api": "chat", "model": "gpt-small", "calls": 4,
                                 "tools": 2, "stop_after": 3,
                                 "marker": str(tmp_path / "marker")})
        assert res.status == "succeeded", res
        assert res.output["answers"] == ["echo: call 1", "bumped 1", "echo: call 2",
                                         "bumped 2", "echo: call 3", "echo: call 4"]
        sent = [r["body"]["messages"][-1]["content"] for r in upstream.requests]
        assert sent == ["call 1", "call 2", "call 3", "call 4"]
        assert (tmp_path / "server-count").read_text().split() == ["1", "2"]
        assert res.attempts[1].replayed == 5
        info = await d.sup.tasks.info(res.task_id)
        assert info.tool_calls == 2
        assert info.usage is not None and info.usage.input_tokens == 4 * USAGE_IN


async def test_an_agent_running_two_tasks_at_once_names_its_attempt_or_is_unattributed(
        tmp_path: Path, upstream: StandIn) -> None:
    """Two tasks at a time: a call at the attempt's address is that attempt's (journaled,
    replayed after the kill, the upstream has it once); a call at the replica's address
    is no task's (served, counted unattributed, made again by the retry)."""
    toml = fleet(tmp_path, upstream.url, agent_extra=f"max_concurrent_tasks = 2\n{OPENAI}")
    async with in_process(tmp_path, toml) as d:
        task = {"api": "chat", "model": "gpt-small", "calls": 2, "stop_after": 1}
        named = await run_task(d, {**task, "by_address": True, "say": "named",
                                   "marker": str(tmp_path / "m1")})
        plain = await run_task(d, {**task, "say": "plain", "marker": str(tmp_path / "m2")})
        assert named.output["answers"] == ["echo: named 1", "echo: named 2"]
        assert plain.output["answers"] == ["echo: plain 1", "echo: plain 2"]
        assert named.attempts[1].replayed == 1
        sent = [r["body"]["messages"][-1]["content"] for r in upstream.requests]
        assert sent == ["named 1", "named 2", "plain 1", "plain 1", "plain 2"]
        stats = d.services.gateway_status()["models"]
        assert stats["unattributed"] == 3
        assert (await d.sup.tasks.info(plain.task_id)).usage is None  # its agent's alone
        # an address naming an attempt that is not running on the replica: refused
        res = await run_task(d, {"api": "chat", "model": "gpt-small", "calls": 1,
                                 "by_address": True, "forge": named.task_id})
        (forged,) = res.output["answers"]
        assert (forged["error"], forged["status"]) == ("NotFoundError", 404)
        assert f"attempt 1 of task {named.task_id} is not running on writer#0" \
            in forged["message"]


async def _third_refused(d: Any, upstream: StandIn, api: str, model: str) -> tuple[
        Any, dict[str, Any]]:
    """A task of three calls whose budget takes two: the task succeeds, its first two
    calls answered, the third refused with the client's RateLimitError (429), the
    upstream reached twice. Its result and the third's refusal."""
    res = await run_task(d, {"api": api, "model": model, "calls": 3})
    assert res.status == "succeeded", res
    first, second, third = res.output["answers"]
    assert (first, second) == ("echo: call 1", "echo: call 2")
    assert (third["error"], third["status"]) == ("RateLimitError", 429)
    assert upstream.calls() == 2
    return res, third


async def test_a_call_past_a_token_budget_is_refused_naming_the_budget(
        tmp_path: Path, upstream: StandIn) -> None:
    """tokens_per_minute 20 and 15 tokens a call: the 3rd call is refused in the
    provider's format (the client raises its RateLimitError) naming the budget, and
    never reaches the upstream."""
    toml = fleet(tmp_path, upstream.url, agent_extra="tokens_per_minute = 20")
    async with in_process(tmp_path, toml) as d:
        res, third = await _third_refused(d, upstream, "chat", "gpt-small")
        assert "budget exceeded: agent writer's tokens_per_minute is 20, 30 used; room " \
               "again at " in third["message"]
        usage = (await d.sup.tasks.info(res.task_id)).usage
        assert usage is not None and usage.input_tokens + usage.output_tokens == 30
        # read by the SDK from OpenAI's error body ({"error": {"message": ...}})
        assert third["message"].startswith("Error code: 429 - budget exceeded: ")


async def test_a_call_past_its_tenants_token_budget_is_refused_naming_it(
        tmp_path: Path, upstream: StandIn) -> None:
    """The tenant's tokens_per_minute 20, its agent with no budget of its own, 15 tokens
    a call: the 3rd call is refused naming the tenant's budget, never reaching the
    upstream. (Between tasks the budget holds the tenant's queued tasks, as every
    budget does: docs/tenants.md.)"""
    toml = fleet(tmp_path, upstream.url, agent_extra='tenant = "acme"',
                 models_extra="shared = true") + "\n[tenants.acme]\ntokens_per_minute = 20\n"
    async with in_process(tmp_path, toml) as d:
        res, third = await _third_refused(d, upstream, "chat", "gpt-small")
        assert third["message"].startswith(
            "Error code: 429 - budget exceeded: agent writer's tenant acme tokens_per_minute "
            "is 20, 30 used; room again at "), third["message"]
        usage = (await d.sup.tasks.info(res.task_id)).usage
        assert usage is not None and usage.input_tokens + usage.output_tokens == 30
        stats = d.services.gateway_status()["models"]["models"]["gpt-small"]
        assert (stats["calls"], stats["refused"]) == (2, 1)


async def test_a_call_past_an_agents_cost_budget_is_refused_naming_it(
        tmp_path: Path, upstream: StandIn) -> None:
    """max_cost_usd_per_day 0.0002 and a call costing 0.000105 at the model's prices
    (10 tokens in at 3.0, 5 out at 15.0 a million): the 3rd Messages call is refused in
    Anthropic's format (its client raises its RateLimitError) naming the budget, never
    reaching the upstream."""
    toml = fleet(tmp_path, upstream.url, agent_extra="max_cost_usd_per_day = 0.0002",
                 claude_extra="input_usd_per_mtok = 3.0\noutput_usd_per_mtok = 15.0")
    async with in_process(tmp_path, toml) as d:
        res, third = await _third_refused(d, upstream, "messages", "claude-small")
        assert "budget exceeded: agent writer's max_cost_usd_per_day is 0.0002, 0.00021 " \
               "used; room again at " in third["message"]
        # read by the SDK from Anthropic's error body ({"type": "error", "error": {...}})
        assert third["message"].startswith("Error code: 429 - {'type': 'error', ")
        usage = (await d.sup.tasks.info(res.task_id)).usage
        assert usage is not None
        assert usage.cost_usd == pytest.approx(2 * (USAGE_IN * 3.0 + USAGE_OUT * 15.0) / 1e6)


async def test_another_tenants_model_and_another_agents_are_refused(
        tmp_path: Path, upstream: StandIn) -> None:
    toml = fleet(tmp_path, upstream.url) + textwrap.dedent(f"""
        [tenants.acme]

        [models.acme-only]
        url = "{upstream.url}/v1"
        format = "openai"
        tenant = "acme"

        [models.for-others]
        url = "{upstream.url}/v1"
        format = "openai"
        agents = ["reviewer-*"]
    """)
    async with in_process(tmp_path, toml) as d:
        res = await run_task(d, {"api": "chat", "model": "acme-only", "calls": 1})
        (theirs,) = res.output["answers"]
        assert (theirs["error"], theirs["status"]) == ("NotFoundError", 404)
        assert "model 'acme-only' is not served by corral to agent writer (its models: " \
               "claude-small, for-others, gpt-small)" in theirs["message"]
        res = await run_task(d, {"api": "chat", "model": "for-others", "calls": 1})
        (not_mine,) = res.output["answers"]
        assert (not_mine["error"], not_mine["status"]) == ("PermissionDeniedError", 403)
        assert "model for-others is not for agent writer (models.for-others.agents: " \
               "reviewer-*)" in not_mine["message"]
        res = await run_task(d, {"api": "messages", "model": "gpt-small", "calls": 1})
        (wrong,) = res.output["answers"]
        assert (wrong["error"], wrong["status"]) == ("BadRequestError", 400)
        assert "model gpt-small speaks the openai format, not that of /v1/messages" \
            in wrong["message"]
        assert upstream.calls() == 0


async def test_the_agent_never_sees_the_provider_key(tmp_path: Path,
                                                     upstream: StandIn) -> None:
    """Not in its environment (/proc), not in what corral writes (logs, the state
    database and its journal of answers), not in any answer: an upstream's error that
    quotes the key it was sent reaches the agent with the key hidden."""
    async with in_process(tmp_path, fleet(tmp_path, upstream.url)) as d:
        res = await run_task(d, {"api": "chat", "model": "gpt-small",
                                 "texts": ["hello", "status 401"]})
        assert res.status == "succeeded", res
        hello, failed = res.output["answers"]
        assert hello == "echo: hello"
        assert (failed["error"], failed["status"]) == ("AuthenticationError", 401)
        assert "Incorrect API key provided: ***. (stand-in 401)" in failed["message"]
        res2 = await run_task(d, {"api": "messages", "model": "claude-small",
                                  "texts": ["status 401"]})
        assert "Incorrect API key provided: ***." in res2.output["answers"][0]["message"]
        # the upstream had the real keys, each call once (a task's lost attempt, retried,
        # makes its failed call again)
        assert [r["key"] for r in upstream.requests] == [KEY, KEY, ANTHROPIC_KEY], \
            [(a.outcome, a.error) for a in (*res.attempts, *res2.attempts)]
        # its whole environment as it saw it (/proc/PID/environ holds its process title
        # since the SDK set it), and every answer
        environ = res.output["env"]
        assert environ["OPENAI_API_KEY"] == environ["CORRAL_MCP_TOKEN"]
        for key in (KEY, ANTHROPIC_KEY):
            assert key not in repr(res.output) + repr(res2.output)
        await d.sup.tasks.steps.journal.stored()
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert KEY.encode() not in data and ANTHROPIC_KEY.encode() not in data, path


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(("api", "model"), [("chat", "gpt-small"),
                                            ("messages", "claude-small")])
async def test_a_stream_cut_by_the_upstream_is_cut_for_the_agent_and_not_journaled(
        shared: Shared, api: str, model: str) -> None:
    """The cut stream is counted too (docs/models.md#usage): Messages' by what its
    `message_start` said (10 in, 1 out), Chat Completions' (no usage before its end) by
    the estimate: its request's bytes / 4 in, and out a token for each of its two
    events passed (the role's, empty) or each four bytes of their text ("echo: ", 2)."""
    d, log = shared.d, shared.tmp / "state" / "logs" / "writer.log"
    logged, before = len(lines_of(log)), model_stats(d, model)
    res = await run_task(d, {"api": api, "model": model, "stream": True,
                             "texts": ["cut", "after"]})
    assert res.status == "succeeded", res
    cut, after = res.output["answers"]
    assert isinstance(cut, dict) and cut["status"] is None, cut  # a broken stream
    assert after == "echo: after"
    stats = model_stats(d, model)
    assert (stats["calls"] - before["calls"], stats["cut"] - before["cut"],
            stats["errors"] - before["errors"]) == (2, 1, 0)
    usage = (await d.sup.tasks.info(res.task_id)).usage
    assert usage is not None
    cut_in, cut_out = usage.input_tokens - USAGE_IN, usage.output_tokens - USAGE_OUT
    if api == "messages":
        assert (cut_in, cut_out) == (USAGE_IN, 1)
    else:  # the request: {"messages": [...], "model": ..., "stream": true}
        assert 15 <= cut_in <= 40 and cut_out == 1 + 2, usage
    said = (f"model {model}: the upstream's stream failed",
            f"model {model}: the upstream's stream ended before its last event")
    # (the log is written as it comes: this test's part of it, from its start)
    await wait_until_async(lambda: any(w in lines_of(log)[logged:] for w in said))


async def test_an_upstream_failure_is_tried_again_as_the_config_says_then_passed_on(
        tmp_path: Path, upstream: StandIn) -> None:
    """retries = 1: a 503 then a success is the success (the upstream had both); two
    503s are the second passed on as it came, the key it quotes hidden, and counted."""
    async with in_process(tmp_path, fleet(tmp_path, upstream.url,
                                          models_extra="retries = 1")) as d:
        res = await run_task(d, {"api": "chat", "model": "gpt-small",
                                 "texts": ["flaky 1", "flaky 2"]})
        once, twice = res.output["answers"]
        assert once == "echo: flaky 1"
        assert (twice["error"], twice["status"]) == ("InternalServerError", 503)
        assert "Incorrect API key provided: ***. (stand-in 503)" in twice["message"]
        assert [last_text(r["body"]) for r in upstream.requests] == [
            "flaky 1", "flaky 1", "flaky 2", "flaky 2"]
        stats = d.services.gateway_status()["models"]
        assert stats["retried"] == 2
        assert (stats["models"]["gpt-small"]["calls"],
                stats["models"]["gpt-small"]["errors"]) == (2, 1)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_whole_answer_cut_mid_body_is_a_502_naming_it_and_not_journaled(
        shared: Shared) -> None:
    """The upstream's connection ends before its Content-Length: the agent has a 502
    saying so (the aiohttp client's error escaped the handler as a bare 500 before
    http1.py), the call counted as an upstream error, nothing kept as the step's."""
    d = shared.d
    before = model_stats(d, "gpt-small")
    res = await run_task(d, {"api": "chat", "model": "gpt-small",
                             "texts": ["half", "after"]})
    half, after = res.output["answers"]
    assert (half["error"], half["status"]) == ("InternalServerError", 502), half
    assert "model gpt-small: the upstream's answer was cut before its end" \
        in half["message"]
    assert after == "echo: after"
    stats = model_stats(d, "gpt-small")
    assert (stats["calls"] - before["calls"], stats["errors"] - before["errors"]) == (2, 1)
    # the broken answer counted by the estimate (the upstream billed it): its
    # request's bytes / 4 in, the 26 bytes of its body that came / 4 out
    usage = (await d.sup.tasks.info(res.task_id)).usage
    assert usage is not None and usage.output_tokens - USAGE_OUT == 7, usage
    assert 10 <= usage.input_tokens - USAGE_IN <= 40, usage


@pytest.mark.asyncio(loop_scope="module")
async def test_a_request_without_a_replicas_token_is_refused_in_the_formats_words(
        shared: Shared) -> None:
    import aiohttp

    d, upstream = shared.d, shared.upstream
    called = upstream.calls()
    refused = d.services.gateway_status()["models"]["refused_unknown"]
    base = d.services.gateway.url.rpartition("/mcp")[0]
    body = {"model": "gpt-small", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        for path, key_header, words in (
                ("/v1/chat/completions", {"authorization": f"Bearer {KEY}"},
                 {"error": {"message": UNAUTHORIZED, "type": "invalid_api_key",
                            "param": None, "code": "invalid_api_key"}}),
                ("/v1/messages", {"x-api-key": "nothing"},
                 {"type": "error", "error": {"type": "authentication_error",
                                             "message": UNAUTHORIZED}})):
            async with http.post(base + path, json=body, headers=key_header) as r:
                assert (r.status, await r.json()) == (401, words)
    assert upstream.calls() == called
    assert d.services.gateway_status()["models"]["refused_unknown"] == refused + 2


def test_a_key_the_daemon_cannot_read_stops_its_start_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_TEST_PROVIDER_KEY")
    config = tmp_path / "corral.toml"
    config.write_text(config_text(fleet(tmp_path, "http://127.0.0.1:9"),
                                  tmp_path / "corral.sock", tmp_path / "state"))
    r = subprocess.run([PY, "-m", "corral", "daemon", "--config", str(config)],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode != 0
    assert "invalid config: models.gpt-small.key_env: the daemon's environment variable " \
           "CORRAL_TEST_PROVIDER_KEY is not set" in r.stderr


@pytest.mark.parametrize(("table", "said"), [
    ('[models.m]\nurl = "ftp://h"\nformat = "openai"',
     "models.m: url 'ftp://h' is not an http:// or https:// URL"),
    ('[models.m]\nurl = "http://h"\nformat = "openai"\nkey_env = "A"\nkey_file = "b"',
     "models.m: give key_env or key_file, not both"),
    ('[models.m]\nurl = "http://h"\nformat = "gemini"',
     "models.m.format: Invalid enum value 'gemini' (valid: 'anthropic', 'openai')"),
    ('[models."a b"]\nurl = "http://h"\nformat = "openai"',
     "models.'a b': a model's name is 1 to 200 letters, digits and . _ : / @ + -, "
     "beginning with a letter or a digit"),
    ('[models.m]\nurl = "http://h"\nformat = "openai"\ntenant = "nobody"',
     "models.m.tenant: no tenant nobody (declared: default)"),
])
def test_a_models_table_is_checked_naming_the_key(tmp_path: Path, table: str,
                                                  said: str) -> None:
    from corral.supervisor.config import ConfigError
    from corral.supervisor.configload import load_config

    path = tmp_path / "corral.toml"
    path.write_text(table + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: {said}"


async def test_a_reload_applies_a_changed_model_or_changes_nothing(
        tmp_path: Path, upstream: StandIn) -> None:
    """A reload whose key cannot be read is refused naming it, and the models as they
    were go on serving (the key taken from the environment at the start is still held);
    a reload that changes a model says so, and its calls go where it now says."""
    from corral.jsonrpc import RpcError

    second = StandIn()
    await second.start()
    try:
        async with in_process(tmp_path, fleet(tmp_path, upstream.url)) as d:
            config = tmp_path / "corral.toml"
            text = config.read_text()
            config.write_text(text.replace('key_env = "CORRAL_TEST_PROVIDER_KEY"',
                                           'key_env = "CORRAL_TEST_UNSET_KEY"'))
            with pytest.raises(RpcError) as refused:
                await d.dispatcher.call(OPERATOR, "config.reload", {})
            assert "models.gpt-small.key_env: the daemon's environment variable " \
                   "CORRAL_TEST_UNSET_KEY is not set" in refused.value.message
            res = await run_task(d, {"api": "chat", "model": "gpt-small", "calls": 1})
            assert res.output["answers"] == ["echo: call 1"]
            config.write_text(text.replace(f'url = "{upstream.url}/v1"',
                                           f'url = "{second.url}/v1"'))
            result = await d.dispatcher.call(OPERATOR, "config.reload", {})
            assert "model gpt-small changed" in result.gateway
            res = await run_task(d, {"api": "chat", "model": "gpt-small", "calls": 1})
            assert res.output["answers"] == ["echo: call 1"]
            assert (upstream.calls(), second.calls()) == (1, 1)
            assert second.requests[0]["key"] == KEY  # the key taken at the start, held
    finally:
        await second.close()


async def test_a_tenants_rate_of_a_model_refuses_past_it_and_prices_make_the_cost(
        tmp_path: Path, upstream: StandIn) -> None:
    """rate_per_minute 2 of a model: the third call of its tenant's agents in the minute
    is refused naming the key, never reaching the upstream; each call made costs its
    tokens at the model's prices, in the task's usage."""
    toml = fleet(tmp_path, upstream.url, models_extra=textwrap.dedent("""
        rate_per_minute = 2
        input_usd_per_mtok = 3.0
        output_usd_per_mtok = 15.0
    """))
    async with in_process(tmp_path, toml) as d:
        res = await run_task(d, {"api": "chat", "model": "gpt-small", "calls": 3})
        first, second, third = res.output["answers"]
        assert (first, second) == ("echo: call 1", "echo: call 2")
        assert (third["error"], third["status"]) == ("RateLimitError", 429)
        assert "rate limited: tenant default is over model gpt-small's rate_per_minute " \
               "(2)" in third["message"]
        assert upstream.calls() == 2
        usage = (await d.sup.tasks.info(res.task_id)).usage
        assert usage is not None
        assert usage.cost_usd == pytest.approx(2 * (USAGE_IN * 3.0 + USAGE_OUT * 15.0) / 1e6)
        stats = d.services.gateway_status()["models"]["models"]["gpt-small"]
        assert (stats["calls"], stats["refused"]) == (2, 1)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_body_past_max_body_is_refused_naming_the_bound(shared: Shared) -> None:
    import aiohttp

    from corral.daemon.http.route import MAX_BODY

    d, upstream = shared.d, shared.upstream
    called = upstream.calls()
    env = (await run_task(d, {"api": "chat", "model": "gpt-small", "calls": 0})
           ).output["env"]
    big = {"model": "gpt-small", "messages": [{"role": "user",
                                               "content": "x" * MAX_BODY}]}
    async with aiohttp.ClientSession() as http, http.post(
            env["OPENAI_BASE_URL"] + "/chat/completions", json=big,
            headers={"authorization": f"Bearer {env['OPENAI_API_KEY']}"}) as r:
        assert (r.status, await r.json()) == (413, {"error": {
            "message": f"the request's body is over MAX_BODY ({MAX_BODY} bytes)",
            "type": "invalid_request_error", "param": None,
            "code": "invalid_request_error"}})
    assert upstream.calls() == called


@pytest.mark.asyncio(loop_scope="module")
async def test_a_replicas_token_is_refused_once_the_replica_is_restarted(
        shared: Shared) -> None:
    """A replica's identity at the model gateway is kept with its token (not made a
    call): the token its restart replaced is refused like an unknown one."""
    import aiohttp

    d = shared.d
    env = (await run_task(d, {"api": "chat", "model": "gpt-small", "calls": 0})
           ).output["env"]
    body = {"model": "gpt-small", "messages": [{"role": "user", "content": "hi"}]}
    url, old = env["OPENAI_BASE_URL"] + "/chat/completions", env["OPENAI_API_KEY"]
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=body, headers={"authorization": f"Bearer {old}"}
                             ) as r:
            assert r.status == 200, await r.text()
        await d.sup.restart("writer")
        new = (await run_task(d, {"api": "chat", "model": "gpt-small", "calls": 1})
               ).output["env"]["OPENAI_API_KEY"]
        assert new != old
        async with http.post(url, json=body, headers={"authorization": f"Bearer {old}"}
                             ) as r:
            assert (r.status, (await r.json())["error"]["message"]) == (401, UNAUTHORIZED)
        async with http.post(url, json=body, headers={"authorization": f"Bearer {new}"}
                             ) as r:
            assert r.status == 200, await r.text()
