"""A cluster node refuses `corral upgrade` (decision 280): its membership, lease and
claims are not carried across the exec, and a new image that joined as itself would run
its claimed tasks twice. Refused with the way (a restart, whose drain hands its tasks to
the other nodes), nothing changed: the same daemon, the same agents, the same
incarnation, and the tasks it runs finish there once."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import nodes, sleeper
from .test_takeover import outcomes, running_on, submit

pytestmark = pytest.mark.timeout(60)

REFUSED = ("corral: upgrade refused, nothing changed: a node of a cluster is upgraded by a "
           "restart (`systemctl restart corral`: its drain hands its tasks to the other "
           "nodes)")


def test_a_cluster_node_refuses_an_upgrade_and_changes_nothing(
        tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": sleeper("sleepy")}) as ns:
        a = ns["a"]
        assert a.proc is not None
        wait_until(lambda: [n["alive"] for n in a.json("nodes")["nodes"]] == [True],
                   what="the node alive")
        ids = submit(a, 1, 2.0)
        wait_until(lambda: running_on(a) == 1, what="a busy")
        before = {k: (v["pid"], v["restarts"]) for k, v in a.status().items()}
        incarnation = [n["incarnation"] for n in a.json("nodes")["nodes"]]
        r = a.cli("upgrade")
        assert (r.returncode, r.stdout, r.stderr.strip()) == (1, "", REFUSED), r
        report = a.json("upgrade", "--report")
        assert (report["state"], report["pid"]) == ("refused", a.proc.pid), report
        assert report["error"] == REFUSED.removeprefix(
            "corral: upgrade refused, nothing changed: ")
        assert a.proc.poll() is None
        assert {k: (v["pid"], v["restarts"]) for k, v in a.status().items()} == before
        assert [n["incarnation"] for n in a.json("nodes")["nodes"]] == incarnation
        log = (a.state / "logs" / "corral.log").read_text()
        assert "upgrade refused, nothing changed: a node of a cluster" in log
        done = outcomes(a, ids)
        assert [(d["status"], len(d["attempts"])) for d in done] == [("succeeded", 1)]
