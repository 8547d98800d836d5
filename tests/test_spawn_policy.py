"""`ctx.spawn` (`task/spawn`) is judged as its task's call of `corral__AGENT` is: the same
policy rules, `approve`, taint and `max_tool_calls_per_task`, by the same interceptors
(docs/security.md), so an operator's rule on an agent as a tool is not walked around by
spawning that agent; a spawn answered from its tree (a retry's) is not judged again.

Real processes: the daemon in this loop and SDK workers (tests/orchestrator_agent.py)
as orchestrator and leaves, the leaves counting their runs in a file."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import msgspec

from corral import jsonrpc
from corral.taskoptions import TaskOptions

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, in_process
from .test_gateway_stdio import wait_until_async
from .test_spawn import HERE, counted, fleet, run
from .test_tenants import OPERATOR, tenant_agent

DENY = ('\n[[policy]]\nname = "no leaves for orch"\n'
        'match = { agent = "orch", tool = "corral__leaf" }\neffect = "deny"\n')
APPROVE = 'approve = ["corral__leaf"]'


async def call(d: Any, method: str, params: dict[str, Any]) -> Any:
    return await d.dispatcher.call(OPERATOR, method, params)


async def leaves(d: Any) -> list[Any]:
    return list((await call(d, "tasks.list", {"agent": "leaf"})).tasks)


async def tool_calls(d: Any, res: Any) -> int:
    return int((await d.sup.tasks.info(res.task_id)).tool_calls)


async def asked(d: Any) -> Any:
    """The one pending ask, once there is one (within 30 s)."""
    async def pending() -> list[Any]:
        while True:
            got = list((await call(d, "approvals.list", {})).asks)
            if got:
                return got
            await asyncio.sleep(0.05)
    [ask] = await asyncio.wait_for(pending(), 30)
    return ask


def leaf(count: Path, n: int) -> dict[str, Any]:
    return {"leaf": True, "n": n, "count": str(count)}


async def test_a_rule_denying_an_agent_as_a_tool_refuses_its_spawn(tmp_path: Path) -> None:
    count = tmp_path / "count"
    async with in_process(tmp_path, fleet(), DENY) as d:
        res = await run(d, {"children": 1, "count": str(count), "catch": True})
        assert res.output == {"refused": "task/spawn: tool call corral__leaf is denied by "
                                         "policy rule no leaves for orch",
                              "code": jsonrpc.REFUSED}
        assert (await tool_calls(d, res)) == 1  # (counted as the tool path counts a denied call)
        assert await leaves(d) == [] and counted(count) == []
        assert d.sup.tasks.spawns.stats() == {"spawned": 0, "replayed": 0}
        # the denial is the boundary's refusal's audit row, as at every other door
        rows = [e for e in (await call(d, "audit.list", {})).entries
                if e.method == "boundary.refused"
                and e.params["target"].startswith("corral__leaf ")]
        assert [(r.params["kind"], r.params["task"]) for r in rows] == [
            ("policy", res.task_id)], rows
        # another agent's spawn of leaf is no call the rule names
        other = await d.sup.tasks.run("other", {"children": 1, "count": str(count)})
        assert other.status == "failed"  # (other's spawns list is empty: refused by it)
        assert other.error.message.endswith("agent other may not spawn tasks of agent leaf "
                                            "(its spawns list: [])")


async def test_approve_holds_the_spawn_until_a_person_approves_it(tmp_path: Path) -> None:
    count = tmp_path / "count"
    async with in_process(tmp_path, fleet(APPROVE)) as d:
        running = asyncio.ensure_future(run(d, {"children": 1, "count": str(count)}))
        ask = await asked(d)
        assert (ask.kind, ask.agent, ask.attempt) == ("approval", "orch", 1)
        assert ask.key.startswith("spawn:1:")  # (its spawn's key, its input's hash)
        assert ask.subject == {"tool": "corral__leaf", "arguments": leaf(count, 0)}
        info = await d.sup.tasks.info(ask.task_id)
        assert info.status == "waiting"
        assert await leaves(d) == [] and counted(count) == []
        # approved with its input edited: the child is spawned with the person's input
        await call(d, "approvals.resolve", {"id": ask.id, "decision": "approved",
                                            "arguments": leaf(count, 7)})
        res = await running
        assert (res.status, res.output) == ("succeeded", [14])
        assert counted(count) == [7]
        assert (await tool_calls(d, res)) == 1
        assert d.sup.tasks.spawns.stats() == {"spawned": 1, "replayed": 0}


async def test_a_spawn_a_person_denies_is_refused_and_never_made(tmp_path: Path) -> None:
    count = tmp_path / "count"
    async with in_process(tmp_path, fleet(APPROVE)) as d:
        running = asyncio.ensure_future(run(d, {"children": 1, "count": str(count),
                                                "catch": True}))
        ask = await asked(d)
        done = await call(d, "approvals.resolve", {"id": ask.id, "decision": "denied",
                                                   "reason": "not today"})
        res = await running
        assert res.output == {"refused": f"task/spawn: tool call corral__leaf was denied by "
                                         f"{done.by} (ask {ask.id}): not today",
                              "code": jsonrpc.REFUSED}
        assert await leaves(d) == [] and counted(count) == []
        assert d.sup.tasks.spawns.stats() == {"spawned": 0, "replayed": 0}


async def test_the_tool_budget_counts_each_spawn(tmp_path: Path) -> None:
    count = tmp_path / "count"
    async with in_process(tmp_path, fleet("max_tool_calls_per_task = 2")) as d:
        res = await run(d, {"children": 3, "count": str(count), "catch": True})
        assert res.output == {"refused": f"tool budget exceeded: task {res.task_id} has "
                                         "made 2 tool calls (max_tool_calls_per_task 2)",
                              "code": jsonrpc.TOOL_BUDGET_EXCEEDED}
        assert d.sup.tasks.spawns.stats() == {"spawned": 2, "replayed": 0}
        await wait_until_async(lambda: counted(count) == [0, 1])  # (they run on)
        assert len(await leaves(d)) == 2


async def test_a_retrys_spawn_approved_before_is_neither_asked_nor_counted_again(
        tmp_path: Path) -> None:
    """The orchestrator is SIGKILLed after its first spawn (approved); its retry gets
    that child from its tree, unjudged: were it judged again, its budget of two would
    refuse the second spawn."""
    count = tmp_path / "count"
    orch = f"{APPROVE}\nmax_tool_calls_per_task = 2"
    async with in_process(tmp_path, fleet(orch)) as d:
        running = asyncio.ensure_future(run(d, {
            "children": 2, "count": str(count), "stop_after": 1,
            "marker": str(tmp_path / "marker")}))
        first = await asked(d)
        assert (first.key.split(":")[:2], first.attempt) == (["spawn", "1"], 1)
        await call(d, "approvals.resolve", {"id": first.id, "decision": "approved"})
        await wait_until_async(lambda: (tmp_path / "marker").exists())
        second = await asked(d)
        assert (second.key.split(":")[:2], second.attempt, second.subject["arguments"]) == (
            ["spawn", "2"], 2, leaf(count, 1))
        await call(d, "approvals.resolve", {"id": second.id, "decision": "approved"})
        res = await running
        assert (res.status, res.output) == ("succeeded", [0, 2])
        assert [a.outcome for a in res.attempts] == ["lost", "succeeded"]
        assert counted(count) == [0, 1] and (await tool_calls(d, res)) == 2
        assert d.sup.tasks.spawns.stats() == {"spawned": 2, "replayed": 1}


async def test_an_approval_of_one_agents_spawn_is_no_approval_of_anothers_under_its_key(
        tmp_path: Path) -> None:
    """A person approves spawning `staging` under the orchestrator's key; that spawn is
    then refused (its tenant's queue is full), and the orchestrator spawns `prod`, with
    the same key and input: a person is asked again, for prod (an attacker's pass: the
    ask's key named no agent, so the first approval let prod run unseen)."""
    count, marker = tmp_path / "count", tmp_path / "go"
    gate, again, refused = tmp_path / "gate", tmp_path / "again", tmp_path / "refused"
    orch = f"""
        [tenants.t]
        max_queue = 1

        [agents.orch]
        command = ["{PY}", "{HERE}/orchestrator_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tenant = "t"
        spawns = ["staging", "prod"]
        approve = ["corral__staging", "corral__prod"]
    """
    leaves_toml = "".join(f"""
        [agents.{name}]
        command = ["{PY}", "{HERE}/orchestrator_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tenant = "t"
    """ for name in ("staging", "prod"))
    holder = tenant_agent("holder", "t", f"{EXAMPLES}/misbehave.py",
                          "max_concurrent_tasks = 1\n")
    async with in_process(tmp_path, textwrap.dedent(orch + leaves_toml) + holder) as d:
        running = asyncio.ensure_future(d.sup.tasks.run("orch", {
            "children": 1, "agent": "staging", "or_else": "prod", "key": "k",
            "count": str(count), "gate": str(gate), "or_else_gate": str(again),
            "or_else_note": str(refused), "catch": True}, TaskOptions(timeout=120)))
        await wait_until_async(lambda: d.sup.tasks.running("orch") == 1, timeout=30)
        wait = {"do": "await", "path": str(marker)}
        for held in (0, 1):  # one runs, one waits: the tenant's queue is full
            await d.dispatcher.call(OPERATOR, "tasks.submit", msgspec.json.encode(
                {"agent": "holder", "input": wait}))
            await wait_until_async(lambda held=held: d.sup.tasks.running("holder") == 1
                                   and d.sup.tasks.queue.depth("holder") == held, timeout=30)
        gate.touch()
        first = await asked(d)
        assert first.subject["tool"] == "corral__staging"
        await call(d, "approvals.resolve", {"id": first.id, "decision": "approved"})
        # the approved spawn refused (the queue full) before the holder's tasks end: on a
        # loaded host the spawn came after, found room, and staging ran
        await wait_until_async(refused.exists, timeout=30)
        assert "max_queue 1" in refused.read_text(), refused.read_text()
        marker.touch()  # the holder's tasks end: the queue has room again
        await wait_until_async(lambda: d.sup.tasks.queue.depth("holder") == 0, timeout=30)
        again.touch()

        async def second_ask() -> Any:
            while not running.done():
                pending = [a for a in (await call(d, "approvals.list", {})).asks
                           if a.id != first.id]
                if pending:
                    return pending[0]
                await asyncio.sleep(0.05)
            return None
        second = await asyncio.wait_for(second_ask(), 60)
        assert second is not None, (running.result(), counted(count))
        assert second.subject["tool"] == "corral__prod"
        assert counted(count) == []  # prod has not run
        await call(d, "approvals.resolve", {"id": second.id, "decision": "denied"})
        res = await running
        assert res.output["refused"].startswith("task/spawn: tool call corral__prod was "
                                                "denied by")
        assert counted(count) == []
