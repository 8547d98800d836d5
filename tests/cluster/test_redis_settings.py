"""A node says what the cluster's Redis risks when it is not configured as
docs/cluster.md asks (issue 36, "The cluster for a newcomer"): in its log, under
`corral nodes` and in its stats, read again while it runs."""

from __future__ import annotations

from pathlib import Path

import redis as sync_redis

from corral.cluster.redischeck import judged

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import nodes

NO_AOF = ("Redis runs without AOF (appendonly no): a Redis restart loses every task and "
          "outcome written since its last snapshot; set appendonly yes")
EVICTS = ("Redis's maxmemory-policy is allkeys-lru: when full it evicts keys (a task, an "
          "outcome, a node's liveness) without a word; set noeviction")
FSYNC_NO = ("Redis's appendfsync is no: a crash of its host may lose acknowledged tasks; "
            "set everysec or always")


def test_each_setting_is_judged_as_the_docs_ask() -> None:
    ok = {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"}
    assert judged(ok) == []
    assert judged({**ok, "appendfsync": "always"}) == []
    assert judged({**ok, "appendfsync": "no"}) == [FSYNC_NO]
    assert judged({**ok, "appendonly": "no", "appendfsync": "no"}) == [NO_AOF]
    assert judged({**ok, "maxmemory-policy": "allkeys-lru"}) == [EVICTS]


def test_a_redis_that_risks_tasks_is_said_to_and_one_mended_is_said_well(
        tmp: Path, redis: RedisServer) -> None:
    r = sync_redis.Redis.from_url(redis.url)
    try:
        r.config_set("appendonly", "no")
        r.config_set("maxmemory-policy", "allkeys-lru")
        # beats of 0.1 s: Redis's settings are read again every 30 beats (CHECK_BEATS),
        # 3 s here where the harness's 0.25 s beat waited 7.5 s for the mend to be seen
        with nodes(tmp, redis, {"a": ""}, beat=0.1) as ns:
            a = ns["a"]
            wait_until(lambda: a.nodes()["warnings"] == [NO_AOF, EVICTS],
                       what="the warnings of Redis's settings")
            shown = a.cli("nodes")
            assert shown.returncode == 0
            assert (f"WARNING: {NO_AOF} (docs/cluster.md#what-redis-must-be)"
                    in shown.stderr.splitlines()), shown.stderr
            assert a.json("stats")["cluster"]["redis_warnings"] == [NO_AOF, EVICTS]
            log = (a.state / "logs" / "corral.log").read_text()
            assert f"cluster: warning: {NO_AOF}" in log and f"cluster: warning: {EVICTS}" in log
            # mended while it runs: read again at a later beat, and said
            r.config_set("appendonly", "yes")
            r.config_set("maxmemory-policy", "noeviction")
            wait_until(lambda: a.nodes()["warnings"] == [], timeout=60,
                       what="the warnings gone")
            assert "cluster: Redis's configuration is now as docs/cluster.md asks" in (
                a.state / "logs" / "corral.log").read_text()
            assert "WARNING: Redis" not in a.cli("nodes").stderr
    finally:
        r.close()
