"""Chaos for the work: workers SIGKILLed about once a second under a continuous task load,
and the daemon SIGKILLed with tasks queued and running. Every accepted task ends with
exactly one terminal outcome (lost ones with the reason), none goes missing, nothing is
left a zombie, and the daemon's memory and descriptors stay flat."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from corral.cli.client import CallFailed, Client, Unreachable

from ..conftest import EXAMPLES, ROOT
from ..daemon_harness import PY, Daemon
from .procs import wait_until

TERMINAL = {"succeeded", "failed", "timed_out", "cancelled", "lost"}


def fleet(replicas: int, concurrency: int) -> str:
    return (f'[agents.w]\ncommand = ["{PY}", "{EXAMPLES}/misbehave.py"]\n'
            f'env = {{ PYTHONPATH = "{ROOT}" }}\nreplicas = {replicas}\n'
            f"max_concurrent_tasks = {concurrency}\nretries = 1\nmax_restarts = 10000\n"
            "backoff_initial = 0.05\nbackoff_max = 0.2\nstop_timeout = 1.0\n")


class Load:
    """Threads submitting detached tasks over their own connections until stopped; the
    ids the daemon acknowledged are the accepted tasks."""

    def __init__(self, sock: Path, threads: int, task_input: Any, pause: float) -> None:
        self.sock = sock
        self.pause = pause
        self.input = task_input
        self.accepted: list[str] = []
        self.refused: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True)
                        for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                with Client(self.sock, timeout=30) as c:
                    while not self.stop.is_set():
                        try:
                            res = c.call("tasks.submit", {"agent": "w",
                                                          "input": self.input})
                        except CallFailed as exc:  # refused: not accepted
                            self.refused.append(exc.message)
                            self.stop.wait(0.05)
                            continue
                        self.accepted.append(res["task_id"])
                        self.stop.wait(self.pause)  # a steady stream, not a flood
            except (Unreachable, OSError):
                self.stop.wait(0.1)  # the daemon is restarting


def call(d: Daemon, method: str, params: dict[str, Any]) -> Any:
    with Client(d.sock, timeout=30) as c:
        return c.call(method, params)


def outcomes(d: Daemon, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Every task's record, waiting for each to finish."""
    with Client(d.sock, timeout=60) as c:
        return {t: c.call("tasks.get", {"task_id": t, "wait": True}) for t in ids}


def assert_one_terminal_outcome_each(infos: dict[str, dict[str, Any]]) -> None:
    for tid, info in infos.items():
        assert info["status"] in TERMINAL, (tid, info["status"])
        ends = [a for a in info["attempts"] if a["outcome"] in ("succeeded", "failed")]
        assert len(ends) <= 1, (tid, info["attempts"])
        if info["status"] == "lost":
            assert info["error"]["message"], tid
            assert all(a["outcome"] == "lost" and a["error"] for a in info["attempts"]), info
        if info["status"] == "succeeded":
            assert info["attempts"][-1]["outcome"] == "succeeded", info


def zombies_of(pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(pid).children()
            if p.status() == psutil.STATUS_ZOMBIE]


@pytest.mark.timeout(90)
def test_workers_killed_every_second_under_load_lose_no_task(tmp: Path) -> None:
    d = Daemon(tmp, fleet(replicas=3, concurrency=2))
    try:
        d.start()
        assert d.proc is not None
        daemon = psutil.Process(d.proc.pid)
        rng = random.Random(8)
        kills = 0
        # ~30 tasks a second for 6 slots of 0.1 s tasks: the queue never runs away
        with Load(d.sock, threads=3, task_input={"do": "sleep", "seconds": 0.1},
                  pause=0.1) as load:
            wait_until(lambda: len(load.accepted) >= 20, 30, "the load to start")
            base_rss, base_fds = daemon.memory_info().rss, daemon.num_fds()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                pids = [a["pid"] for a in call(d, "agents.status", {})["agents"]
                        if a["pid"] and a["state"] in ("ready", "busy", "idle")]
                if pids:
                    os.kill(rng.choice(pids), 9)
                    kills += 1
                time.sleep(1.0)  # the chaos rate, not a wait for a state
        assert kills >= 5
        infos = outcomes(d, load.accepted)
        assert len(infos) == len(load.accepted) >= 50
        assert_one_terminal_outcome_each(infos)
        statuses = [i["status"] for i in infos.values()]
        assert statuses.count("succeeded") > len(statuses) // 2
        assert "lost" in statuses or any(len(i["attempts"]) > 1 for i in infos.values())
        stats = call(d, "stats.get", {})["tasks"]["agents"]["w"]
        finished = sum(stats[k] for k in TERMINAL)
        assert (stats["accepted"], stats["queue_depth"], stats["running"]) == (
            finished, 0, 0)
        wait_until(lambda: not zombies_of(daemon.pid), 10, "no zombie children")
        rss, fds = daemon.memory_info().rss, daemon.num_fds()
        assert rss - base_rss < 30 * 1024 * 1024, (base_rss, rss)
        assert fds - base_fds <= 6, (base_fds, fds)
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.timeout(90)
def test_a_daemon_killed_with_queued_and_running_tasks_loses_none(tmp: Path) -> None:
    d = Daemon(tmp, fleet(replicas=2, concurrency=2))
    try:
        d.start()
        assert d.proc is not None
        with Load(d.sock, threads=2, task_input={"do": "sleep", "seconds": 1.0},
                  pause=0.05) as load:
            def busy_and_queued() -> bool:
                s = call(d, "stats.get", {})["tasks"]["agents"]["w"]
                return bool(s["running"] >= 2 and s["queue_depth"] >= 3)

            wait_until(busy_and_queued, 30, "tasks queued and running")
            d.proc.kill()
            d.proc.wait(10)
            before = list(load.accepted)
            d.start()
            wait_until(lambda: len(load.accepted) >= len(before) + 5, 30,
                       "the load to go on against the new daemon")
        infos = outcomes(d, load.accepted)  # tasks.get answers for every one: none missing
        assert set(infos) == set(load.accepted)
        assert_one_terminal_outcome_each(infos)
        restarted = [i for i in infos.values()
                     if any(a["error"] == "daemon restarted" for a in i["attempts"])]
        assert restarted, "no task was running when the daemon died: the test proves nothing"
        for info in restarted:
            assert info["status"] in ("succeeded", "lost"), info
            if info["status"] == "lost":
                assert info["error"]["message"] == "daemon restarted"
        assert d.stop() == 0
    finally:
        d.close()
