"""An attacker's pass over a node's beat (issue 86's pass; tests/cluster/test_reaper_garbage.py
has the reaper's own): garbage a writer of the cluster's Redis leaves where a beat reads
stops none of its steps. A real node, a real Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis as redis_py

from corral.cluster.keys import GROUP, Keys

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import nodes, run
from .test_cluster_elastic import ELASTIC

pytestmark = pytest.mark.timeout(60)
K = Keys("test")


def test_a_priority_that_is_no_number_or_a_name_that_is_no_utf8_stops_no_beat(
        tmp: Path, redis: RedisServer) -> None:
    # a priority that is no number among an asleep elastic agent's: the backlog's step
    # (and its puller) raised on it, every beat, so no cluster task ever woke the agent;
    # and a consumer's
    # name that is not UTF-8 beside a dead one's: the retention's step raised on it, so
    # no dead consumer was ever removed
    direct = redis_py.Redis.from_url(redis.url)
    try:
        direct.zadd(K.priorities("default", "sleepy"), {"soon": 0})
        # an ask's id that is not UTF-8 among the asks due and the pending ones: the
        # asks' sweep, the beat's first step, raised on it, and every listing of asks
        direct.zadd(K.ask_deadlines, {b"\xff": 0})
        direct.zadd(K.asks_pending(), {b"\xff": 0})
        # and a running durable call's: the takeover of calls raised on it, every beat,
        # and the beat's steps after it (the retention's) never ran
        direct.zadd(K.calls_running, {b"\xff": 0})
        with nodes(tmp, redis, {"b": ELASTIC}) as ns:
            b = ns["b"]
            done = run(b, "sleepy", {"do": "sleep", "seconds": 0.01})
            assert done["status"] == "succeeded"
            assert b.call("approvals.list") == {"asks": []}
            wait_until(lambda: not direct.zrange(K.ask_deadlines, 0, -1),
                       what="the garbled ask's deadline swept")
            stream = K.stream("default", "sleepy", 0)
            for name in (b"\xff\xfe", b"gone/1"):
                direct.xgroup_createconsumer(stream, GROUP, name)
            wait_until(lambda: b.call("stats.get")["cluster"]["retention"][
                "consumers_removed"] >= 1, what="the dead consumer removed")
            names = [c["name"] for c in direct.xinfo_consumers(stream, GROUP)]
            assert b"gone/1" not in names and b"\xff\xfe" in names
    finally:
        direct.close()
