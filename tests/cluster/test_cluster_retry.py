"""The retry policy on a cluster (issue 36, item 5): a cluster task whose attempt fails is
retried by the policy of its agent, as the node that ran the attempt decides, queued again
for any node after its backoff (its record keeps every attempt and its error); a delay
runs as well with --local."""

from __future__ import annotations

import json
from pathlib import Path

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import STEADY_TTL, nodes, sleeper

POLICY = 'retry_on = ["failed"]\nretry_backoff = 0.3\nretry_jitter = false\n'


def test_a_failed_cluster_task_is_retried_on_its_node_by_its_agents_policy(
        tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": "", "b": sleeper("w", retries=1) + POLICY},
               ttl=STEADY_TTL) as ns:
        a = ns["a"]
        wait_until(lambda: len(a.nodes()["nodes"]) == 2, what="both nodes")
        r = a.run("w", '{"do": "until", "attempt": 2}')
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert (res["status"], res["output"]) == ("succeeded", {"attempt": 2})
        first, second = res["attempts"]
        assert (first["node"], first["outcome"], first["error"]) == (
            "b", "failed", "attempt 1 failed on request")
        assert (second["node"], second["outcome"]) == ("b", "succeeded")
        assert second["started"] >= first["finished"] + 0.29
        # out of retries: failed, with every attempt's error in the record
        r = a.run("w", '{"do": "until", "attempt": 3}')
        assert r.returncode == 1
        res = json.loads(r.stdout)
        assert res["status"] == "failed"
        assert [x["error"] for x in res["attempts"]] == [
            "attempt 1 failed on request", "attempt 2 failed on request"]
        # on the node that runs the agent, --local delays it there
        b = ns["b"]
        r = b.cli("submit", "w", "--input", '{"do": "echo"}', "--delay", "1s", "--local")
        assert r.returncode == 0, r.stderr
        info = b.json("task", r.stdout.strip())
        # (on a loaded machine the second may have passed before the CLI's read)
        assert info["status"] != "queued" or info["waiting"].startswith("delayed until ")
        done = b.json("task", r.stdout.strip(), "--wait")
        assert done["status"] == "succeeded"
        # held back 1 s: asyncio runs a timer within its clock's resolution of its time,
        # and the two stamps are wall-clock reads around it (one run had 0.99994 s)
        assert done["attempts"][0]["started"] - done["created"] >= 0.99
