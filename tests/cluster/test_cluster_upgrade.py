"""`corral upgrade` of a cluster's node (issue 37; decision 404, superseding 280): the
new image goes on as the same daemon and incarnation, its running claims re-attached to
the kept workers and their outcomes sent through their fences; what waits for the node
goes back to the cluster before the exec. A liveness key that lapses during the hand-over
fences the new image: the cluster runs the task elsewhere, once."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import Node, sleeper
from .test_cluster_specs import log
from .test_takeover import held, outcomes, running_on, submit

pytestmark = pytest.mark.timeout(90)


@contextlib.contextmanager
def started(*made: Node) -> Iterator[None]:
    """The nodes stopped after, and every process they started killed by its pid."""
    pids: set[int] = set()
    try:
        yield
    finally:
        for n in made:
            if n.proc is not None and n.proc.poll() is None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    pids |= {p.pid for p in psutil.Process(n.proc.pid).children(True)}
            n.close()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def view(n: Node) -> dict[str, Any]:
    return {v["node"]: v for v in n.nodes()["nodes"]}


def both_alive(a: Node) -> None:
    wait_until(lambda: [v["alive"] for v in view(a).values()] == [True, True],
               what="both nodes alive")


def upgrading(a: Node, *args: str) -> tuple[threading.Thread, list[Any]]:
    said: list[Any] = []
    t = threading.Thread(target=lambda: said.append(a.cli("upgrade", *args, timeout=60)))
    t.start()
    return t, said


# A node whose hand-over must not lapse: its key outlives an exec and a new image's start
# on a loaded machine (seconds, where the cluster tests' 1 s TTL finds a dead node fast).
# No test waits for it to expire; a third of it lapsed in each of this file's hand-overs
# in one round beside a busy loop per core and others' soaks: the new image's first beat
# came that much later than the old one's last
KEPT = {"ttl": 30.0, "beat": 0.5}


def fenced(n: Node) -> str:
    """What the node's log says of its fences and joins: why it fenced itself (its key
    lapsed, or another daemon beat as this node), for a failure's message (whole: a
    string, which pytest does not cut)."""
    return "\n".join(line for line in log(n).splitlines()
                     if "fenced" in line or "joined" in line)


def workers(n: Node) -> dict[str, tuple[int, int]]:
    return {k: (v["pid"], v["restarts"]) for k, v in n.status().items()}


def running_until(n: Node, release: Path) -> list[str]:
    """A task that runs until the test creates `release`: running across the upgrade
    however long the hand-over takes on a loaded machine (a task of fixed length could
    end, and its outcome go out, before the exec)."""
    return [n.call("tasks.submit", {"agent": "sleepy", "input": {
        "do": "await", "path": str(release)}})["task_id"]]


def test_an_upgraded_node_keeps_its_claim_and_its_incarnation(
        tmp: Path, redis: RedisServer) -> None:
    a = Node(tmp / "a", "a", redis, sleeper("sleepy"), **KEPT)
    b = Node(tmp / "b", "b", redis, sleeper("sleepy", concurrency=4), **KEPT)
    with started(a, b):
        a.start()
        release = tmp / "release"
        held = running_until(a, release)  # b not yet started: a runs it
        wait_until(lambda: running_on(a) == 1, what="a busy")
        b.start()
        both_alive(a)
        before, kept = view(a)["a"], workers(a)
        assert a.proc is not None
        t, said = upgrading(a)
        during = submit(b, 4, 0.3)  # while a hands over: they run once, on b or a
        t.join()
        r = said[0]
        assert r.returncode == 0, r
        assert "1 running task kept" in r.stdout, r.stdout
        release.touch()
        done = outcomes(b, held)  # seen from the other node
        assert [(d["status"], len(d["attempts"]), d["attempts"][0]["node"])
                for d in done] == [("succeeded", 1, "a")], done
        assert [(d["status"], len(d["attempts"])) for d in outcomes(b, during)] == [
            ("succeeded", 1)] * 4
        after = view(a)["a"]
        assert (after["incarnation"], after["pid"], after["alive"]) == (
            before["incarnation"], a.proc.pid, True)
        assert workers(a) == kept
        stats = a.call("stats.get")["cluster"]
        assert (stats["incarnation"], stats["fences"]) == (before["incarnation"], 0), stats
        log = (a.state / "logs" / "corral.log").read_text()
        assert "fenced itself" not in log
        # the node goes on taking the cluster's tasks
        assert [d["status"] for d in outcomes(a, submit(a, 2, 0.1))] == ["succeeded"] * 2


def test_a_key_lapsed_in_the_hand_over_fences_the_new_image(
        tmp: Path, redis: RedisServer) -> None:
    """The new image starts after its key lapsed (a wrapper holds the interpreter back
    until b has taken the claim over and runs it): the new image fences itself and
    cancels what its kept worker still ran of it, its outcome never sent. Each step waits
    for the last: the task runs until the test lets it end, and the new image starts when
    the test opens the gate, so a loaded machine cannot reorder them (a task of fixed
    length could end, and its outcome go out, before a slow upgrade's exec)."""
    gate, done_path = tmp / "gate", tmp / "go"
    slow = tmp / "slow-python"
    slow.write_text('#!/bin/sh\n[ -n "$CORRAL_HANDOFF" ] && '
                    f'while [ ! -e "{gate}" ]; do sleep 0.05; done\n'
                    f'exec {shlex.quote(sys.executable)} "$@"\n')  # (a path may hold a space)
    slow.chmod(0o755)
    a = Node(tmp / "a", "a", redis, sleeper("sleepy", retries=1))
    b = Node(tmp / "b", "b", redis, sleeper("sleepy", retries=1))
    with started(a, b):
        a.start()
        held = running_until(a, done_path)
        wait_until(lambda: running_on(a) == 1, what="a busy")
        b.start()
        both_alive(a)
        before = view(a)["a"]["incarnation"]
        t, said = upgrading(a, "--python", str(slow))
        wait_until(lambda: running_on(b) == 1, what="b running the claim a's key lost")
        gate.touch()
        t.join()
        assert said[0].returncode == 0, said[0]
        wait_until(lambda: running_on(a) == 0, what="a's kept run cancelled")
        done_path.touch()
        [done] = outcomes(b, held)
        assert done["status"] == "succeeded", done
        assert [x["node"] for x in done["attempts"]] == ["a", "b"], done
        assert done["attempts"][0]["outcome"] != "succeeded", done
        stats = a.call("stats.get")["cluster"]
        assert stats["fences"] == 1 and stats["incarnation"] == before + 1, stats
        log = (a.state / "logs" / "corral.log").read_text()
        # its first beat finds the key gone; or, on a machine too loaded for Redis to
        # answer that beat in time, the node counts 2 x TTL without a renewal
        assert re.search(rf"a/{before} fenced itself: (its liveness key expired|no "
                         r"renewal for)", log), log[-3000:]


def test_a_claim_whose_worker_is_not_kept_goes_back_to_the_cluster(
        tmp: Path, redis: RedisServer) -> None:
    """A cluster agent's replica placed on the node is not kept (the new image places it
    from Redis after its adoptions): the claim running on it is handed back, retries
    untouched, and runs again; the node is not fenced (decision 404's limit)."""
    a = Node(tmp / "a", "a", redis, sleeper("sleepy") + 'placement = "cluster"\n', **KEPT)
    with started(a):
        a.start()
        wait_until(lambda: a.status().get("sleepy#0", {}).get("state") == "ready",
                   what="sleepy placed on a")
        release = tmp / "release"
        held = running_until(a, release)
        wait_until(lambda: running_on(a) == 1, what="a busy")
        r = a.cli("upgrade")
        assert r.returncode == 0, r
        assert ("0 agent processes and 0 running tasks kept; started again: agent "
                "sleepy#0") in r.stdout, r.stdout
        release.touch()
        [done] = outcomes(a, held)
        assert (done["status"], [x["outcome"] for x in done["attempts"]]) == (
            "succeeded", ["lost", "succeeded"]), done
        assert a.call("stats.get")["cluster"]["fences"] == 0, fenced(a)
        log = (a.state / "logs" / "corral.log").read_text()
        assert ("cluster: 1 tasks handed back (node a's worker was lost in its upgrade: "
                "its agent's replica did not start in the new image)") in log


def test_an_outcome_redis_cannot_take_refuses_the_upgrade(
        tmp: Path, redis: RedisServer) -> None:
    """Redis away with an outcome in the outbox: the exec would lose it, so the upgrade
    is refused once the hand-over's time is out, nothing changed; the outcome goes when
    Redis is back, and the node reads the cluster's tasks again."""
    a = Node(tmp / "a", "a", redis, sleeper("sleepy"), ttl=30.0, beat=1.0)
    with started(a):
        a.start()
        gate = tmp / "gate"  # (it runs until Redis is away: its outcome waits then)
        ids = [held(a, gate)]
        wait_until(lambda: running_on(a) == 1, what="a busy")
        redis.kill()
        gate.touch()
        wait_until(lambda: a.call("stats.get")["cluster"]["outbox"] == 1,
                   what="the outcome waiting for Redis")
        assert a.proc is not None
        r = a.cli("upgrade")
        assert r.returncode == 1, r
        said = r.stdout.strip()  # (the refusal found after the check: the report's)
        assert said.startswith("corral: upgrade refused, nothing changed: 1 outcome of "
                               "cluster tasks could not be sent to Redis ("), said
        assert said.endswith(") within 10 s"), said
        report = a.json("upgrade", "--report")
        assert (report["state"], report["pid"]) == ("refused", a.proc.pid), report
        redis.start()
        [done] = outcomes(a, ids)
        assert (done["status"], len(done["attempts"])) == ("succeeded", 1), done
        assert [d["status"] for d in outcomes(a, submit(a, 1, 0.1))] == ["succeeded"]


def test_a_new_image_that_fails_falls_back_as_the_same_node(
        tmp: Path, redis: RedisServer) -> None:
    """The new install fails after its checks: the old image takes the handoff back and
    goes on as the same incarnation, its claim re-attached; the task finishes once."""
    from ..test_upgrade import install

    a = Node(tmp / "a", "a", redis, sleeper("sleepy"), **KEPT)
    with started(a):
        a.start()
        release = tmp / "release"
        ids = running_until(a, release)
        wait_until(lambda: running_on(a) == 1, what="a busy")
        before, kept = view(a)["a"], workers(a)
        broken = install(tmp, "late", (
            "daemon/boot.py", "    global committed\n",
            '    global committed\n    raise RuntimeError("broken on purpose")\n'))
        r = a.cli("upgrade", "--pythonpath", str(broken))
        assert r.returncode == 1, r
        assert r.stdout.strip().endswith("RuntimeError: broken on purpose; 1 agent process "
                                         "and 1 running task kept"), r.stdout
        release.touch()
        [done] = outcomes(a, ids)
        assert (done["status"], len(done["attempts"])) == ("succeeded", 1), done
        after = view(a)["a"]
        assert (after["incarnation"], after["alive"]) == (before["incarnation"], True)
        assert workers(a) == kept
        assert a.call("stats.get")["cluster"]["fences"] == 0, fenced(a)


def test_a_kept_claim_is_retried_by_its_own_policy(tmp: Path, redis: RedisServer) -> None:
    """A claim running across an upgrade is the task its record in Redis says, as a claim
    taken after its node's death is (test_cluster_delays' kill -9 test of the same
    policy), and its engine's as any claim: two kept on one worker, the worker killed
    after the upgrade, the one of retry_lost = 0 (at most once) ends lost, the other runs
    again (its agent's retry_lost, 2). The state file carried the claim's fields but its
    options, and the new image took its task in without its agent's queue: it ran the
    first again, and retried neither (the retry rule found no agent)."""
    a = Node(tmp / "a", "a", redis, sleeper("sleepy", concurrency=2), **KEPT)
    with started(a):
        a.start()
        release = tmp / "release"  # (never made: each first attempt runs until killed)
        once, again = (a.call("tasks.submit", {"agent": "sleepy", "input": {
            "do": "sequence", "calls": [{"await": str(release), "attempt": 1}]},
            **options})["task_id"] for options in ({"retry": {"retry_lost": 0}}, {}))
        wait_until(lambda: running_on(a) == 2, what="a running both")
        r = a.cli("upgrade")
        assert r.returncode == 0, r
        assert "2 running tasks kept" in r.stdout, r.stdout
        os.kill(workers(a)["sleepy#0"][0], signal.SIGKILL)
        lost, retried = outcomes(a, [once, again])
        assert lost["status"] == "lost", lost
        assert lost["error"]["message"].endswith(
            "(not run again: at most once, retry_lost = 0)"), lost
        assert [x["outcome"] for x in lost["attempts"]] == ["lost"], lost
        assert (retried["status"], [x["outcome"] for x in retried["attempts"]]) == (
            "succeeded", ["lost", "succeeded"]), retried
