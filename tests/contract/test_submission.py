"""A submission, on each home (DESIGN 21, 25, 26): its idempotency key gives the first
task again and runs nothing twice, another request under it is refused naming the key; its
`timeout` ends an attempt past it `timed_out`; `delay` and `not_before` hold it queued
until its time; its own `retry` policy runs it again as it says, with its agent's
backoff, and a retry asked to cancel while its attempt ran ends cancelled. The agents:
tests/recording_agent.py (a line per input it ran) and examples/misbehave.py."""

from __future__ import annotations

import itertools
import json
import re
import textwrap
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from corral import jsonrpc
from corral.cli.client import CallFailed
from corral.cluster.keys import Keys

from ..conftest import EXAMPLES, ROOT
from ..daemon_harness import PY
from ..test_idempotent_submission import recorder, runs
from .home import Home, wait_until

pytestmark = pytest.mark.timeout(120)

BACKOFF = 0.5  # seconds: the agent's retry_backoff, doubled per retry (no jitter)


# a tenant's idempotency keys' bound (the cluster's nodes take it too)
SUPERVISOR = "idempotency_keys_per_tenant = 2"


def agents(directory: Path) -> str:
    return recorder("rec", directory / "record") + recorder(
        "acme-rec", directory / "acme", "acme") + textwrap.dedent(f"""
        [tenants.acme]

        [agents.sleeper]
        command = ["{PY}", "{EXAMPLES}/misbehave.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        max_concurrent_tasks = 4
        retry_backoff = {BACKOFF}
        retry_jitter = false
        stop_timeout = 5.0

        [agents.bounded]
        command = ["{PY}", "{EXAMPLES}/misbehave.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        max_queue = 1

        [agents.patient]
        command = ["{PY}", "{EXAMPLES}/misbehave.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        retry_backoff = 3.0
        retry_jitter = false
        stop_timeout = 5.0
    """)


def test_a_keyed_submission_sent_again_is_the_first_task_and_runs_nothing_twice(
        home: Home) -> None:
    record = home.dir / "record"
    earlier = len(runs(record))  # (the runs of the module's other tests, in any order)
    asked: dict[str, Any] = {"agent": "rec", "input": {"n": 1}, "idempotency_key": "k1"}
    first = home.call("tasks.submit", {**asked, "wait": 30})
    assert (first["status"], first["output"]) == ("succeeded", {"by": "rec"}), first
    # again, at the other entry (the other node of a cluster): the same task, nothing run
    again = home.call("tasks.submit", {**asked, "wait": 30}, at=1)
    assert again == {**first, "replayed": True}
    assert home.call("tasks.submit", asked, at=1)["task_id"] == first["task_id"]
    assert runs(record)[earlier:] == [{"n": 1}]
    assert home.task(first["task_id"], at=1)["options"] == {"idempotency_key": "k1"}
    # and after a crash of the home (the client lost its answer to it): the same
    home.crash(first["task_id"])
    assert home.call("tasks.submit", {**asked, "wait": 30}) == again
    assert runs(record)[earlier:] == [{"n": 1}]
    # another request under the key: refused naming the key (never the task: it may be
    # another caller's), nothing run
    code, message = home.refusal("tasks.submit", {**asked, "input": {"n": 2}})
    assert (code, message) == (jsonrpc.CONFLICT, "idempotency key k1 was used for "
                               "another request: send a new key")
    assert runs(record)[earlier:] == [{"n": 1}]


def test_an_attempt_past_its_timeout_ends_timed_out(home: Home) -> None:
    done = home.run("sleeper", {"do": "sleep", "seconds": 30}, timeout=0.5)
    assert done["status"] == "timed_out", done
    assert done["error"]["message"] == "task timed out after 0.5 s"
    assert [a["outcome"] for a in done["attempts"]] == ["timed_out"]
    assert done["finished"] - done["started"] < 10


