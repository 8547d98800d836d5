"""Approvals of model calls (issue 55 item 2; docs/approvals.md#approvals-of-model-calls):
a task's model call through corral's model gateway waits for a person when its model is
one the agent's or its tenant's `approve_models` names, or when its most cost may pass
the agent's `approve_cost_over`; approved it is made (once, journaled, replayed after a
suspension), denied the agent's client reads the refusal in its provider's format, or
the task fails (`on_deny = "fail"`).

Real parts: the daemon in this loop, an agent process using the real `openai` and
`anthropic` client libraries (tests/model_agent.py), a stand-in provider speaking both
wire formats (tests/servers/model_upstream.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from corral.daemon.caller import Caller
from corral.taskoptions import TaskOptions

from .daemon_harness import in_process
from .servers.model_upstream import StandIn
from .test_gateway_stdio import wait_until_async
from .test_model_gateway import fleet, provider_key, upstream  # noqa: F401 (fixtures)
from .test_questions import asks_made

OPERATOR = Caller(via="socket")
# 10 tokens in at 3.0 and the Messages call's max_tokens 64 out at 15.0 a million, its
# input estimated from its body's size
PRICES = "input_usd_per_mtok = 3.0\noutput_usd_per_mtok = 15.0"


def submit(d: Any, task_input: dict[str, Any]) -> asyncio.Future[Any]:
    return asyncio.ensure_future(d.sup.tasks.run("writer", task_input, TaskOptions(timeout=60)))


async def resolve(d: Any, ask_id: str, decision: str, **more: Any) -> Any:
    return await d.dispatcher.call(OPERATOR, "approvals.resolve",
                                   {"id": ask_id, "decision": decision, **more})


async def next_ask(made: asyncio.Queue[Any]) -> Any:
    return await asyncio.wait_for(made.get(), 30)


async def test_a_named_models_calls_wait_approved_made_once_denied_refused_in_its_words(
        tmp_path: Path, upstream: StandIn) -> None:  # noqa: F811 - the fixture
    toml = fleet(tmp_path, upstream.url, agent_extra='approve_models = ["claude-*"]')
    async with in_process(tmp_path, toml) as d:
        made = asks_made(d)
        running = submit(d, {"api": "messages", "model": "claude-small", "calls": 2})
        first = await next_ask(made)
        assert (first.kind, first.agent, first.subject) == (
            "approval", "writer", {"model": "claude-small", "endpoint": "/v1/messages",
                                   "cost": 0.0, "why": "approve_models"})
        assert first.key.startswith("model:claude-small:")
        info = await d.sup.tasks.info(first.task_id)
        assert info.status == "waiting" and [a.id for a in info.asks] == [first.id]
        assert upstream.requests == []  # nothing made before it is approved
        await resolve(d, first.id, "approved")
        second = await next_ask(made)
        assert second.key != first.key
        await resolve(d, second.id, "denied", reason="too dear")
        res = await running
        assert res.status == "succeeded", res
        ok, refused = res.output["answers"]
        assert ok == "echo: call 1"
        assert refused["status"] == 403
        assert (f"model call claude-small was denied by uid -1 pid -1 (ask {second.id}): too dear"
                in refused["message"]), refused
        assert len(upstream.requests) == 1  # the denied call never reached it


async def test_a_call_whose_cost_may_pass_the_ceiling_waits_a_cheaper_one_does_not(
        tmp_path: Path, upstream: StandIn) -> None:  # noqa: F811 - the fixture
    """approve_cost_over 0.0005: a Messages call bounded at 64 output tokens costs at most
    ~0.001 at these prices and waits; a Chat call with no bound on its output waits
    too (no most cost)."""
    toml = fleet(tmp_path, upstream.url, agent_extra="approve_cost_over = 0.0005",
                 claude_extra=PRICES, models_extra=PRICES)
    async with in_process(tmp_path, toml) as d:
        made = asks_made(d)
        running = submit(d, {"api": "messages", "model": "claude-small", "calls": 1})
        ask = await next_ask(made)
        cost = ask.subject["cost"]
        assert 64 * 15.0 / 1e6 < cost < 0.0015 and ask.subject["why"] == "approve_cost_over"
        await resolve(d, ask.id, "approved")
        assert (await running).output["answers"] == ["echo: call 1"]
        running = submit(d, {"api": "chat", "model": "gpt-small", "calls": 1})
        ask = await next_ask(made)
        assert (ask.subject["cost"], ask.subject["why"]) == (None, "approve_cost_over")
        await resolve(d, ask.id, "approved")
        assert (await running).output["answers"] == ["echo: call 1"]


async def test_a_call_that_cannot_pass_the_ceiling_does_not_wait(
        tmp_path: Path, upstream: StandIn) -> None:  # noqa: F811 - the fixture
    cheap = fleet(tmp_path, upstream.url, agent_extra="approve_cost_over = 0.01",
                  claude_extra=PRICES)
    async with in_process(tmp_path, cheap) as d:
        made = asks_made(d)
        res = await submit(d, {"api": "messages", "model": "claude-small", "calls": 1})
        assert res.output["answers"] == ["echo: call 1"] and made.empty()


async def test_a_tenants_models_wait_whatever_its_agent_says_and_deny_can_fail_the_task(
        tmp_path: Path, upstream: StandIn) -> None:  # noqa: F811 - the fixture
    toml = fleet(tmp_path, upstream.url, agent_extra='tenant = "acme"\non_deny = "fail"',
                 models_extra="shared = true") + '\n[tenants.acme]\napprove_models = ["gpt-*"]\n'
    async with in_process(tmp_path, toml) as d:
        made = asks_made(d)
        running = submit(d, {"api": "responses", "model": "gpt-small", "calls": 1})
        ask = await next_ask(made)
        assert (ask.tenant, ask.subject["why"]) == ("acme", "approve_models")
        await resolve(d, ask.id, "denied")
        res = await running
        assert res.status == "failed", res
        assert res.error.message == (f"model call gpt-small was denied by uid -1 pid -1 "
                                     f"(ask {ask.id})")
        assert upstream.requests == []


async def test_a_held_model_call_suspended_and_approved_is_made_once_after_replay(
        tmp_path: Path, upstream: StandIn) -> None:  # noqa: F811 - the fixture
    """Two model calls, the second held: past suspend_after (the test's clock moved ten
    minutes) the task gives its attempt back; approved, its next attempt is answered the
    first call from its journal and makes the second, once."""
    toml = fleet(tmp_path, upstream.url,
                 agent_extra='approve_models = ["claude-*"]\nsuspend_after = 300')
    async with in_process(tmp_path, toml, supervisor="manual_clock = true") as d:
        made = asks_made(d)
        running = submit(d, {"api": "chat", "model": "gpt-small",
                             "texts": ["one"], "then": "claude-small"})
        ask = await next_ask(made)
        moved = await d.dispatcher.call(OPERATOR, "daemon.clock", {"advance": 600})
        assert moved.manual and moved.ahead == 600
        await wait_until_async(lambda: d.sup.tasks.get(ask.task_id).suspended)
        await resolve(d, ask.id, "approved")
        res = await running
        assert res.status == "succeeded", res
        assert res.output["answers"] == ["echo: one", "echo: two"]
        assert [a.outcome for a in res.attempts] == ["suspended", "succeeded"]
        assert res.attempts[1].replayed == 1
        assert [r["path"] for r in upstream.requests] == ["/v1/chat/completions",
                                                          "/v1/messages"]
