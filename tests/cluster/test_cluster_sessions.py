"""Sessions on a cluster (issue 39 item 4, docs/durable.md#sessions): not kept by the
cluster's queue yet, so a cluster task naming a session is refused with the reason, and
runs as a session on the node with --local."""

from __future__ import annotations

import json
from pathlib import Path

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import nodes, sleeper


def test_a_cluster_task_naming_a_session_is_refused_and_runs_local(
        tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": sleeper("w")}) as ns:
        a = ns["a"]
        wait_until(lambda: len(a.json("nodes")["nodes"]) == 1, what="the node")
        r = a.cli("run", "w", "--input", '{"do": "echo"}', "--session", "s")
        assert r.returncode == 1
        assert r.stderr == (
            "corral: invalid params: session is not kept by the cluster's queue (a "
            "session's tasks run one at a time on the node that holds its state; not "
            "built for cluster tasks yet): submit it with local = true (corral run "
            "--local) to run the session on this node\n")
        r = a.cli("run", "w", "--input", '{"do": "echo"}', "--session", "s", "--local")
        assert r.returncode == 0, r.stderr
        listed = json.loads(a.cli("sessions", "--json").stdout)["sessions"]
        assert [(s["agent"], s["session"], s["tasks"]) for s in listed] == [("w", "s", 1)]
