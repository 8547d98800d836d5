"""A tenant's admission quotas set while the engine runs apply to the next task, and
taken away stop applying: the task path looks at them only while some tenant sets one
(QuotaHooks.admitting, quotahooks.py), so a change must install and remove that look."""

from __future__ import annotations

import asyncio

import pytest

from corral import jsonrpc
from corral.jsonrpc import RpcError
from corral.supervisor import Supervisor
from corral.supervisor.config import TenantSpec

from .conftest import agent, all_ready


async def test_a_rate_set_and_taken_away_while_running(sup: Supervisor) -> None:
    sup.tenancy.put("acme", TenantSpec())
    sup.add(agent("a1", "misbehave.py", tenant="acme", max_concurrent_tasks=4))
    await all_ready(sup, "a1")
    assert (await sup.tasks.run("a1", {"do": "echo"})).status == "succeeded"
    sup.tenancy.put("acme", TenantSpec(rate_per_minute=2))
    first = [sup.tasks.submit("a1", {"do": "echo", "i": i}) for i in range(2)]
    with pytest.raises(RpcError) as refused:
        sup.tasks.submit("a1", {"do": "echo", "i": 2})
    assert (refused.value.code, refused.value.message) == (
        jsonrpc.REFUSED, "tenant acme: rate_per_minute 2 reached; a task for a1 waits for "
                         "the next minute's room")
    out = await sup.tasks.map("a1", [{"do": "echo"}], concurrency=1)
    assert [r.status for r in out] == ["refused"]  # a map's tasks are admitted alike
    assert out[0].error is not None and out[0].error.message == refused.value.message
    sup.tenancy.put("acme", TenantSpec())
    later = sup.tasks.submit("a1", {"do": "echo", "i": 3})
    for task in [*first, later]:
        await asyncio.wait_for(asyncio.shield(task.done), 30)
    assert [t.result().status for t in [*first, later]] == ["succeeded"] * 3
    assert sup.tasks.stats()["agents"]["a1"]["refused"] == 2


async def test_a_max_task_seconds_set_while_running_caps_the_next_task(
        sup: Supervisor) -> None:
    sup.tenancy.put("acme", TenantSpec())
    sup.add(agent("a2", "misbehave.py", tenant="acme", max_concurrent_tasks=2))
    await all_ready(sup, "a2")
    sup.tenancy.replace({"acme": TenantSpec(max_task_seconds=0.3)})
    out = await sup.tasks.run("a2", {"do": "sleep", "seconds": 30})
    assert out.status == "timed_out"
    assert out.error is not None and out.error.message == "task timed out after 0.3 s"
