"""A cluster task's call in flight outlives its worker as a node's task's does
(tests/test_inflight.py, docs/durable.md#a-call-outlives-its-worker), its steps in
Redis: the worker SIGKILLed while its first call is held at the server, the server let
go once its replica has started again; the answer is kept under the claim's fence and answers
the retry's same call, so that the server has the call once."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from ..test_inflight import LIMIT, fifos, fleet, server_log
from .harness import STEADY_TTL, Node, nodes
from .test_takeover import said_of_leases

pytestmark = pytest.mark.timeout(90)


def _opened(path: Path, mode: str, what: str) -> str:
    """`path` (a FIFO) opened in `mode` ("r": read to its end) once the server opens its
    other end; past LIMIT, our own other end lets the thread go and the test fails."""
    got: list[str] = []

    def go() -> None:
        with open(path, mode) as f:
            got.append(f.read() if mode == "r" else "")
    thread = threading.Thread(target=go)
    thread.start()
    thread.join(LIMIT)
    if thread.is_alive():
        flags = os.O_WRONLY if mode == "r" else os.O_RDONLY
        os.close(os.open(path, flags | os.O_NONBLOCK))
        thread.join()
        raise AssertionError(f"timed out waiting for {what}")
    return got[0]


def attempts(n: Node, task_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = n.call("tasks.get", {"task_id": task_id})["attempts"]
    return found


def test_a_cluster_tasks_call_at_the_server_when_its_worker_is_killed_is_made_once(
        tmp: Path, redis: RedisServer) -> None:
    started, gate = fifos(tmp)
    # the steady TTL: the worker is killed here, never the node. A node lapsed under the
    # short one has its claim taken again from Redis, which counts the claim's first
    # attempt alone (its retries here are told with its outcome): the attempt after the
    # lapse is numbered as the one it replaces, and replays each call that one journaled
    with nodes(tmp, redis, {"a": fleet(tmp)}, ttl=STEADY_TTL) as ns:
        a = ns["a"]
        task_id = a.call("tasks.submit", {"agent": "inflight",
                                          "input": {"via": "sdk"}})["task_id"]
        assert _opened(started, "r", "the call held at the server") == "1\n"
        found = attempts(a, task_id)
        assert len(found) == 1, (found, said_of_leases(ns.values()))
        [first] = found
        pid = a.status()["inflight#0"]["pid"]  # (a cluster attempt's record has no pid)
        assert first["node"] == "a" and pid is not None
        os.kill(pid, signal.SIGKILL)
        # its death seen: the replica started again (the cluster's record of the task
        # tells the first attempt's end later, with the retry's)
        wait_until(lambda: a.status()["inflight#0"]["restarts"] == 1, LIMIT,
                   "the killed worker's replica started again")
        _opened(gate, "w", "the server to wait on its gate")
        done = a.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        assert done["output"] == {"results": ["worked 1", "worked 2"], "attempt": 2}
        first, second = done["attempts"]
        assert (first["outcome"], second["outcome"], second.get("replayed")) == (
            "lost", "succeeded", 1), (done["attempts"], said_of_leases(ns.values()))
        assert [line[:2] for line in server_log(tmp)] == [
            ["start", "1"], ["done", "1"], ["start", "2"], ["done", "2"]]
        assert a.call("stats.get")["tasks"]["steps"]["outlived"] == 1
