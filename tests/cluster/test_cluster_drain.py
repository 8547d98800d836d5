"""A cluster node that stops drains (issue 37, decision 164): what it runs finishes
there, once, on its first attempt, and it reads no more of the cluster's tasks: the
other nodes run them."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import STEADY_TTL, nodes, sleeper
from .test_takeover import all_alive, held, outcomes, running_on

pytestmark = pytest.mark.timeout(60)


def test_a_stopping_node_finishes_what_it_runs_and_takes_nothing_more(
        tmp: Path, redis: RedisServer) -> None:
    # its own drain (the harness's nodes have none); no retries: a stop spends none
    worker = sleeper("sleepy", retries=0, concurrency=2) + "drain_timeout = 30\n"
    with nodes(tmp, redis, {"a": "", "b": worker, "c": worker}, ttl=STEADY_TTL) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: all_alive(a), what="three nodes alive")
        # every task runs until the gate, made once b drains: b's two are still running
        # however late on a loaded host a look sees them (tasks of a fixed time ended
        # first there, and b took two more)
        gate = tmp / "gate"
        ids = [held(a, gate) for _ in range(8)]
        wait_until(lambda: running_on(b) == 2, what="b busy")
        assert b.proc is not None
        b.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: any(n["node"] == "b" and n["draining"]
                               for n in a.nodes()["nodes"]), timeout=30, what="b draining")
        assert b.proc.poll() is None  # it waits for its tasks
        gate.touch()
        assert b.proc.wait(30) == 0  # (a second SIGTERM, as b.stop() sends, stops at once)
        log = (b.state / "logs" / "corral.log").read_text()
        assert ": 2 finished (succeeded 2)" in log, log
        assert "tasks handed back" not in log
        done = outcomes(a, ids)
        assert [(d["status"], len(d["attempts"])) for d in done] == [("succeeded", 1)] * 8
        # b ran the two it had when it began to stop, and no other
        assert sorted(d["attempts"][0]["node"] for d in done) == ["b", "b"] + ["c"] * 6
