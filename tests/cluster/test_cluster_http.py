"""The cluster over the REST API (the same Dispatcher as the socket): GET /nodes, a task
submitted over HTTP runs as a cluster task (or here with `local`), and Redis away answers
503 naming it, with nothing accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral import jsonrpc

from ..daemon_harness import hello
from ..redis_harness import RedisServer
from ..test_gateway_stdio import wait_until_async
from ..test_http_api import PROBLEM, serving
from .harness import cluster_table


@pytest.mark.deadline(60)
async def test_nodes_and_tasks_over_http(tmp: Path, redis: RedisServer) -> None:
    (tmp / "d").mkdir()
    async with serving(tmp / "d", hello("greeter"), cluster_table(redis, "solo")) as api:
        await api.token("ops", "agents:read", "tasks:run", "tasks:read")

        # joined (and so listed) by the time the daemon is set up and its agents ready
        await wait_until_async(lambda: api.d.cluster is not None and api.d.cluster.membership
                               .member)
        status, body, _ = await api.ask("GET", "/nodes", "ops")
        assert status == 200, body
        [node] = body["nodes"]
        assert (node["alive"], node["incarnation"], node["agents"]) == (True, 1, ["greeter"])
        assert set(node) == {"node", "alive", "incarnation", "load", "agents", "last_beat",
                             "capacity"}

        status, body, r = await api.ask("POST", "/tasks?wait=10", "ops",
                                        {"agent": "greeter", "input": {"name": "h"}})
        assert (status, body["status"], body["output"]["greeting"]) == (
            200, "succeeded", "hello, h")
        assert [a["node"] for a in body["attempts"]] == ["solo"]
        assert r.headers["Location"] == f"/api/v1/tasks/{body['task_id']}"
        status, info, _ = await api.ask("GET", f"/tasks/{body['task_id']}", "ops")
        assert (status, info["status"], info["attempts"][0]["node"]) == (200, "succeeded",
                                                                        "solo")
        status, body, _ = await api.ask("POST", "/tasks?wait=10", "ops",
                                        {"agent": "greeter", "local": True})
        assert status == 200 and "node" not in body["attempts"][0]

        redis.kill()
        status, body, r = await api.ask("POST", "/tasks", "ops", {"agent": "greeter"})
        assert (status, r.content_type) == (503, PROBLEM)
        assert body["title"] == "unavailable" and body["code"] == jsonrpc.UNAVAILABLE
        assert body["detail"].startswith(f"the cluster's Redis at {redis.url} is "
                                         "unreachable (")
        assert body["detail"].endswith("): the task was not accepted")
        status, body, _ = await api.ask("GET", "/nodes", "ops")
        assert status == 503 and body["detail"].endswith("the nodes cannot be listed")
