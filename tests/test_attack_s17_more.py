"""The attacker's pass of session 17, its holes found by reading and left untested
(docs/security.md keeps them): what a writer of the cluster's Redis leaves where a view
reads a running attempt's count (real daemons, a real redis-server, the agent
tests/durable_agent.py with no next attempt, so its calls are in no step); a workflow
definition nested past what a recursive walk of it can go (a daemon in process)."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py

from corral import jsonrpc, redact
from corral.daemon.caller import Caller
from corral.jsonrpc import RpcError

from .cluster.test_cluster_running_calls import two_with_once
from .daemon_harness import in_process
from .redis_harness import REDIS_SERVER, RedisServer, redis_server
from .test_attack_s17 import K
from .test_daemon_cli import wait_until
from .test_http_api import SOCKET

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
    marker = tmp_path / "marker"
    with two_with_once(tmp_path, redis) as (a, b):
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


# -- a workflow definition nested deep ------------------------------------------------------

def nested(depth: int) -> Any:
    value: Any = "$input"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.deadline(60)
async def test_a_workflow_definition_nested_deep_is_refused_before_its_references_are_read(
        tmp_path: Path) -> None:
    # the references' walks (refs.py `refs_in` at the check, `build` at each step) recurse
    # a frame a level, and the doors' decoders take a definition some nine hundred levels
    # deep: the catalog's depth check keeps such a step's input from them, for a tenant
    # and the operator, at an add and an update (without it, this one is added)
    deep = nested(900)
    fleet = textwrap.dedent("""
        [tenants.t0]
        [agents.a]
        command = ["true"]
        replicas = 0
        tenant = "t0"
        """)
    async with in_process(tmp_path, fleet) as d:
        for who in (SOCKET, Caller(via="http", token="tok-t0", tenant="t0")):
            with pytest.raises(RpcError) as said:
                await d.dispatcher.call(who, "workflows.add", {"workflows": {"w": {
                    "steps": [{"name": "s", "agent": "a", "input": deep}]}}})
            assert (said.value.code, said.value.message) == (
                jsonrpc.INVALID_PARAMS, "workflows.add: workflows.w: tables and lists "
                f"nested more than {redact.MAX_DEPTH} deep")
        await d.dispatcher.call(SOCKET, "workflows.add", {"workflows": {"w": {
            "steps": [{"name": "s", "agent": "a", "input": "$input"}]}}})
        with pytest.raises(RpcError) as said:
            await d.dispatcher.call(SOCKET, "workflows.update", {"name": "w", "set": {
                "steps": [{"name": "s", "agent": "a", "input": deep}]}})
        assert (said.value.code, said.value.message) == (
            jsonrpc.INVALID_PARAMS, "workflows.update: workflows.w: tables and lists "
            f"nested more than {redact.MAX_DEPTH} deep")
        history = await d.dispatcher.call(SOCKET, "workflows.history", {"name": "w"})
        assert [r.revision for r in history.revisions] == [1]
