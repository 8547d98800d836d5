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

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import TTL, nodes, run, sleeper

AGENTS = 300  # well past the node's pool of connections for everything but those reads


def test_a_node_of_more_idle_agents_than_its_pool_stays_a_member(
        tmp: Path, redis: RedisServer) -> None:
    fleet = "".join(sleeper(f"idle{i:03d}") for i in range(AGENTS))
    with nodes(tmp, redis, {"a": fleet}) as ns:
        a = ns["a"]
        wait_until(lambda: sum(1 for v in a.call("stats.get")["agents"].values()
                               if v["replicas"] >= 1) == AGENTS, timeout=180,
                   what=f"{AGENTS} agents' replicas up")
        before = a.call("stats.get")["cluster"]
        # every puller in its blocking read now: four of the node's TTLs go by, each look
        # finding it a member, never fenced
        until = time.monotonic() + 4 * TTL

        def member_throughout() -> bool:
            st = a.call("stats.get")["cluster"]
            assert (st["state"], st["fences"], st["incarnation"]) == (
                "member", 0, before["incarnation"]), st
            return time.monotonic() >= until

        wait_until(member_throughout, timeout=30, what="four TTLs as a member")
        last = f"idle{AGENTS - 1:03d}"
        done = run(a, last, {"sleep": 0})
        assert (done["status"], done["attempts"][-1]["node"]) == ("succeeded", "a"), done
