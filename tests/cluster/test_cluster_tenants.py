"""Cluster tasks and tenants (issue 23): a cluster task of a tenant's agent is held to the
tenant's task quotas where it is submitted, as a local one is. A real redis-server and
real daemons."""

from __future__ import annotations

import json
from pathlib import Path

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import nodes, sleeper


def test_a_cluster_task_is_held_to_its_tenants_task_quotas(tmp: Path,
                                                          redis: RedisServer) -> None:
    agents = ('[tenants.t]\nrate_per_minute = 2\nmax_task_seconds = 1\n'
              + sleeper("s") + 'tenant = "t"\n')
    with nodes(tmp, redis, {"a": agents}) as ns:
        a = ns["a"]
        wait_until(lambda: len(a.json("nodes")["nodes"]) == 1, what="the node")
        # its timeout capped at max_task_seconds, on the cluster as here
        r = a.run("s", '{"do": "sleep", "seconds": 10}')
        assert r.returncode == 1, r.stderr
        assert json.loads(r.stdout)["error"]["message"] == "task timed out after 1 s"
        assert a.run("s", '{"do": "echo"}').returncode == 0
        # the third of the minute is refused, naming the quota
        r = a.run("s", '{"do": "echo"}')
        assert r.returncode == 1
        assert r.stderr.strip() == ("corral: tenant t: rate_per_minute 2 reached; a task for s "
                                    "waits for the next minute's room")
