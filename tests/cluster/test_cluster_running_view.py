"""A running cluster task's view says no outcome (decision 2046): a node writes a task's
output and error only with its end, signed with the outcome (trust.OUTCOME), and a record
that has ended is read only when that verifies; a record still running, queued or
suspended holds none a node wrote, so the output or error a Redis writer puts there is no
task's, never shown. A real redis-server and a real daemon with the cluster key."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis as redis_py

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import nodes, sleeper
from .test_cluster_trust import K, key_file, keyed

pytestmark = pytest.mark.timeout(120)


def test_a_running_tasks_view_shows_no_output_or_error_a_redis_writer_put_there(
        tmp: Path, redis: RedisServer) -> None:
    key = key_file(tmp)
    with nodes(tmp, redis, {"a": sleeper("sleepy")}, extra=keyed(key)) as ns:
        a = ns["a"]
        task_id = a.call("tasks.submit", {"agent": "sleepy", "input": {
            "do": "sleep", "seconds": 60}})["task_id"]
        wait_until(lambda: a.call("tasks.get", {"task_id": task_id})["status"]
                   == "running", 60, "the task running on node a")
        direct = redis_py.Redis.from_url(redis.url)
        try:
            direct.hset(K.task(task_id), mapping={
                "output": b'"forged"', "error": b'{"code": 1, "message": "forged"}'})
            view = a.call("tasks.get", {"task_id": task_id})
            assert (view["status"], view["output"], view["error"]) == (
                "running", None, None), view
            # bytes that are no failure's JSON are no more than none, never a failed read
            direct.hset(K.task(task_id), "error", b"not json")
            view = a.call("tasks.get", {"task_id": task_id})
            assert (view["status"], view["output"], view["error"]) == (
                "running", None, None), view
            # (the writer's fields gone, the task's end verifies: cancelled)
            direct.hdel(K.task(task_id), "output", "error")
            assert a.call("tasks.cancel", {"task_id": task_id})["status"] == "cancelled"
        finally:
            direct.close()
