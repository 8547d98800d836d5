"""A node of many agents, each idle with a free slot: each one's puller waits for its
next task in a blocking read that holds a connection to Redis for a beat. More of them
than the node's pool has connections took every connection, and the node's beat (the
renewal of its liveness key, which must land within a beat) waited behind them: the key
lapsed, the other nodes took its tasks over, and it fenced itself, again and again. The
blocking reads have a pool of their own (decision 743): the node stays a member, and a
task of its last agent is still read and run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import nodes, run, sleeper

# a beat of 4 s: without the readers' own pool the renewal waits some three beats for a
# connection and the key lapses (checked at 3, 9 and 12 s); with it, only a loop starved
# that long would lapse it: beside two busy loops (load ~15) this node's beats, due every
# 2 s, came up to 5.5 s apart, 3.5 s late, so a TTL of 6 s held by half a second and one
# of 3 s did not (decision 857); at 12 s a beat may come 8 s late, which lets the test
# run beside the others: alone, its three TTLs held four workers idle (decision 982)
TTL, BEAT = 12.0, 4.0
AGENTS = 300  # well past the node's pool of connections for everything but those reads
# the starts' bound, three TTLs as a member, and the run at the end
pytestmark = pytest.mark.timeout(300)


def test_a_node_of_more_idle_agents_than_its_pool_stays_a_member(
        tmp: Path, redis: RedisServer) -> None:
    # forked from a zygote (decision 961): what is tested is the node's pool, not how its
    # 300 workers start, and 300 cold interpreters were a third of the file's CPU
    fleet = "".join(sleeper(f"idle{i:03d}", warm=True) for i in range(AGENTS))
    # (a TTL of a few seconds: starting 300 workers on a loaded host must not be what
    # delays a beat; the blocking reads hold a connection a beat each all the same).
    # READY waits for every agent up, which took past the harness's minute at load:
    # the test's own bound for them
    with nodes(tmp, redis, {"a": fleet}, ttl=TTL, beat=BEAT, ready=180) as ns:
        a = ns["a"]
        # each look a read of every agent's stats, in the daemon and in this process:
        # made seldom, as the starts of all of them take seconds
        wait_until(lambda: sum(1 for v in a.call("stats.get")["agents"].values()
                               if v["replicas"] >= 1) == AGENTS, timeout=180,
                   what=f"{AGENTS} agents' replicas up", every=0.5)
        stats = a.call("stats.get")
        assert stats["supervisor"]["cold_fallbacks"] == 0  # every one forked
        before = stats["cluster"]
        # every puller in its blocking read now: three of the node's TTLs go by, each look
        # finding it the same member, never fenced again
        until = time.monotonic() + 3 * TTL

        def member_throughout() -> bool:
            st = a.call("stats.get")["cluster"]
            assert (st["state"], st["fences"], st["incarnation"]) == (
                "member", before["fences"], before["incarnation"]), st
            return time.monotonic() >= until

        # a fence between two looks is still seen at the next: its count and the
        # incarnation only grow, so a look each second holds the node to them throughout
        wait_until(member_throughout, timeout=60, what="three TTLs as a member", every=1.0)
        last = f"idle{AGENTS - 1:03d}"
        done = run(a, last, {"sleep": 0})
        assert (done["status"], done["attempts"][-1]["node"]) == ("succeeded", "a"), done
