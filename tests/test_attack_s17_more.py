"""The attacker's pass of session 17, its holes found by reading and left untested
(docs/security.md keeps them): what a writer of the cluster's Redis leaves where a view
reads a running attempt's count. Real daemons, a real redis-server, the agent
tests/durable_agent.py with no next attempt, so its calls are in no step."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_py

from .cluster.harness import STEADY_TTL, nodes
from .daemon_harness import PY, ROOT, counting_fleet
from .redis_harness import REDIS_SERVER, RedisServer, redis_server
from .test_attack_s17 import K
from .test_daemon_cli import wait_until

HERE = Path(__file__).parent


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    assert REDIS_SERVER is not None, "redis-server is not installed: . scripts/redis.sh"
    with redis_server(tmp_path / "redis") as server:
        yield server


@pytest.mark.timeout(120)
def test_a_running_count_of_more_digits_than_int_reads_is_none_not_a_failed_view(
        tmp_path: Path, redis: RedisServer) -> None:
    # int() refuses a text of more digits than the interpreter converts (ValueError):
    # the task's view at every node but the one running it failed while the value stayed
    once = counting_fleet(tmp_path, "durable", "durable_agent.py") + textwrap.dedent(f"""
        [agents.once]
        command = ["{PY}", "{HERE}/durable_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        retry_lost = 0
        tools = ["counting__*"]
        """)
    marker = tmp_path / "marker"
    with nodes(tmp_path, redis, {"a": once, "b": ""}, ttl=STEADY_TTL) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: sum(n["alive"] for n in b.nodes()["nodes"]) == 2, 60,
                   "both nodes alive")
        task_id = b.call("tasks.submit", {"agent": "once", "input": {
            "calls": 3, "stop_after": 2, "how": "hang", "marker": str(marker)}})["task_id"]
        wait_until(marker.exists, 60, "the worker past call 2")
        wait_until(lambda: b.call("tasks.get", {"task_id": task_id})["tool_calls"] == 2,
                   60, "b's view of the 2 calls")
        direct = redis_py.Redis.from_url(redis.url)
        try:
            kept = K.running_calls(direct.hget(K.task(task_id), "owner").decode())
            assert direct.hgetall(kept) == {task_id.encode(): b"2"}
            for digits in (b"9" * 5000, b"1" + b"0" * 30):
                direct.hset(kept, task_id, digits)
                view = b.call("tasks.get", {"task_id": task_id})
                assert (view["status"], view["tool_calls"]) == ("running", 0), view
            # the node running it reads its engine's count, not the hash
            assert a.call("tasks.get", {"task_id": task_id})["tool_calls"] == 2
            assert a.call("tasks.cancel", {"task_id": task_id})["status"] == "cancelled"
        finally:
            direct.close()
