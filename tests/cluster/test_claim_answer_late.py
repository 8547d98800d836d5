"""A claim whose answer reaches its node late is run once (decision 2240): a loaded host
keeps a claim's answer, or the replicas' confirmation of it, from its node for beats, and
meanwhile the node's beat found the entry pending with it, idle, and not among what it
runs, took it for an orphan whose answer was lost and queued it again; the node then
started it from the answer, and ran it a second time from the queue (session 18's loaded
runs of test_cluster_suspension and test_cluster_approvals).

The answer is held at a TCP proxy between the node and a real redis-server, a claim that
ran, its answer late; the node is a real daemon."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.cluster import scripts
from corral.cluster.reaper import ORPHAN_BEATS

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import BEAT, CALM_TTL, Node, sleeper
from .proxy import Proxy

pytestmark = pytest.mark.timeout(120)

# long past the beats after which an entry its node neither runs nor refreshed is taken
# for an orphan, a few beats more for a loaded host's late beat
HELD = (ORPHAN_BEATS + 6) * BEAT


def sha(script: str) -> bytes:
    """The digest a node's EVALSHA of `script` names (redis-py's register_script)."""
    return hashlib.sha1(script.encode()).hexdigest().encode()


@contextlib.contextmanager
def runner_behind(tmp: Path, redis: RedisServer) -> Iterator[tuple[Node, Node, Proxy]]:
    """Node a runs agent w (one task at a time), its Redis through a proxy; node b runs
    nothing, where the tests submit. Both on a TTL no stall lapses: the run twice here is
    not a lapsed node's."""
    proxy = Proxy(redis.port)
    a = Node(tmp / "a", "a", redis, sleeper("w"), ttl=CALM_TTL)
    a.config.write_text(a.config.read_text().replace(redis.url, proxy.url))
    b = Node(tmp / "b", "b", redis, "", ttl=CALM_TTL)
    try:
        a.start()
        b.start()
        wait_until(lambda: sum(n["alive"] for n in b.nodes()["nodes"]) == 2,
                   what="two nodes alive")
        yield a, b, proxy
    finally:
        b.close()
        a.close()
        proxy.close()


def submit(n: Node, task_input: dict[str, Any]) -> str:
    return str(n.call("tasks.submit", {"agent": "w", "input": task_input})["task_id"])


def test_a_pulls_claim_answered_late_runs_once(tmp: Path, redis: RedisServer) -> None:
    """a's pull claims a task and Redis's answer reaches a HELD seconds later: the task
    runs once, on a, not taken back as an orphan meanwhile. On the tree before: its entry
    was queued again ("its claim's answer was lost or not confirmed") and a ran it twice,
    its first attempt lost."""
    with runner_behind(tmp, redis) as (a, b, proxy):
        gate = tmp / "gate"
        first = submit(b, {"do": "await", "path": str(gate)})
        wait_until(lambda: a.call("stats.get")["tasks"]["total"]["running"] == 1,
                   what="the first task running on a")
        # a's one slot is taken: the second waits unread, and a's next claim is its pull's
        # of it once the first ends (a pull claims nothing while no slot is free)
        second = submit(b, {"do": "echo"})
        proxy.hold(HELD, b"EVALSHA", sha(scripts.READ_CLAIM))
        gate.touch()
        done = [b.call("tasks.get", {"task_id": t, "wait": True}) for t in (first, second)]
        assert [(d["status"], [(x["node"], x["outcome"]) for x in d["attempts"]])
                for d in done] == [("succeeded", [("a", "succeeded")])] * 2, done
        st = a.call("stats.get")["cluster"]
        assert (st["claimed"], st["orphans"], st["requeued"]) == (2, 0, 0), st
