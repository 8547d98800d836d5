"""A claim is a write the replicas confirm before its task starts (decision 1800): a task
no replica holds yet does not run, so the primary's kill -9 and a replica's promotion
cannot leave a step run by a task the promoted Redis never had, beside the one its run
then submits anew (the last stop's q1: step each4 done by two tasks).

The failover is made by hand, without Sentinels, at an exact write: the replica follows
the primary through a proxy that stops the replication stream at the step's submit, the
primary is killed by pid, the replica promoted (a second replica behind it confirms its
writes), and the nodes' own proxy turned to it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redispy

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import Node
from .proxy import Proxy
from .test_failover import FAILOVER_TTL, linked

pytestmark = pytest.mark.timeout(240)

# the second step's input holds a value only its rendering makes (the run's record holds
# the template and the first step's output, never the two together): the replication
# stream is stopped at the write that submits it
TWO = """
[workflows.two]
timeout = 600
[[workflows.two.steps]]
name = "first"
agent = "wf"
input = { op = "echo", mark = "first", dir = "$input.dir" }
[[workflows.two.steps]]
name = "second"
agent = "wf"
input = { op = "echo", mark = "second", dir = "$input.dir", tag = "x{$steps.first.output.mark}y" }
"""
RENDERED = b"xfirsty"
# a one-step workflow whose step's input is stopped at the replica the same way
ONE = """
[workflows.one]
timeout = 600
[[workflows.one.steps]]
name = "only"
agent = "wf"
input = { op = "echo", mark = "only", dir = "$input.dir", tag = "stall-{$input.n}-here" }
"""


def follows(replica: RedisServer) -> bool:
    """`replica` is a replica whose link to its primary is up and loaded."""
    c = redispy.Redis(port=replica.port, decode_responses=True, socket_timeout=2)
    try:
        info = c.info("replication")
        return bool(info["role"] == "slave" and info["master_link_status"] == "up"
                    and not info["master_sync_in_progress"])
    finally:
        c.close()


@contextlib.contextmanager
def node_via(tmp: Path, primary: RedisServer, workflows: str) -> Iterator[tuple[Node, Proxy]]:
    """Node a (agent `wf`, two replicas, and `workflows`), its Redis the primary through
    a proxy (turned to another Redis at a failover); `ack_replicas = 1`."""
    from ..test_workflows import agent_toml

    front = Proxy(primary.port)
    (tmp / "a").mkdir()
    a = Node(tmp / "a", "a", primary, agent_toml(tmp / "a") + workflows, ttl=FAILOVER_TTL,
             extra="ack_replicas = 1\nack_timeout = 0.5\n")
    a.config.write_text(a.config.read_text().replace(primary.url, front.url))
    try:
        a.start()
        wait_until(lambda: any(n["alive"] for n in a.nodes()["nodes"]),
                   what="node a alive")
        yield a, front
    finally:
        a.close()
        front.close()


@contextlib.contextmanager
def stalled_chain(tmp: Path) -> Iterator[tuple[RedisServer, Proxy, RedisServer]]:
    """A primary; its replica, following it through a proxy (the link the test stalls);
    and a replica of that replica, which confirms its writes once it is promoted."""
    now = ("--repl-diskless-sync-delay", "0")
    primary = RedisServer(tmp / "primary", args=now).start()
    link = Proxy(primary.port)
    replica = RedisServer(tmp / "replica", args=(
        *now, "--replicaof", "127.0.0.1", str(link.port)))
    behind = RedisServer(tmp / "behind", args=("--replicaof", "127.0.0.1", str(replica.port)))
    try:
        replica.start()
        behind.start()
        wait_until(lambda: linked(primary, 1) and follows(behind),
                   what="the replicas in sync")
        yield primary, link, replica
    finally:
        for server in (primary, replica, behind):
            server.kill()
        link.close()


def test_a_step_whose_submit_no_replica_has_runs_once_after_a_failover(tmp: Path) -> None:
    from ..test_workflows import _marks

    with stalled_chain(tmp) as (primary, link, replica), \
            node_via(tmp, primary, TWO) as (a, front):
        marks = tmp / "marks"
        marks.mkdir()
        link.stall(RENDERED)
        run_id = a.call("workflows.run", {"name": "two", "input": {
            "dir": str(marks)}})["run_id"]
        log = a.state / "logs" / "corral.log"
        # the second step's task, submitted and claimed at its submission on the primary
        # alone, is not confirmed: the driver stops (decision 1771), and the task is given
        # back as an orphan and claimed again by the node's pull. Until decision 1800 that
        # claim ran it at once; now it waits for a replica
        unconfirmed = ("cluster: pulling tasks of wf: 0 of the 1 replicas ack_replicas "
                       "asks for confirmed it within 0.5 s (ack_timeout)")
        wait_until(lambda: "second" in _marks(marks) or unconfirmed in log.read_text(),
                   timeout=60, what="the second step's task claimed again")
        primary.kill()
        promote = redispy.Redis(port=replica.port, socket_timeout=5)
        try:
            promote.execute_command("REPLICAOF", "NO", "ONE")
        finally:
            promote.close()
        wait_until(lambda: linked(replica, 1), what="the promoted replica's replica")
        front.upstream = ("127.0.0.1", replica.port)
        front.cut()
        front.restore()
        view = ended(a, run_id)
        rows = {s["step"]: s["task_id"] for s in view["steps"]}
        marked = _marks(marks)
        # each step's work done once, by its row's task
        assert marked == {step: {rows[step]} for step in ("first", "second")}, (
            marked, rows)
        assert len(list(marks.iterdir())) == 2, sorted(f.name for f in marks.iterdir())


def test_a_claim_at_submission_not_confirmed_runs_once_the_replica_is_back(
        tmp: Path) -> None:
    """A fresh node's first claim at submission, not confirmed, is not taken; it goes back
    as an orphan like any claim the node holds without running it (decision 1800), and
    runs once a replica confirms its claim again."""
    from ..test_workflows import _marks

    with stalled_chain(tmp) as (primary, link, _replica), \
            node_via(tmp, primary, ONE) as (a, _front):
        marks = tmp / "marks"
        marks.mkdir()
        link.stall(b"stall-4242-here")
        run_id = a.call("workflows.run", {"name": "one", "input": {
            "dir": str(marks), "n": 4242}})["run_id"]
        log = a.state / "logs" / "corral.log"
        wait_until(lambda: f"workflows: run {run_id} (one) stopped: the task was not "
                           "acknowledged" in log.read_text(),
                   timeout=60, what="the run's driver stopped, its step unconfirmed")
        assert not _marks(marks)
        # the replica follows again: it asks again from where its stream stopped
        link.cut()
        link.restore()
        view = ended(a, run_id)
        assert _marks(marks) == {"only": {view["steps"][0]["task_id"]}}
        assert len(list(marks.iterdir())) == 1


def ended(a: Node, run_id: str) -> dict[str, Any]:
    view: dict[str, Any] = wait_until(
        lambda: (v := a.call("runs.get", {"run_id": run_id}))["status"] != "running" and v,
        timeout=60, what="the run's end")
    assert view["status"] == "succeeded", view
    return view
