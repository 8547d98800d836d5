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
from .harness import STEADY_TTL, cluster_table


@pytest.mark.deadline(60)
async def test_nodes_and_tasks_over_http(tmp: Path, redis: RedisServer) -> None:
    (tmp / "d").mkdir()
    async with serving(tmp / "d", hello("greeter"), cluster_table(redis, "solo",
                                                                  ttl=STEADY_TTL)) as api:
        await api.token("ops", "agents:read", "tasks:run", "tasks:read")

        # joined (and so listed) by the time the daemon is set up and its agents ready
        await wait_until_async(lambda: api.d.cluster is not None and api.d.cluster.membership
                               .member)
        status, body, _ = await api.ask("GET", "/nodes", "ops")
        assert status == 200, body
        [node] = body["nodes"]
        assert (node["alive"], node["incarnation"], node["agents"]) == (True, 1, ["greeter"])
        assert set(node) == {"node", "alive", "incarnation", "load", "agents", "last_beat",
                             "capacity", "room", "placed", "draining", "pid", "host",
                             "key"}

        status, body, r = await api.ask("POST", "/tasks?wait=10", "ops",
                                        {"agent": "greeter", "input": {"name": "h"}})
        assert (status, body["status"], body["output"]["greeting"]) == (
            200, "succeeded", "hello, h")
        assert [a["node"] for a in body["attempts"]] == ["solo"]
        cluster_task = body["task_id"]
        assert r.headers["Location"] == f"/api/v1/tasks/{body['task_id']}"
        status, info, _ = await api.ask("GET", f"/tasks/{body['task_id']}", "ops")
        assert (status, info["status"], info["attempts"][0]["node"]) == (200, "succeeded",
                                                                        "solo")
        status, body, _ = await api.ask("POST", "/tasks?wait=10", "ops",
                                        {"agent": "greeter", "local": True})
        assert status == 200 and "node" not in body["attempts"][0]
        local_task = body["task_id"]
        # the task list: the cluster's, or with `local` this node's own
        status, body, _ = await api.ask("GET", "/tasks", "ops")
        assert status == 200, body
        assert [(t["task_id"], t["node"]) for t in body["tasks"]] == [(cluster_task, "solo")]
        status, body, _ = await api.ask("GET", "/tasks?local=true", "ops")
        assert [t["task_id"] for t in body["tasks"]] == [local_task]
        assert "node" not in body["tasks"][0]

        # Prometheus: series per node (a `node` label), no task ids; the nodes as this
        # node's last beat read them
        await api.token("scraper", "metrics:read")
        await wait_until_async(lambda: api.d.services.cluster.desk.view != [])
        async with api.http.get(api.d.http_server.url + "/metrics", headers={
                "Authorization": f"Bearer {api.tokens['scraper']}"}) as r:
            text = await r.text()
        cluster = sorted(line for line in text.splitlines()
                         if line.startswith("corral_cluster_")
                         and not line.startswith(("corral_cluster_node_load",
                                                  "corral_cluster_node_capacity")))
        assert cluster == [
            'corral_cluster_fences_total{node="solo"} 0.0',
            # the harness's key_file (and a Redis as the docs ask: no warning)
            'corral_cluster_key{node="solo"} 1.0',
            'corral_cluster_late_writes_refused_total{node="solo"} 0.0',
            'corral_cluster_node_up{node="solo"} 1.0',
            'corral_cluster_outbox{node="solo"} 0.0',
            'corral_cluster_outcomes_published_total{node="solo"} 1.0',
            'corral_cluster_redis_warnings{node="solo"} 0.0',
            'corral_cluster_takeovers_total{node="solo",outcome="lost"} 0.0',
            'corral_cluster_takeovers_total{node="solo",outcome="requeued"} 0.0',
            'corral_cluster_tasks_claimed_total{node="solo"} 1.0',
            'corral_cluster_trust_refused_total{kind="agents",node="solo"} 0.0',
            'corral_cluster_trust_refused_total{kind="asks",node="solo"} 0.0',
            'corral_cluster_trust_refused_total{kind="calls",node="solo"} 0.0',
            'corral_cluster_trust_refused_total{kind="declared",node="solo"} 0.0',
            'corral_cluster_trust_refused_total{kind="outcomes",node="solo"} 0.0',
            'corral_cluster_trust_refused_total{kind="outputs",node="solo"} 0.0',
            'corral_cluster_trust_refused_total{kind="pins",node="solo"} 0.0',
            'corral_cluster_trust_refused_total{kind="pushes",node="solo"} 0.0',
            'corral_cluster_trust_refused_total{kind="revisions",node="solo"} 0.0',
            'corral_cluster_trust_refused_total{kind="sessions",node="solo"} 0.0',
            'corral_cluster_trust_refused_total{kind="spawns",node="solo"} 0.0',
            'corral_cluster_trust_refused_total{kind="steps",node="solo"} 0.0',
            'corral_cluster_trust_refused_total{kind="tenants",node="solo"} 0.0',
        ]
        assert cluster_task not in text

        redis.kill()
        # a read first: a pooled connection Redis closed as it died is then seen closed
        # before the submit is written (written into it, the submit cannot tell whether
        # Redis took it: that answer is test_failover's)
        status, body, _ = await api.ask("GET", "/nodes", "ops")
        assert status == 503 and body["detail"].endswith("the nodes cannot be listed")
        status, body, r = await api.ask("POST", "/tasks", "ops", {"agent": "greeter"})
        assert (status, r.content_type) == (503, PROBLEM)
        assert body["title"] == "service unavailable" and body["code"] == jsonrpc.UNAVAILABLE
        assert body["detail"].startswith(f"the cluster's Redis at {redis.url} is "
                                         "unreachable (")
        assert body["detail"].endswith("): the task was not accepted")
        status, body, _ = await api.ask("GET", "/tasks", "ops")
        assert status == 503 and body["detail"].endswith(
            "the cluster's tasks cannot be listed (`corral tasks --local` lists this node's "
            "own)")
        status, body, _ = await api.ask("GET", "/tasks?local=true", "ops")
        assert status == 200 and [t["task_id"] for t in body["tasks"]] == [local_task]
