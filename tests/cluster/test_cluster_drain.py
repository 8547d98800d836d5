"""A cluster node that stops drains (issue 37, decision 164): what it runs finishes
there, once, on its first attempt, and it reads no more of the cluster's tasks: the
other nodes run them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import nodes, sleeper
from .test_takeover import all_alive, outcomes, running_on, submit

pytestmark = pytest.mark.timeout(60)


def test_a_stopping_node_finishes_what_it_runs_and_takes_nothing_more(
        tmp: Path, redis: RedisServer) -> None:
    # its own drain (the harness's nodes have none); no retries: a stop spends none
    worker = sleeper("sleepy", retries=0, concurrency=2) + "drain_timeout = 30\n"
    with nodes(tmp, redis, {"a": "", "b": worker, "c": worker}) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: all_alive(a), what="three nodes alive")
        ids = submit(a, 8, 2.0)
        wait_until(lambda: running_on(b) == 2, what="b busy")
        started = time.monotonic()
        assert b.stop() == 0
        assert time.monotonic() - started >= 1.0  # it waited for its tasks
        log = (b.state / "logs" / "corral.log").read_text()
        assert ": 2 finished (succeeded 2)" in log, log
        assert "tasks handed back" not in log
        done = outcomes(a, ids)
        assert [(d["status"], len(d["attempts"])) for d in done] == [("succeeded", 1)] * 8
        # b ran the two it had when it began to stop, and no other
        assert sorted(d["attempts"][0]["node"] for d in done) == ["b", "b"] + ["c"] * 6
