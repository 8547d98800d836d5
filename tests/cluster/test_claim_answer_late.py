"""A claim whose answer reaches its node late is run once (decision 2240): a loaded host
keeps a claim's answer, or the replicas' confirmation of it, from its node for beats, and
meanwhile the node's beat found the entry pending with it, idle, and not among what it
runs, took it for an orphan whose answer was lost and queued it again; the node then
started it from the answer, and ran it a second time from the queue (session 18's loaded
runs of test_cluster_suspension and test_cluster_approvals).

The answer is held at a TCP proxy between the node and a real redis-server, a claim that
ran, its answer late (a pull's, and a claim at submission's); the node is a real daemon.
And a turn given to a live node, taken
back as an orphan while that node claims it, stays the node's (decision 2241)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.cluster import scripts
from corral.cluster.connection import connect
from corral.cluster.keys import GROUP
from corral.cluster.reaper import ORPHAN_BEATS, take_over
from corral.cluster.scripts import RedisPart, Scripts
from corral.cluster.trust import Trust
from corral.supervisor.config import ClusterSettings

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from . import test_scripts
from .harness import BEAT, CALM_TTL, Node, sleeper
from .proxy import Proxy
from .test_scripts import TID, K, claim

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


async def test_a_turn_given_to_a_live_node_claimed_as_it_is_taken_back_stays_its(
        redis: RedisServer, client: Any) -> None:
    """A turn given to node n (its entry delivered to n/1, its task still queued, as
    STICKY_CLAIMS finds it) is taken back as an orphan, and n's claim of it lands between
    the takeover's read of the record and its TAKEOVER (held at a proxy on its way to
    Redis): TAKEOVER finds the record not as read and does nothing, the task running for
    n/1 under its entry. On the tree before it queued the task again while n ran it."""
    s = Scripts(client)
    tid, stream = TID.format(1), K.stream("acme", "w", 0)
    # (its retries given at its submission: the claim leaves retries_left as it was)
    await s.submit(keys=[K.task(tid), stream, K.priorities("acme", "w"), K.agents, K.live],
                   args=[tid, "w", b'{"x":1}', 0, "", "2", "1.0", "n", 0, "0", "",
                         *test_scripts.LAST])
    await client.xreadgroup(GROUP, "n/1", {stream: ">"}, count=1)
    entry = await client.hget(K.task(tid), "entry")
    proxy = Proxy(redis.port)
    through = connect(ClusterSettings(redis=proxy.url, name="t", node="r"), "r")
    try:
        gate = proxy.gate(b"EVALSHA", sha(scripts.TAKEOVER), answers=False)
        taking = asyncio.ensure_future(take_over(
            RedisPart(Scripts(through), K, Trust(None, "t", print)), stream, entry, tid,
            "n/1", orphan=True, reason="node n did not run it", kept_for=60, specs={}))
        assert await asyncio.to_thread(gate.reached.wait, 30), "TAKEOVER never sent"
        assert await claim(s, client, 1, consumer="n/1")  # n's claim, meanwhile
        gate.opened.set()
        assert await taking is None
        rec = await client.hmget(K.task(tid), "status", "owner", "entry")
        pending = await client.xpending_range(stream, GROUP, "-", "+", 10)
        assert (rec, [(p["message_id"], p["consumer"]) for p in pending]) == (
            [b"running", b"n/1", entry], [(entry, b"n/1")])
    finally:
        gate.opened.set()
        await through.aclose()
        proxy.close()


def test_a_claim_at_submission_answered_late_runs_once(tmp: Path, redis: RedisServer
                                                       ) -> None:
    """A task submitted on a, whose one slot is free, is claimed at its submission
    (SUBMIT_CLAIM) and Redis's answer reaches a HELD seconds later: it runs once, on a.
    On the tree before: queued again as an orphan meanwhile, and run twice."""
    with runner_behind(tmp, redis) as (a, _, proxy):
        proxy.hold(HELD, b"EVALSHA", sha(scripts.SUBMIT_CLAIM))
        task_id = submit(a, {"do": "echo"})
        done = a.call("tasks.get", {"task_id": task_id, "wait": True})
        assert (done["status"], [(x["node"], x["outcome"]) for x in done["attempts"]]) == (
            "succeeded", [("a", "succeeded")]), done
        st = a.call("stats.get")["cluster"]
        assert (st["claimed"], st["claimed_at_submit"], st["orphans"], st["requeued"]) == (
            1, 1, 0, 0), st
