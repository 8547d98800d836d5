"""`ctx.spawn` of a cluster task meets the policy as on one node (tests/test_spawn_policy.py):
the same code judges it, its ask kept in Redis, decided on any node, and the child a
cluster task made only once it is approved.

Real daemons on a real redis-server; SDK workers (tests/orchestrator_agent.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from ..test_spawn import counted, fleet
from ..test_spawn_policy import APPROVE
from .harness import STEADY_TTL, nodes
from .test_cluster_spawn import _ended, _run

pytestmark = pytest.mark.timeout(180)


def test_a_cluster_tasks_spawn_is_denied_or_held_by_the_policy(
        tmp: Path, redis: RedisServer) -> None:
    count = tmp / "count"
    toml = fleet(APPROVE) + ('\n[[policy]]\nname = "no orch for orch"\n'
                             'match = { agent = "orch", tool = "corral__orch" }\n'
                             'effect = "deny"\n')
    with nodes(tmp, redis, {"a": toml, "b": toml}, ttl=STEADY_TTL) as ns:
        a, b = ns["a"], ns["b"]
        got = _run(a, {"recurse": 1, "catch": True})
        assert got["output"] == {"refused": "task/spawn: tool call corral__orch is denied "
                                 "by policy rule no orch for orch", "code": jsonrpc.REFUSED}
        assert [t["task_id"] for t in b.call("tasks.list", {"agent": "orch"})["tasks"]] == [
            got["task_id"]]  # (no child of orch)
        # held: the ask in Redis, decided on the other node; the child made then
        task_id = a.call("tasks.submit", {"agent": "orch", "input": {
            "children": 1, "count": str(count)}})["task_id"]

        def asked() -> list[dict[str, Any]]:
            asks: list[dict[str, Any]] = b.call("approvals.list")["asks"]
            return asks
        [ask] = wait_until(asked, what="the spawn's ask")
        assert (ask["task_id"], ask["subject"]["tool"]) == (task_id, "corral__leaf")
        assert b.call("tasks.list", {"agent": "leaf"})["tasks"] == [] and counted(count) == []
        b.call("approvals.resolve", {"id": ask["id"], "decision": "approved"})
        done = _ended(a, task_id)
        assert (done["status"], done["output"]) == ("succeeded", [0]), done
        assert counted(count) == [0]
