"""The retry policy of failed, timed-out and lost tasks, and delayed tasks (issue 36, item
5): an agent's `retries`, `retry_on`, `retry_backoff`, `retry_backoff_max`, `retry_jitter`;
a task's own `retries` and `retry_on`; `not_before` / `delay`, waiting out of the queue,
cancelled there, and kept across a daemon restart."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import msgspec
import pytest

from corral.supervisor import State, Supervisor
from corral.supervisor.config import ConfigError
from corral.supervisor.configload import parse_agents
from corral.supervisor.tasks import AttemptEnded, Task, TaskStatus
from corral.supervisor.tasks.retry import backoff
from corral.taskoptions import RetryOptions, TaskOptions
from corral.text import iso_time

from .conftest import agent
from .daemon_harness import Daemon, sleeper


async def attempt_ended(sup: Supervisor, task: Task, n: int) -> None:
    """Until the task's n-th attempt has ended (the stream's AttemptEnded)."""
    ended = asyncio.get_running_loop().create_future()

    def heard(e: AttemptEnded) -> None:
        if e.task is task and len(task.attempts) >= n and not ended.done():
            ended.set_result(None)

    sub = sup.stream.subscribe(heard, AttemptEnded)
    try:
        if len(task.attempts) < n or task.attempts[n - 1].finished is None:
            await asyncio.wait_for(ended, 30)
    finally:
        sup.stream.unsubscribe(sub)


async def test_a_failed_task_is_retried_after_its_backoff_and_succeeds(
        sup: Supervisor) -> None:
    sup.add(agent("w", "misbehave.py", retries=2, retry_on=("failed",), retry_backoff=0.4,
                  retry_jitter=False))
    await sup.wait_state("w", State.READY)
    task = sup.tasks.submit("w", {"do": "until", "attempt": 2})
    await attempt_ended(sup, task, 1)
    # waiting out its backoff: queued, out of the queue, and it says so
    info = await sup.tasks.info(task.id)
    assert info.status == "queued"
    assert info.not_before is not None
    assert info.waiting == (f"delayed until {iso_time(info.not_before)}: retry 1 after "
                            "attempt 1 failed (backoff 0.4 s)")
    await asyncio.wait_for(task.done, 30)
    assert task.status == TaskStatus.SUCCEEDED
    assert task.output == {"attempt": 2}
    first, second = task.attempts
    assert (first.outcome, first.error, first.backoff) == (
        "failed", "attempt 1 failed on request", 0.4)
    assert (second.outcome, second.backoff) == ("succeeded", msgspec.UNSET)
    assert first.finished is not None
    assert second.started >= first.finished + 0.4 - 0.01  # not taken before its time
    assert sup.tasks.stats()["agents"]["w"]["retried"] == 1
    assert (await sup.tasks.info(task.id)).not_before is None


async def test_a_timed_out_task_is_retried_once_its_attempt_stopped(sup: Supervisor) -> None:
    sup.add(agent("w", "misbehave.py", retries=1, retry_on=("timed_out",)))
    await sup.wait_state("w", State.READY)
    task = sup.tasks.submit("w", {"do": "until", "attempt": 2, "how": "sleep"},
                            TaskOptions(timeout=0.5))
    await asyncio.wait_for(task.done, 30)
    assert task.status == TaskStatus.SUCCEEDED
    assert task.output == {"attempt": 2}
    first, second = task.attempts
    assert (first.outcome, first.error) == ("timed_out", "task timed out after 0.5 s")
    # the retry started only once the worker had stopped the timed-out attempt
    assert first.finished is not None and second.started >= first.finished
    assert second.outcome == "succeeded"


async def test_outcomes_retry_on_does_not_name_are_not_retried(sup: Supervisor) -> None:
    # retries, but for lost tasks only (the default retry_on)
    sup.add(agent("lost_only", "misbehave.py", retries=3))
    sup.add(agent("timeouts", "misbehave.py", retries=3, retry_on=("timed_out",)))
    await sup.wait_state("lost_only", State.READY)
    await sup.wait_state("timeouts", State.READY)
    for name in ("lost_only", "timeouts"):
        task = sup.tasks.submit(name, {"do": "fail"})
        await asyncio.wait_for(task.done, 30)
        assert task.status == TaskStatus.FAILED
        assert task.error is not None and task.error.message == "failed on request"
        assert [(a.outcome, a.error) for a in task.attempts] == [
            ("failed", "failed on request")]
        assert task.retries_left == 3
    # and a timed-out task of an agent that retries failures only ends timed out
    sup.add(agent("failures", "misbehave.py", retries=3, retry_on=("failed",)))
    await sup.wait_state("failures", State.READY)
    task = sup.tasks.submit("failures", {"do": "sleep", "seconds": 60}, TaskOptions(timeout=0.3))
    await asyncio.wait_for(task.done, 30)
    assert task.status == TaskStatus.TIMED_OUT
    assert task.error is not None and task.error.message == "task timed out after 0.3 s"
    assert len(task.attempts) == 1


async def test_a_task_brings_its_own_policy_and_runs_out_of_retries(sup: Supervisor) -> None:
    sup.add(agent("w", "misbehave.py"))  # retries nothing by itself
    await sup.wait_state("w", State.READY)
    task = sup.tasks.submit("w", {"do": "until", "attempt": 2},
                            TaskOptions(retry=RetryOptions(retries=1, retry_on=["failed"])))
    await asyncio.wait_for(task.done, 30)
    assert (task.status, task.output, len(task.attempts)) == ("succeeded", {"attempt": 2}, 2)
    # out of retries: the last attempt's error is the task's
    task = sup.tasks.submit("w", {"do": "until", "attempt": 5},
                            TaskOptions(retry=RetryOptions(retries=2, retry_on=["failed"])))
    await asyncio.wait_for(task.done, 30)
    assert task.status == TaskStatus.FAILED
    assert task.error is not None and task.error.message == "attempt 3 failed on request"
    assert [a.error for a in task.attempts] == [
        f"attempt {n} failed on request" for n in (1, 2, 3)]
    assert task.retries_left == 0


async def test_a_delayed_task_waits_for_its_time_and_can_be_cancelled(sup: Supervisor) -> None:
    sup.add(agent("w", "misbehave.py"))
    await sup.wait_state("w", State.READY)
    at = time.time() + 0.6
    task = sup.tasks.submit("w", {"do": "echo"}, TaskOptions(not_before=at))
    info = await sup.tasks.info(task.id)
    assert (info.status, info.not_before) == ("queued", at)
    assert info.waiting == f"delayed until {iso_time(at)}"
    # it holds no place among the agent's waiting tasks: one after it runs at once
    now = sup.tasks.submit("w", {"do": "echo"})
    await asyncio.wait_for(now.done, 30)
    assert task.status == TaskStatus.QUEUED
    await asyncio.wait_for(task.done, 30)
    assert task.status == TaskStatus.SUCCEEDED
    assert task.attempts[0].started >= at - 0.01
    # the wait it asked for is no wait in the queue, nor its agent's latency
    info = await sup.tasks.info(task.id)
    assert info.queue_wait is not None and info.queue_wait < 0.5, info.queue_wait
    latency = sup.tasks.by_agent["w"].latencies
    assert max(latency) < 0.5, list(latency)
    # cancelled while it waits for its time: it never runs
    later = sup.tasks.submit("w", {"do": "echo"}, TaskOptions(not_before=time.time() + 3600))
    sup.tasks.cancel(later.id)
    assert later.status == TaskStatus.CANCELLED
    assert later.error is not None and later.error.message == "cancelled while queued"
    assert later.attempts == ()
    assert len(sup.tasks.delays) == 0


async def test_delayed_tasks_count_against_max_queue_and_end_with_their_agent(
        sup: Supervisor) -> None:
    sup.add(agent("w", "misbehave.py", max_queue=1))
    await sup.wait_state("w", State.READY)
    sup.tasks.submit("w", {"do": "echo"}, TaskOptions(not_before=time.time() + 3600))
    with pytest.raises(Exception, match="queue full"):
        sup.tasks.submit("w", {"do": "echo"}, TaskOptions(not_before=time.time() + 3600))
    waiting = next(iter(sup.tasks.active.values()))
    await sup.remove("w")
    assert waiting.status == TaskStatus.CANCELLED
    assert waiting.error is not None and waiting.error.message == "agent w was removed"
    assert len(sup.tasks.delays) == 0


def test_backoff_doubles_to_its_bound_with_full_jitter() -> None:
    spec = parse_agents({"agents": {"a": {"command": "x", "retry_backoff": 1.5,
                                          "retry_backoff_max": 10,
                                          "retry_jitter": False}}}, "f.toml")["a"]
    assert [backoff(spec, n) for n in (1, 2, 3, 4, 5, 5000)] == [1.5, 3, 6, 10, 10, 10]
    jittered = parse_agents({"agents": {"a": {"command": "x", "retry_backoff": 2}}},
                            "f.toml")["a"]
    assert jittered.retry_jitter is True
    assert backoff(jittered, 2, rand=lambda: 0.25) == 1.0
    plain = parse_agents({"agents": {"a": {"command": "x"}}}, "f.toml")["a"]
    assert (plain.retry_on, backoff(plain, 3)) == (("lost",), 0.0)


def test_a_retry_policy_that_cannot_be_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse_agents({"agents": {"a": {"command": "x", "retry_backoff": 5,
                                       "retry_backoff_max": 1}}}, "f.toml")
    assert str(err.value) == "f.toml: agents.a: retry_backoff_max (1) is below retry_backoff (5)"
    with pytest.raises(ConfigError) as err:
        parse_agents({"agents": {"a": {"command": "x", "retry_on": ["cancelled"]}}},
                     "f.toml")
    assert str(err.value) == "f.toml: agents.a.retry_on[0]: Invalid enum value 'cancelled'"


def test_a_delayed_task_survives_a_daemon_restart(tmp_path: Path) -> None:
    agents = sleeper("w") + "retries = 1\nretry_on = [\"failed\"]\n"
    d = Daemon(tmp_path, agents)
    try:
        d.start()
        r = d.cli("submit", "w", "--input", '{"do": "echo"}', "--delay", "12s")
        assert r.returncode == 0, r.stderr
        task_id = r.stdout.strip()
        info = d.json("task", task_id)
        assert info["status"] == "queued"
        at = info["not_before"]
        # counted from the task's own creation, one clock read for both (a loaded host's
        # admission between two reads once started a delayed task 12 ms before its
        # created + delay)
        assert at == info["created"] + 12.0
        shown = d.cli("task", task_id)
        assert f"waiting: delayed until {iso_time(at)}\n" in shown.stdout
        over = d.cli("submit", "w", "--input", "1", "--retries", "101")
        assert over.returncode == 2
        assert "Invalid value for '--retries': 101 is not in the range 0<=x<=100" in \
            over.stderr
        assert d.stop() == 0  # a drain: the delayed task waits in the journal
        d.start()
        again = d.json("task", task_id)
        assert (again["status"], again["not_before"], again["attempts"]) == (
            "queued", at, [])
        done = d.json("task", task_id, "--wait")
        assert done["status"] == "succeeded"
        assert done["attempts"][0]["started"] >= at - 0.01
        assert done["not_before"] is None
    finally:
        d.close()


def test_corral_task_shows_each_attempts_error_and_backoff(tmp_path: Path) -> None:
    agents = sleeper("w") + ("retries = 2\nretry_on = [\"failed\"]\nretry_backoff = 0.2\n"
                             "retry_jitter = false\n")
    d = Daemon(tmp_path, agents)
    try:
        d.start()
        r = d.cli("run", "w", "--input", '{"do": "until", "attempt": 3}')
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"attempt": 3}
        listed = d.json("tasks")["tasks"]
        shown = d.cli("task", listed[-1]["task_id"]).stdout
        lines = [ln.split("pid ")[-1].split(" ", 1)[-1] for ln in shown.splitlines()
                 if ln.startswith("attempt ")]
        assert lines == ["failed (attempt 1 failed on request), retried after 0.2 s",
                         "failed (attempt 2 failed on request), retried after 0.4 s",
                         "succeeded"]
        # times as the logs write them, and waits with their unit (not raw seconds)
        fields = dict(ln.split(": ", 1) for ln in shown.splitlines()
                      if not ln.startswith("attempt "))
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", fields["created"]), fields
        assert fields["ran"].endswith((" ms", " s")) and fields["queue_wait"].endswith(
            (" ms", " s")), fields
        # a run that failed after retries says how many attempts it had
        r = d.cli("run", "w", "--input", '{"do": "until", "attempt": 9}')
        assert r.returncode == 1
        assert r.stderr.endswith(" failed after 3 attempts: attempt 3 failed on request\n"), \
            r.stderr
        # a task's own policy from the command line
        r = d.cli("run", "w", "--input", '{"do": "until", "attempt": 2}', "--retries", "0")
        assert r.returncode == 1
        assert r.stderr.endswith(": attempt 1 failed on request\n")
        r = d.cli("run", "w", "--input", '{"do": "until", "attempt": 2}', "--retry-on",
                  "timed_out")
        assert r.returncode == 1
        bad = d.cli("run", "w", "--retry-on", "failed,cancelled")
        assert bad.returncode == 2
        assert "Invalid value for '--retry-on': Invalid enum value 'cancelled'" in bad.stderr
        assert d.stop() == 0
    finally:
        d.close()
