"""A cluster task carries its options with its record (corral/taskoptions.py): its tags,
given on a node that runs none of the agent, are shown and filtered on every node."""

from __future__ import annotations

from pathlib import Path

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import STEADY_TTL, nodes, sleeper


def test_a_cluster_tasks_tags_are_kept_with_its_record_and_filtered_on_every_node(
        tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": "", "b": sleeper("w")}, ttl=STEADY_TTL) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: len(a.nodes()["nodes"]) == 2, what="both nodes")
        r = a.cli("submit", "w", "--input", '{"do": "echo"}', "--tag", "env=prod",
                  "--tag", "batch:7")
        assert r.returncode == 0, r.stderr
        tagged = r.stdout.strip()
        plain = a.call("tasks.submit", {"agent": "w", "input": {"do": "echo"}})["task_id"]
        done = a.json("task", tagged, "--wait")
        assert (done["status"], done["attempts"][0]["node"], done["options"]) == (
            "succeeded", "b", {"tags": ["env=prod", "batch:7"]})
        for n in (a, b):
            listed = n.json("tasks", "--tag", "batch:7")["tasks"]
            assert [(t["task_id"], t["options"]) for t in listed] == [
                (tagged, {"tags": ["env=prod", "batch:7"]})]
            assert [t["task_id"] for t in n.json("tasks")["tasks"]] == [tagged, plain]
            assert n.call("tasks.list", {"tag": "nope"})["tasks"] == []