def test_a_running_task_cancelled_at_another_entry_ends_cancelled(home: Home) -> None:
    task_id = home.submit("sleeper", {"do": "sleep", "seconds": 60})
    home.status_of(task_id, "running")
    home.call("tasks.cancel", {"task_id": task_id}, at=1)
    done = home.wait(task_id)
    assert done["status"] == "cancelled", done
    assert done["error"] == {"code": jsonrpc.REQUEST_CANCELLED,
                             "message": "cancelled while running"}, done
    assert [a["outcome"] for a in done["attempts"]] == ["cancelled"]
    assert done["finished"] - done["started"] < 30
    code, message = home.refusal("tasks.cancel", {"task_id": task_id})
    assert (code, message) == (jsonrpc.CONFLICT, f"task {task_id} already finished "
                               "(cancelled)")


def test_a_delayed_task_is_queued_until_its_time(home: Home) -> None:
    task_id = home.submit("sleeper", {"do": "echo"}, delay=1.5)
    queued = home.task(task_id, at=1)
    assert queued["status"] == "queued", queued
    assert queued["not_before"] == pytest.approx(queued["created"] + 1.5, abs=0.05)
    done = home.wait(task_id)
    assert done["status"] == "succeeded", done
    assert done["attempts"][0]["started"] >= queued["not_before"] - 0.002


def test_a_delayed_task_outlives_a_crash_of_its_home_and_runs_once_at_its_time(
        home: Home) -> None:
    record = home.dir / "record"
    task_id = home.submit("rec", {"delayed": 1}, delay=2.0)
    not_before = home.task(task_id)["not_before"]
    home.crash()  # (at once: before its time; a loaded host's restart may outlast it)
    done = home.wait(task_id, at=1)
    assert done["status"] == "succeeded", done
    assert [a["outcome"] for a in done["attempts"]] == ["succeeded"]
    assert done["attempts"][0]["started"] >= not_before - 0.002
    assert [r for r in runs(record) if r == {"delayed": 1}] == [{"delayed": 1}]


def test_a_delayed_task_cancelled_ends_cancelled_and_never_runs(home: Home) -> None:
    # the cancel's rule is written once (taskmachine.cancel_failure): the engine's and
    # the cluster's CANCEL end it, and refuse a second, in the same words
    task_id = home.submit("rec", {"never": 1}, delay=30.0)
    home.call("tasks.cancel", {"task_id": task_id}, at=1)
    done = home.wait(task_id)
    assert (done["status"], done["attempts"]) == ("cancelled", []), done
    assert done["error"] == {"code": jsonrpc.REQUEST_CANCELLED,
                             "message": "cancelled while queued"}, done
    assert {"never": 1} not in runs(home.dir / "record")
    code, message = home.refusal("tasks.cancel", {"task_id": task_id})
    assert (code, message) == (jsonrpc.CONFLICT, f"task {task_id} already finished "
                               "(cancelled)")


def test_a_delayed_task_counts_against_its_agents_max_queue(home: Home) -> None:
    held = [home.submit("bounded", {"do": "echo"}, delay=60.0)]
    try:
        try:
            held.append(home.submit("bounded", {"do": "echo"}, at=1, delay=60.0))
            refused = None
        except CallFailed as e:
            refused = (e.code, e.message)
        assert refused == (jsonrpc.REFUSED, "queue full: agent bounded has 1 task waiting "
                                            "(max_queue 1)")
        # cancelled, it no longer counts
        home.call("tasks.cancel", {"task_id": held.pop()}, at=1)
        held.append(home.submit("bounded", {"do": "echo"}, at=1, delay=60.0))
    finally:
        for task_id in held:
            home.call("tasks.cancel", {"task_id": task_id})


def test_a_not_before_past_runs_at_once_and_one_ahead_waits_for_it(home: Home) -> None:
    done = home.run("sleeper", {"do": "echo"}, not_before=time.time() - 60)
    assert done["status"] == "succeeded", done
    assert done["attempts"][0]["started"] - done["created"] < 10
    at = time.time() + 1.5
    task_id = home.submit("sleeper", {"do": "echo"}, at=1, not_before=at)
    assert home.task(task_id)["not_before"] == pytest.approx(at, abs=0.01)
    # (a timer's millisecond: uvloop's timers fire to the millisecond, not finer)
    assert home.wait(task_id)["attempts"][0]["started"] >= at - 0.002
    code, message = home.refusal("tasks.submit", {"agent": "sleeper", "input": {},
                                                  "delay": 1, "not_before": at})
    assert (code, message) == (jsonrpc.INVALID_PARAMS,
                               "invalid params: give delay or not_before, not both")


