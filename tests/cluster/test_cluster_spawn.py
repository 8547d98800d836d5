"""`task/spawn` on a cluster node (docs/workflows.md#spawn): a cluster task's spawn is
refused with the reason (its children would be this node's tasks, not found by a node
that resumes it), and the same orchestrator submitted with local = true spawns."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral import jsonrpc
from corral.supervisor.tasks.spawn import CLUSTER_SPAWN

from ..redis_harness import RedisServer
from ..test_spawn import counted, fleet
from .harness import nodes

pytestmark = pytest.mark.timeout(90)


def test_a_cluster_task_may_not_spawn_a_local_one_may(tmp: Path, redis: RedisServer) -> None:
    count = tmp / "count"
    with nodes(tmp, redis, {"a": fleet()}) as ns:
        a = ns["a"]
        task_input = {"children": 3, "count": str(count), "catch": True}
        task_id = a.call("tasks.submit", {"agent": "orch", "input": task_input})["task_id"]
        done = a.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["output"] == {"refused": CLUSTER_SPAWN, "code": jsonrpc.REFUSED}
        task_id = a.call("tasks.submit", {"agent": "orch", "input": task_input,
                                          "local": True})["task_id"]
        done = a.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["output"] == [0, 2, 4]
        assert counted(count) == [0, 1, 2]
