"""Elastic agents and cluster tasks (cluster/backlog.py): a cluster task for an agent
asleep at min_replicas = 0 wakes it, and the tasks waiting in the agent's streams are
load for its autoscaler."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import STEADY_TTL, nodes, run, sleeper

pytestmark = pytest.mark.timeout(60)

ELASTIC = sleeper("sleepy") + """
replicas = 0

[agents.sleepy.autoscale]
min_replicas = 0
max_replicas = 3
target_load = 1.0
upscale_delay = 0.0
idle_after = 600.0
"""


def test_a_cluster_task_wakes_an_asleep_agent_and_the_backlog_scales_it(
        tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": "", "b": ELASTIC}, ttl=STEADY_TTL) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: sum(n["alive"] for n in a.nodes()["nodes"]) == 2,
                   what="two nodes alive")
        assert b.call("stats.get")["agents"]["sleepy"]["replicas"] == 0  # asleep
        done = run(a, "sleepy", {"do": "sleep", "seconds": 0.01}, timeout=30)
        assert (done["status"], done["attempts"][0]["node"]) == ("succeeded", "b")
        assert b.call("stats.get")["cluster"]["woken"] >= 1
        # six long tasks: one runs per replica (one slot each), the rest wait in the
        # stream, unread by b; counted as load, they scale b up to max_replicas
        ids = [a.call("tasks.submit", {"agent": "sleepy",
                                    "input": {"do": "sleep", "seconds": 2}})["task_id"]
               for _ in range(6)]
        wait_until(lambda: b.call("stats.get")["agents"]["sleepy"]["replicas"] == 3,
                   what="scaled up by the cluster's backlog")
        done_all = [a.call("tasks.get", {"task_id": t, "wait": True}) for t in ids]
        assert [d["status"] for d in done_all] == ["succeeded"] * 6
