"""A cluster's task may not ask a person yet (docs/cluster.md's parity table,
docs/approvals.md): its ask would be one node's, lost with it. The call its agent's
`approve` names is refused by name, never run unapproved; the same agent's `local` task
asks as on one node."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral import jsonrpc

from ..redis_harness import RedisServer
from ..test_approvals import bump, counted, fleet
from ..test_daemon_cli import wait_until
from .harness import nodes

pytestmark = pytest.mark.timeout(90)


def test_a_cluster_tasks_held_call_is_refused_a_local_ones_asks(tmp: Path,
                                                                redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": fleet(tmp)}) as ns:
        a = ns["a"]
        task_id = a.call("tasks.submit", {"agent": "writer", "input": bump(1)})["task_id"]
        done = a.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["output"] == [{
            "error": jsonrpc.TOOL_NOT_ALLOWED,
            "message": "tool call counting__bump waits for a person's approval (approve), "
                       "which a cluster's task cannot ask yet: refused (docs/cluster.md)"}]
        task_id = a.call("tasks.submit", {"agent": "writer", "input": bump(2),
                                          "local": True})["task_id"]
        [ask] = wait_until(lambda: a.call("approvals.list", {})["asks"], what="its ask")
        assert ask["task_id"] == task_id
        a.call("approvals.resolve", {"id": ask["id"], "decision": "approved"})
        done = a.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        assert counted(tmp) == ["2"]