def test_a_tasks_retry_policy_runs_it_again_after_its_backoff(home: Home) -> None:
    policy = {"retries": 2, "retry_on": ["failed"]}
    done = home.run("sleeper", {"do": "until", "attempt": 3}, retry=policy)
    assert done["status"] == "succeeded", done
    assert done["output"] == {"attempt": 3}
    attempts = done["attempts"]
    assert [a["outcome"] for a in attempts] == ["failed", "failed", "succeeded"]
    for i, (before, after) in enumerate(itertools.pairwise(attempts)):
        assert after["started"] - before["finished"] >= BACKOFF * 2 ** i - 0.05, attempts
    # its retries spent: failed, every attempt listed
    done = home.run("sleeper", {"do": "until", "attempt": 3}, at=1,
                    retry={"retries": 1, "retry_on": ["failed"]})
    assert done["status"] == "failed", done
    assert [a["outcome"] for a in done["attempts"]] == ["failed", "failed"]
    assert json.dumps(done["options"]["retry"]) == json.dumps(
        {"retries": 1, "retry_on": ["failed"]})


def test_a_retry_waiting_out_its_backoff_is_queued_and_says_why(home: Home) -> None:
    task_id = home.submit("patient", {"do": "until", "attempt": 2},
                          retry={"retries": 1, "retry_on": ["failed"]})
    held = wait_until("the retry in its backoff", lambda: (
        t := home.task(task_id))["status"] == "queued" and t["attempts"] and t)
    done = home.wait(task_id)
    assert [a["outcome"] for a in done["attempts"]] == ["failed", "succeeded"], done
    assert held["not_before"] == pytest.approx(
        done["attempts"][0]["finished"] + 3.0, abs=0.5), held
    assert re.fullmatch(r"delayed until \S+: retry 1 after attempt 1 failed "
                        r"\(backoff 3 s\)", held["waiting"]), held


def test_a_task_asking_for_at_most_once_is_not_run_again_after_a_crash_and_says_so(
        home: Home) -> None:
    task_id = home.submit("sleeper", {"do": "sleep", "seconds": 60},
                          retry={"retry_lost": 0})
    home.status_of(task_id, "running")
    home.crash(task_id)
    done = home.wait(task_id)
    assert done["status"] == "lost", done
    assert done["error"]["message"].endswith(
        "(not run again: at most once, retry_lost = 0)"), done
    assert [a["outcome"] for a in done["attempts"]] == ["lost"]


def test_a_loss_past_retry_lost_is_run_again_only_where_its_policy_says(home: Home) -> None:
    # the loss and retry rule is written once (taskmachine.TaskMachine.fire): the node's
    # restart and the cluster's takeover both ask it. A loss within retry_lost runs again
    # with no retry spent; past it, a retry is spent only on an outcome retry_on names.
    task_id = home.submit("sleeper", {"do": "sleep", "seconds": 60},
                          retry={"retries": 2, "retry_on": ["failed"], "retry_lost": 1})
    home.status_of(task_id, "running")
    home.crash(task_id)
    wait_until("its second attempt running", lambda: (
        t := home.task(task_id))["status"] == "running" and len(t["attempts"]) == 2)
    home.crash(task_id)
    done = home.wait(task_id)
    assert done["status"] == "lost", done
    assert [a["outcome"] for a in done["attempts"]] == ["lost", "lost"], done


