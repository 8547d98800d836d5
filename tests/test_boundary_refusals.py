"""Every refusal of the boundary recorded (issue 88, DESIGN sections 10 and 27): one
recorder (`corral.supervisor.refusals.BoundaryRefusals.refused`) every layer tells; each refusal
is counted (`corral_boundary_refusals_total{agent,kind}`), and within its rate an event
(`boundary.refused`: agent, task, kind, target) and an audit row; a flood grows nothing."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from corral.supervisor.refusals import (
    FORGOTTEN,
    MAX_TARGET,
    PER_MINUTE,
    TOPIC,
    BoundaryRefusals,
    BoundaryRefused,
)
from corral.supervisor.stream import Stream

from .conftest import ROOT, agent
from .daemon_harness import PY, hello
from .test_metrics import running, samples, scrape, value


def test_a_flood_is_counted_whole_said_within_its_rate_and_grows_nothing() -> None:
    now = [0.0]
    stream = Stream()
    said: list[BoundaryRefused] = []
    stream.subscribe(said.append, BoundaryRefused)
    refusals = BoundaryRefusals(stream, per_minute=60, max_keys=100, clock=lambda: now[0])
    for i in range(100_000):
        refusals.refused("web", "connect", f"10.0.0.{i % 250}:443", task="t1")
    # counted every one, said a minute's burst of them
    assert refusals.counts == {("web", "connect"): 100_000}
    assert len(said) == 60 and refusals.unsaid == 100_000 - 60
    assert (said[0].agent, said[0].task, said[0].kind, said[0].target, said[0].unsaid) == (
        "web", "t1", "connect", "10.0.0.0:443", 0)
    # a second on, the next one said carries how many were not
    now[0] += 1.0
    assert refusals.refused("web", "connect", "10.0.0.9:443", task="t2")
    assert (said[-1].task, said[-1].unsaid) == ("t2", 100_000 - 60)
    # another kind of the same agent has a rate of its own
    assert refusals.refused("web", "open", "/etc/shadow")
    # agents beyond number: at most max_keys (agent, kind) kept, the oldest forgotten
    for i in range(10_000):
        refusals.refused(f"a{i}", "bind", "0.0.0.0:80")
    kept = {key: n for key, n in refusals.counts.items() if key[0] != FORGOTTEN}
    assert len(kept) == 100
    assert ("a9999", "bind") in kept and ("web", "connect") not in kept
    # whose counts are kept by kind: no total goes back
    assert {kind: n for (agent, kind), n in refusals.counts.items() if agent == FORGOTTEN} \
        == {"connect": 100_001, "open": 1, "bind": 10_000 - 100}
    # a target past its bound is cut, saying its size
    refusals.refused("long", "open", "/x" * 5000)
    assert said[-1].target == f"{('/x' * 5000)[:MAX_TARGET]}… (10000 characters)"


@pytest.mark.deadline(90)
async def test_a_refusal_is_an_event_an_audit_row_and_a_counter(tmp_path: Path) -> None:
    async with running(tmp_path, hello("web")) as d:
        bus = d.sup.events.follow(TOPIC)
        refusals = d.sup.parts.refusals
        assert refusals.refused("web", "connect", "203.0.113.9:443", task="task-1")
        assert refusals.refused("web", "open", "/etc/shadow")
        published = [msgspec.json.decode(bus.pop()) for _ in range(len(bus.queue))]
        d.sup.events.unfollow(bus)
        # `corral events tail boundary.refused` shows these, in the agent's tenant
        assert [(p["topic"], p["source"], p["tenant"], p["data"]["agent"], p["data"]["task"],
                 p["data"]["kind"], p["data"]["target"]) for p in published] == [
            (TOPIC, "corral", "default", "web", "task-1", "connect", "203.0.113.9:443"),
            (TOPIC, "corral", "default", "web", None, "open", "/etc/shadow")]
        rows = [r for r in await d.services.store.audit_log_now() if r[3] == TOPIC]
        assert [(msgspec.json.decode(r[4]), r[5], r[7]) for r in rows] == [
            ({"agent": "web", "task": "task-1", "kind": "connect",
              "target": "203.0.113.9:443", "unsaid": 0}, "refused", "default"),
            ({"agent": "web", "task": None, "kind": "open", "target": "/etc/shadow",
              "unsaid": 0}, "refused", "default")]
        status, _, text = await scrape(d)
        assert status == 200
        series = samples(text)
        assert value(series, "corral_boundary_refusals_total", agent="web",
                     kind="connect") == 1
        assert value(series, "corral_boundary_refusals_total", agent="web", kind="open") == 1


@pytest.mark.deadline(90)
async def test_a_removed_agents_keys_are_forgotten_and_their_counts_kept(
        tmp_path: Path) -> None:
    """Agents added and removed by fresh names (a fleet's churn): each one's (agent, kind)
    pairs go with it, not kept to the bound, and /metrics' total does not go back."""
    async with running(tmp_path, hello("web")) as d:
        refusals = d.sup.parts.refusals
        refusals.refused("web", "open", "/etc/shadow")
        for i in range(3):
            d.sup.add(agent(f"churn{i}", "hello.py"), start=False)
            refusals.refused(f"churn{i}", "connect", "203.0.113.9:443")
            refusals.refused(f"churn{i}", "open", "/etc/shadow")
            await d.sup.remove(f"churn{i}")
        assert refusals.counts == {("web", "open"): 1, (FORGOTTEN, "connect"): 3,
                                   (FORGOTTEN, "open"): 3}
        series = samples((await scrape(d))[2])
        assert {(dict(labels)["agent"], dict(labels)["kind"]): n
                for (name, labels), n in series.items()
                if name == "corral_boundary_refusals_total"} == refusals.counts


@pytest.mark.deadline(120)
async def test_a_flood_of_policy_denies_is_counted_whole_and_said_within_its_rate(
        tmp_path: Path) -> None:
    """An agent's task calls a tool a `[[policy]]` rule denies 100 times: each is the
    boundary's refusal (the policy guard's one record of it), counted whole in
    /metrics, said (an event, an audit row) within its (agent, kind)'s rate."""
    agent = (f'[agents.caller]\ncommand = ["{PY}", "{ROOT}/tests/doors/door_agent.py"]\n'
             f'env = {{ PYTHONPATH = "{ROOT}" }}\ntools = ["pol__*"]\n'
             'max_tool_calls_per_task = 200\n\n'
             f'[mcp_servers.pol]\ncommand = ["{PY}", "{ROOT}/tests/servers/policy_mcp.py"]\n\n'
             '[[policy]]\nname = "no pay"\nmatch = { tool = "pol__pay" }\neffect = "deny"\n')
    async with running(tmp_path, agent) as d:
        bus = d.sup.events.follow(TOPIC)
        calls = [{"door": "worker", "tool": "pol__pay", "arguments": {"amount": 1}}] * 100
        task = d.sup.tasks.submit("caller", {"calls": calls})
        await task.done
        assert task.output == [{"text": "tool call pol__pay is denied by policy rule no pay",
                                "isError": True}] * 100
        published = [msgspec.json.decode(bus.pop()) for _ in range(len(bus.queue))]
        d.sup.events.unfollow(bus)
        said = len(published)
        # a minute's burst said (and what refilled while the calls were made), not 100
        assert PER_MINUTE <= said < 100, said
        assert {(p["data"]["agent"], p["data"]["task"], p["data"]["kind"],
                 p["data"]["target"]) for p in published} == {
            ("caller", task.id, "policy", "pol__pay (policy rule no pay)")}
        # (among each call's own row, worker.call: every row read, not the newest 100)
        rows = [r for r in await d.services.store.audit_log_now(10_000)
                if r[3] in (TOPIC, "policy")]
        assert len(rows) == said and {r[3] for r in rows} == {TOPIC}  # one row a refusal
        status, _, text = await scrape(d)
        assert status == 200
        assert value(samples(text), "corral_boundary_refusals_total", agent="caller",
                     kind="policy") == 100
