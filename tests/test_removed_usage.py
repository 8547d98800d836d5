"""What a removed agent's stopping worker reports is not kept under the agent's name: the
removal forgets the agent's budgets first, then stops its replicas, and a worker may
report its last usage as it stops (tests/stopping_usage_agent.py). Decision 1986 held a
removed agent's model call answered after its removal; this holds the worker's own
report (decision 2011)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from corral.daemon.caller import Caller
from corral.supervisor.tasks import ModelUsage, TaskStatus, Usage
from corral.taskoptions import TaskOptions

from .conftest import ROOT
from .daemon_harness import PY, in_process
from .test_gateway_stdio import wait_until_async

OPERATOR = Caller(via="socket")
HERE = Path(__file__).parent
TABLE = {"command": [PY, str(HERE / "stopping_usage_agent.py")],
         "env": {"PYTHONPATH": str(ROOT)}, "tokens_per_minute": 150}


async def test_a_removed_agents_stopping_workers_report_leaves_it_no_usage(
        tmp_path: Path) -> None:
    """The worker's report at its stop is its task's usage, and nothing of it is kept
    under the agent's name: the agent added again under the name starts with no usage,
    its whole tokens_per_minute free. It failed: the report was counted anew under the
    name after the removal had forgotten the agent's budgets (kept for ever, and the next
    agent's of the name)."""
    async with in_process(tmp_path, "") as d:
        async def call(method: str, params: dict[str, object]) -> object:
            return await d.dispatcher.call(OPERATOR, method, params)

        await call("agents.add", {"agents": {"spender": TABLE}})
        task = d.sup.tasks.submit("spender", "one", TaskOptions(timeout=60))
        await asyncio.wait_for(asyncio.shield(task.done), 60)
        assert task.status == TaskStatus.SUCCEEDED
        await call("agents.remove", {"names": ["spender"]})
        # the report heard: the task's usage is its own, whatever became of its agent
        await wait_until_async(lambda: task.usage is not None)
        assert task.usage == ModelUsage(80, 20, 0.0, 1, {"m1": Usage(80, 20, 0.0, 1)})
        await call("agents.add", {"agents": {"spender": TABLE}})
        st = msgspec.to_builtins(await call("stats.get", {}))
        assert st["agents"]["spender"]["usage"] is None