def test_keys_are_each_tenants_and_a_tenants_bound_refuses_a_new_one(home: Home) -> None:
    # the rule and its words are written once (corral/taskkeys.py): the node's journal
    # and the cluster's Redis keep the keys, each home judges them alike
    first = home.call("tasks.submit", {"agent": "acme-rec", "input": {"n": 1},
                                       "idempotency_key": "k1", "wait": 30})
    # acme's k1 is not the default tenant's (whose k1, another request, is its own)
    assert home.call("tasks.submit", {"agent": "acme-rec", "input": {"n": 2},
                                      "idempotency_key": "k2"}, at=1)["task_id"]
    code, message = home.refusal("tasks.submit", {"agent": "acme-rec", "input": {"n": 3},
                                                  "idempotency_key": "k3"}, at=1)
    assert (code, message) == (
        jsonrpc.QUOTA_EXCEEDED,
        "tenant acme holds 2 idempotency keys of the last 24 h "
        "(idempotency_keys_per_tenant = 2): a new key is refused until the oldest is "
        "that old (the same key sent again is still answered; a task submitted with "
        "no key is accepted)")
    # as it says: a key it holds, and a task with none
    again = home.call("tasks.submit", {"agent": "acme-rec", "input": {"n": 1},
                                       "idempotency_key": "k1"})
    assert (again["task_id"], again["replayed"]) == (first["task_id"], True)
    assert home.run("acme-rec", {"n": 4})["status"] == "succeeded"
    assert runs(home.dir / "acme")[:1] == [{"n": 1}]
    assert {"n": 3} not in runs(home.dir / "acme")


def test_a_keyed_submission_refused_keeps_no_key(home: Home) -> None:
    held = [home.submit("bounded", {"do": "echo"}, delay=60.0)]
    try:
        asked = {"agent": "bounded", "input": {"do": "echo"}, "delay": 60.0,
                 "idempotency_key": "full"}
        code, message = home.refusal("tasks.submit", asked, at=1)
        assert (code, message) == (jsonrpc.REFUSED, "queue full: agent bounded has 1 task "
                                                    "waiting (max_queue 1)")
        home.call("tasks.cancel", {"task_id": held.pop()})
        # the key names nothing: another request with it is a new task, not a conflict
        got = home.call("tasks.submit", {**asked, "input": {"do": "echo", "n": 2}})
        assert "replayed" not in got, got
        held.append(got["task_id"])
    finally:
        for task_id in held:
            home.call("tasks.cancel", {"task_id": task_id})


def test_a_task_queued_for_a_replica_cancelled_ends_cancelled_and_never_runs(
        home: Home) -> None:
    # the cancel's rule (taskmachine.cancel_failure): what has not reached a worker ends
    # at once, in its status's words, at any entry
    # every replica of the agent busy (one a node: each of a cluster's nodes runs one)
    busy = [home.submit("patient", {"do": "sleep", "seconds": 60}, at=at)
            for at in range(len(home.entries))]
    try:
        for b in busy:
            home.status_of(b, "running")
        task_id = home.submit("patient", {"do": "echo", "never": 1}, at=1)
        assert home.task(task_id)["status"] == "queued"
        home.call("tasks.cancel", {"task_id": task_id})
        done = home.wait(task_id, at=1)
        assert (done["status"], done["attempts"]) == ("cancelled", []), done
        assert done["error"] == {"code": jsonrpc.REQUEST_CANCELLED,
                                 "message": "cancelled while queued"}, done
    finally:
        for b in busy:
            home.call("tasks.cancel", {"task_id": b})
    assert [home.wait(b)["status"] for b in busy] == ["cancelled"] * len(busy)


def test_a_retry_waiting_out_its_backoff_cancelled_ends_cancelled_and_runs_no_more(
        home: Home) -> None:
    task_id = home.submit("patient", {"do": "until", "attempt": 2},
                          retry={"retries": 1, "retry_on": ["failed"]})
    wait_until("the retry in its backoff", lambda: (
        t := home.task(task_id))["status"] == "queued" and t["attempts"])
    home.call("tasks.cancel", {"task_id": task_id}, at=1)
    done = home.wait(task_id)
    assert done["status"] == "cancelled", done
    assert done["error"] == {"code": jsonrpc.REQUEST_CANCELLED,
                             "message": "cancelled while queued"}, done
    assert [a["outcome"] for a in done["attempts"]] == ["failed"], done
    assert home.wait(task_id, at=1)["attempts"] == done["attempts"]


def test_a_cancel_of_no_task_is_refused_in_the_same_words(home: Home) -> None:
    for task_id in ("0190a5c0-0000-7000-8000-000000000001", "not-a-task"):
        assert home.refusal("tasks.cancel", {"task_id": task_id}, at=1) == (
            jsonrpc.NOT_FOUND, f"no such task: {task_id}")


