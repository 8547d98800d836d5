"""A scale-down drains (issue 73): a replica chosen to go takes no new task and finishes
what it runs before it is asked to stop, within its stop_timeout, so that `corral
scale` down under a steady load loses no task (the soak's `lost` task, stopped 18 ms
after it began, had no drain). Lost attempts are not retried here (`retry_lost = 0`):
a loss shows as one. bench/bench_scale_drain.py runs the 200 scale-downs of the issue."""

from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from corral.cli.client import Client

from .conftest import ROOT
from .daemon_harness import Daemon
from .test_daemon_cli import wait_until

pytestmark = pytest.mark.long

# sleeps the task's input seconds (a task that is running when its replica is chosen),
# or, given {"hold": FIFO}, runs until the test opens the FIFO and closes it
SLEEPER = """
import time
from corral.worker import run


def handle(task, ctx):
    if isinstance(task, dict):
        with open(task["hold"], "rb") as fifo:
            fifo.read()
    else:
        time.sleep(task)
    return {"replica": ctx.replica}


run(handle)
"""


def fleet(tmp_path: Path, stop_timeout: float = 10.0) -> str:
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    return f"""
        [agents.w]
        command = ["{sys.executable}", "{script}"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        replicas = 1
        stop_timeout = {stop_timeout}
        retry_lost = 0
    """


class Load(threading.Thread):
    """Tasks of `seconds` each, submitted so that about `depth` wait at any time."""

    def __init__(self, d: Daemon, seconds: float, depth: int) -> None:
        super().__init__(daemon=True)
        self.d, self.seconds, self.depth = d, seconds, depth
        self.ids: list[str] = []
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with Client(self.d.sock) as c:
                while not self.done.is_set():
                    for _ in range(self.depth):
                        got = c.call("tasks.submit", {"agent": "w", "input": self.seconds})
                        self.ids.append(got["task_id"])
                    c.call("tasks.get", {"task_id": self.ids[-self.depth], "wait": True})
        except BaseException as exc:  # told to the test
            self.error = exc


def outcomes(d: Daemon, ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    with Client(d.sock) as c:
        for task_id in ids:
            t: Any = c.call("tasks.get", {"task_id": task_id, "wait": True})
            counts[t["status"]] = counts.get(t["status"], 0) + 1
    return counts


def scale(d: Daemon, n: int) -> None:
    d.ask("agents.scale", {"name": "w", "replicas": n})


def busy(d: Daemon) -> bool:
    return all(s["state"] == "busy" for s in d.status().values())


ROUNDS = int(os.environ.get("CORRAL_SCALE_ROUNDS", "25"))


@pytest.mark.timeout(300)
def test_scale_downs_under_a_steady_load_lose_no_task(tmp_path: Path) -> None:
    d = Daemon(tmp_path, fleet(tmp_path))
    try:
        d.start()
        load = Load(d, 0.05, 6)
        load.start()
        for _ in range(ROUNDS):
            scale(d, 3)
            # every replica running a task when two are chosen to go
            wait_until(lambda: busy(d) and len(d.status()) == 3, 30, "three busy")
            scale(d, 1)
            # those chosen are gone once the scale answers: their tasks ended first
            assert sorted(d.status()) == ["w#0"]
        load.done.set()
        load.join(60)
        assert load.error is None, repr(load.error)
        assert outcomes(d, load.ids) == {"succeeded": len(load.ids)}
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.timeout(120)
def test_a_task_longer_than_the_stop_timeout_is_taken_by_the_stop(tmp_path: Path) -> None:
    """The drain is bounded by the replica's stop_timeout: a task still running then is
    ended by the stop, as any stop ends it (lost, with the reason), and the scale
    answers; the replica that stays runs on."""
    d = Daemon(tmp_path, fleet(tmp_path, stop_timeout=1.0))
    try:
        d.start()
        scale(d, 2)
        wait_until(lambda: [s["state"] for s in d.status().values()] == ["ready"] * 2,
                   30, "two ready")
        with Client(d.sock) as c:
            ids = [c.call("tasks.submit", {"agent": "w", "input": 60})["task_id"]
                   for _ in range(2)]
        wait_until(lambda: busy(d), 30, "both busy")
        scale(d, 1)
        assert sorted(d.status()) == ["w#0"]
        with Client(d.sock) as c:
            gone: Any = next(t for t in (c.call("tasks.get", {"task_id": i}) for i in ids)
                             if t["status"] != "running")
        assert (gone["status"], gone["error"]["message"]) == (
            "lost", "worker exited: scaled down"), gone
        # taken after the drain's bound, not before it
        attempt = gone["attempts"][-1]
        assert attempt["replica"] == 1, gone
        assert attempt["finished"] - attempt["started"] >= 1.0, gone
        said = d.cli("logs", "w#1", "-n", "50").stdout
        assert "scaled down: finishing 1 running task(s) first" in said, said
        assert d.status()["w#0"]["state"] == "busy"
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.timeout(120)
def test_a_task_for_an_agent_draining_to_zero_waits_for_the_drain(tmp_path: Path) -> None:
    """An agent that sleeps at zero, scaled to 0 by hand while its replica runs a task:
    a task that comes during the drain does not wake a second process in the place of
    the one draining; it runs once the drain is over (the autoscaler's next tick wakes
    the agent)."""
    # the drain's bound (stop_timeout) past what the test does meanwhile on a loaded host
    d = Daemon(tmp_path, fleet(tmp_path, stop_timeout=60.0) + """
        [agents.w.autoscale]
        min_replicas = 0
        max_replicas = 1
        idle_after = 600.0
    """)
    try:
        d.start()
        # the first task runs until the test lets it end (it ran 2 s: at load 20+ the
        # scale's and the status's CLI starts outlasted it, and it ended before they looked)
        hold = tmp_path / "hold"
        os.mkfifo(hold)
        with Client(d.sock) as c:
            first = c.call("tasks.submit", {"agent": "w", "input": {"hold": str(hold)}}
                           )["task_id"]
        wait_until(lambda: busy(d), 30, "w#0 busy")
        scaling = threading.Thread(target=lambda: d.cli("scale", "w", "0"), daemon=True)
        scaling.start()
        # out of dispatch, shown draining while its task runs on
        wait_until(lambda: d.status()["w#0"]["draining"], 30, "w#0 draining")
        assert d.status()["w#0"]["state"] == "busy"
        text = d.cli("status").stdout
        assert re.search(r"^w#0 +busy \(draining\) +\d+ ", text, re.M), text
        with Client(d.sock) as c:
            second = c.call("tasks.submit", {"agent": "w", "input": 0.0})["task_id"]
            # (queued behind the drain, not run by a second process): the first let end
            assert c.call("tasks.get", {"task_id": second})["status"] == "queued"
            with open(hold, "wb"):
                pass
            ran: Any = c.call("tasks.get", {"task_id": second, "wait": True})
            before: Any = c.call("tasks.get", {"task_id": first})
        scaling.join(30)
        assert [s["draining"] for s in d.status().values()] == [False]  # the woken one
        assert (before["status"], ran["status"]) == ("succeeded", "succeeded")
        assert ran["attempts"][0]["started"] >= before["attempts"][0]["finished"], (
            before, ran)
        assert ran["attempts"][0]["pid"] != before["attempts"][0]["pid"]
        assert d.stop() == 0
    finally:
        d.close()
