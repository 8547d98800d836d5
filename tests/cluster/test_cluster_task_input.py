"""A cluster task's input asked for (`tasks.get` input, REST `?input=true`): read from its
record, the bytes every claim gives its worker (decision 2045). The record's input is not
signed: a Redis writer's is shown, as it is what the task's worker runs; one that is not
one JSON value on one line is none, the rest of the view as it was, and so is such a
progress, unsigned too. With Redis away, a task this node runs is answered from its
engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis as redis_py

from corral.cluster.keys import Keys

from ..daemon_harness import free_port
from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import STEADY_TTL, nodes, run, sleeper
from .test_cluster_identity import Http

pytestmark = pytest.mark.timeout(120)
K = Keys("test")  # the harness's cluster name


def test_the_records_input_is_shown_and_an_unsigned_field_of_no_json_line_is_none(
        tmp: Path, redis: RedisServer) -> None:
    port = free_port()
    with nodes(tmp, redis, {"a": sleeper("sleepy") + f'[http]\nlisten = "127.0.0.1:{port}"\n'},
               ttl=STEADY_TTL) as ns:
        a = ns["a"]
        r = a.cli("token", "create", "reader", "--scope", "tasks:read")
        assert r.returncode == 0, r.stderr
        reader = Http(port, r.stdout.strip())
        sent = {"do": "echo", "note": "as sent"}
        done = run(a, "sleepy", sent)
        assert done["status"] == "succeeded", done
        task_id = done["task_id"]

        def views() -> list[Any]:
            status, body = reader("GET", f"/tasks/{task_id}?input=true")
            assert status == 200, body
            return [a.call("tasks.get", {"task_id": task_id, "input": True}), body]

        assert [v["input"] for v in views()] == [sent, sent]
        direct = redis_py.Redis.from_url(redis.url)
        try:
            # a Redis writer's input: what a claim of it would give its worker
            direct.hset(K.task(task_id), "input", b'{"by": "writer"}')
            assert [v["input"] for v in views()] == [{"by": "writer"}] * 2
            for kept in (b"not json", b'{"a": 1}\n', b"\xff"):
                direct.hset(K.task(task_id), "input", kept)
                for view in views():
                    assert "input" not in view, (kept, view)
                    assert (view["status"], view["output"]) == ("succeeded",
                                                                done["output"]), view
            direct.hset(K.task(task_id), "progress", b'{"progress": 1}')
            assert [v["progress"] for v in views()] == [{"progress": 1}] * 2
            for kept in (b"not json", b'{"a": 1}\n', b"\xff"):
                direct.hset(K.task(task_id), "progress", kept)
                for view in views():
                    assert view["progress"] is None, (kept, view)
                    assert (view["status"], view["output"]) == ("succeeded",
                                                                done["output"]), view
        finally:
            direct.close()


def test_with_redis_away_a_task_this_node_runs_says_its_input_from_its_engine(
        tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": sleeper("sleepy")}, ttl=STEADY_TTL) as ns:
        a = ns["a"]
        sent = {"do": "sleep", "seconds": 60}
        task_id = a.call("tasks.submit", {"agent": "sleepy", "input": sent})["task_id"]
        wait_until(lambda: a.call("tasks.get", {"task_id": task_id})["status"]
                   == "running", 60, "the task running on node a")
        redis.kill()
        view = a.call("tasks.get", {"task_id": task_id, "input": True})
        assert (view["status"], view["input"]) == ("running", sent), view