def test_a_loss_past_retry_lost_spends_a_retry_where_its_policy_retries_a_loss(
        home: Home) -> None:
    # the loss and retry rule once (taskmachine.TaskMachine.fire), asked by the node's
    # restart and the cluster's takeover: the first loss within retry_lost is free, the
    # second spends the retry retry_on names, and the third attempt runs to its end
    task_id = home.submit("sleeper", {"do": "until", "attempt": 3, "how": "sleep"},
                          retry={"retries": 1, "retry_on": ["lost"], "retry_lost": 1})
    for attempt in (1, 2):
        wait_until(f"attempt {attempt} running", lambda attempt=attempt: (
            t := home.task(task_id))["status"] == "running"
            and len(t["attempts"]) == attempt)
        home.crash(task_id)
    done = home.wait(task_id)
    assert (done["status"], done["output"]) == ("succeeded", {"attempt": 3}), done
    assert [a["outcome"] for a in done["attempts"]] == ["lost", "lost", "succeeded"], done


def test_an_at_most_once_task_running_when_its_home_stops_is_not_run_again(
        home: Home) -> None:
    # a stop takes a running attempt with it: a loss, which the loss rule decides
    # (taskmachine.TaskMachine.fire) on either home; at most once (retry_lost = 0), the
    # task is never run again, whether the node's daemon stops or a cluster node hands
    # its claims back
    task_id = home.submit("sleeper", {"do": "sleep", "seconds": 60},
                          retry={"retry_lost": 0})
    home.status_of(task_id, "running")
    home.restart()
    done = home.wait(task_id)
    assert done["status"] == "lost", done
    assert [a["outcome"] for a in done["attempts"]] == ["lost"], done


def asked(home: Home, task_id: str, cancelling: Future[Any]) -> None:
    """A cancel of a running task taken: on a node, its answer (the task ended there); on
    a cluster, its mark in the record, for the node running the task to act on at its
    next beat."""
    if home.redis is None:
        cancelling.result()
        return
    keys = redis.Redis.from_url(home.redis.url)
    try:
        wait_until("the cancel's mark", lambda: keys.hget(
            Keys("test").task(task_id), "cancel") == b"1")
    finally:
        keys.close()


def test_a_retry_asked_to_cancel_while_it_ran_ends_cancelled_and_runs_no_more(
        home: Home) -> None:
    # a cancel asked while an attempt runs, the attempt then ending in an outcome its
    # policy retries: on a cluster its node's beat may not have read the mark yet, and
    # the retry its machine decided is decided again on the mark (decision 2090)
    go = home.dir / "go"
    # its first attempt waits for `go`, then its worker exits: an outcome (lost) that its
    # policy retries; a second attempt would return
    task_id = home.submit("patient", {"do": "sequence", "calls": [
        {"await": str(go), "attempt": 1}, {"crash": 1}]},
        retry={"retries": 1, "retry_on": ["lost"]})
    home.status_of(task_id, "running")
    with ThreadPoolExecutor(1) as pool:
        cancelling = pool.submit(home.call, "tasks.cancel", {"task_id": task_id}, 1)
        asked(home, task_id, cancelling)
        go.touch()
        cancelling.result()
    done = home.wait(task_id)
    assert done["status"] == "cancelled", done
    assert done["error"] == {"code": jsonrpc.REQUEST_CANCELLED,
                             "message": "cancelled while running"}, done
    # (its attempt stopped by the cancel, or ended by its worker's exit first)
    assert [a["outcome"] in ("cancelled", "lost") for a in done["attempts"]] == [True], done
    # no attempt after it: the same one, its outcome kept (the time its worker stopped and
    # how may be written after the task's end is told: a fresh clone's run saw `finished`
    # and `error` filled in at the second read, the worker's exit just after the cancel)
    later = home.wait(task_id, at=1)["attempts"]
    assert [(a["pid"], a["started"], a["outcome"]) for a in later] == [
        (a["pid"], a["started"], a["outcome"]) for a in done["attempts"]], (later, done)
