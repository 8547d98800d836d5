"""A running cluster attempt's tool calls journaled nowhere are in its view at every node
(decision 2095): the node running it writes its running attempts' counts to its
incarnation's hash once a beat (runningcalls.py), which another node's view reads through
the record's owner. A count a Redis writer made no number is none (the record's count),
never a failed view; the hash goes with the last count it held. A real redis-server and
real daemons; the agent is tests/durable_agent.py, with no next attempt (`retry_lost = 0`),
so its calls are in no step."""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_py

from ..daemon_harness import PY, ROOT, counting_fleet
from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import STEADY_TTL, Node, nodes
from .test_cluster_trust import K

pytestmark = pytest.mark.timeout(120)
HERE = Path(__file__).parent.parent


@contextlib.contextmanager
def two_with_once(tmp: Path, redis: RedisServer) -> Iterator[tuple[Node, Node]]:
    """Nodes a and b, both alive; `once`, tests/durable_agent.py with no next attempt
    (`retry_lost = 0`, so its calls are in no step), on a alone."""
    once = counting_fleet(tmp, "durable", "durable_agent.py") + textwrap.dedent(f"""
        [agents.once]
        command = ["{PY}", "{HERE}/durable_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        retry_lost = 0
        tools = ["counting__*"]
        """)
    with nodes(tmp, redis, {"a": once, "b": ""}, ttl=STEADY_TTL) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: sum(n["alive"] for n in b.nodes()["nodes"]) == 2, 60,
                   "both nodes alive")
        yield a, b


def test_a_running_attempts_calls_are_in_its_view_at_another_node(
        tmp: Path, redis: RedisServer) -> None:
    marker = tmp / "marker"
    with two_with_once(tmp, redis) as (a, b):
        task_id = b.call("tasks.submit", {"agent": "once", "input": {
            "calls": 3, "stop_after": 2, "how": "hang", "marker": str(marker)}})["task_id"]
        wait_until(marker.exists, 60, "the worker past call 2")
        assert a.call("tasks.get", {"task_id": task_id})["tool_calls"] == 2
        wait_until(lambda: b.call("tasks.get", {"task_id": task_id})["tool_calls"] == 2,
                   60, "b's view of the 2 calls")
        direct = redis_py.Redis.from_url(redis.url)
        try:
            kept = K.running_calls(direct.hget(K.task(task_id), "owner").decode())
            assert direct.hgetall(kept) == {task_id.encode(): b"2"}
            direct.hset(kept, task_id, b"two")
            view = b.call("tasks.get", {"task_id": task_id})
            assert (view["status"], view["tool_calls"]) == ("running", 0), view
            assert a.call("tasks.cancel", {"task_id": task_id})["status"] == "cancelled"
            wait_until(lambda: not direct.exists(kept), 60, "the hash gone")
            # (the count its end carried: decision 2035)
            assert b.call("tasks.get", {"task_id": task_id})["tool_calls"] == 2
        finally:
            direct.close()
