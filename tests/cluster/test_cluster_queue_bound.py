"""An agent's `max_queue` bounds its cluster tasks wherever they are submitted, as a node's
own tasks are bounded (issue 86, the task twins' map; decision 2040): a node knew the bound
from its own agent's spec alone, so a node not running the agent submitted with none and a
client that picked it queued past the bound. The bound is now read in one place, the
desk's `max_queue`: this node's agent's, else what the live nodes that run it say in their
beats, else its cluster table's. Each door that submits at such a node is refused in the
words of the node that runs it, and nothing is made."""

from __future__ import annotations

import contextlib
import json
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc

from ..conftest import ROOT
from ..daemon_harness import PY, free_port
from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from ..test_spawn import HERE
from .harness import STEADY_TTL, Node, nodes, sleeper
from .test_cluster_sessions import chat
from .test_cluster_specs import keeper
from .test_failover import error_of

FULL = "queue full: agent w has 1 task waiting (max_queue 1)"
DOORS = ("tasks.submit", "tasks.submit delayed", "CLI", "REST", "spawn")
ENDED = ("succeeded", "failed", "timed_out", "cancelled", "lost")


def _orch(port: int) -> str:
    """b's agent, which spawns tasks of `w` (tests/orchestrator_agent.py), and b's REST."""
    return textwrap.dedent(f"""
        [agents.orch]
        command = ["{PY}", "{HERE}/orchestrator_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        spawns = ["w"]

        [http]
        listen = "127.0.0.1:{port}"
    """)


def _rest(n: Node, port: int) -> tuple[int, Any]:
    r = n.cli("token", "create", "submitter", "--scope", "tasks:run")
    assert r.returncode == 0, r.stderr
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/tasks", method="POST",
        data=json.dumps({"agent": "w", "input": {}}).encode(),
        headers={"Content-Type": "application/json",
                 "Authorization": f"Bearer {r.stdout.strip()}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as got:
            return got.status, json.loads(got.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _refusal(b: Node, door: str, port: int) -> Any:
    """What b says to a task of `w` submitted at `door` (a spawn: its parent's output)."""
    if door.startswith("tasks.submit"):
        return error_of(b, "tasks.submit", {"agent": "w", "input": {}} | (
            {"delay": 60} if door.endswith("delayed") else {}))
    if door == "CLI":
        r = b.cli("submit", "w", "--input", "{}")
        return r.returncode, r.stderr.strip()
    if door == "REST":
        return _rest(b, port)
    task_id = b.call("tasks.submit", {"agent": "orch", "input": {
        "children": 1, "agent": "w", "count": "x", "catch": True}})["task_id"]
    return b.call("tasks.get", {"task_id": task_id, "wait": True})["output"]


@contextlib.contextmanager
def _w_full(a: Node, b: Node) -> Iterator[dict[str, Any]]:
    """A task of `w` (a's) running and one waiting, both nodes alive: the input of one
    more is given; after, w's tasks are cancelled, and none was made but those two."""
    wait_until(lambda: sum(n["alive"] for n in b.nodes()["nodes"]) == 2,
               what="both nodes alive")
    sleep = {"agent": "w", "input": {"do": "sleep", "seconds": 1000}}
    held = [a.call("tasks.submit", sleep)["task_id"]]
    try:
        wait_until(lambda: a.call("tasks.get", {"task_id": held[0]})["status"]
                   == "running", what="w's task running at a")
        held.append(a.call("tasks.submit", sleep)["task_id"])  # (waits: w is full)
        yield sleep
    finally:
        made = [t["task_id"] for t in b.call("tasks.list", {"agent": "w"})["tasks"]]
        for task_id in made:
            a.call("tasks.cancel", {"task_id": task_id})
        wait_until(lambda: all(a.call("tasks.get", {"task_id": t})["status"] in ENDED
                               for t in made), what="w's tasks ended")
    assert sorted(made) == sorted(held)  # (nothing made by a refused submit)


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", DOORS)
def test_a_task_submitted_at_a_node_not_running_its_agent_is_bounded_by_its_max_queue(
        tmp: Path, redis: RedisServer, door: str) -> None:
    port = free_port()
    # (the steady TTL: a loaded node that missed the short one lost w's running task, and
    # the task that waited behind it ran)
    with nodes(tmp, redis, {"a": sleeper("w") + "max_queue = 1\n", "b": _orch(port)},
               ttl=STEADY_TTL) as ns:
        a, b = ns["a"], ns["b"]
        with _w_full(a, b) as sleep:
            assert error_of(a, "tasks.submit", sleep) == FULL  # (the node running it)
            said = _refusal(b, door, port)
            assert said == {
                "CLI": (1, f"corral: {FULL}"),
                "REST": (429, {"type": "about:blank", "title": "too many requests",
                               "status": 429, "detail": FULL, "code": jsonrpc.REFUSED}),
                "spawn": {"refused": FULL, "code": jsonrpc.REFUSED},
            }.get(door, FULL), said


@pytest.mark.deadline(120)
def test_a_cluster_agent_no_live_node_runs_is_bounded_by_its_tables_max_queue(
        tmp: Path, redis: RedisServer) -> None:
    """A cluster agent placed nowhere (`replicas = 0`) is run by no live node, and its
    tasks wait for one in Redis: its table's max_queue bounds them, at every node."""
    toml = keeper(extra="replicas = 0\nmax_queue = 1\n")
    with nodes(tmp, redis, {"a": toml, "b": ""}, ttl=STEADY_TTL) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: error_of(b, "agents.history", {"name": "keeper"}) is None,
                   what="keeper's table")
        later = {"agent": "keeper", "input": {}, "delay": 600}
        held = b.call("tasks.submit", later)["task_id"]
        try:
            for n in (a, b):
                assert error_of(n, "tasks.submit", later) == (
                    "queue full: agent keeper has 1 task waiting (max_queue 1)")
        finally:
            made = [t["task_id"] for t in b.call("tasks.list", {"agent": "keeper"})["tasks"]]
            for task_id in made:
                b.call("tasks.cancel", {"task_id": task_id})
        assert made == [held]


@pytest.mark.deadline(120)
def test_a_sessions_line_at_a_node_not_running_its_agent_is_bounded_by_its_max_queue(
        tmp: Path, redis: RedisServer) -> None:
    """A session's turns wait in its line while one runs, and the line is its agent's
    queue (max_queue bounds it): a turn submitted at b, which runs no chat, is refused past
    a's bound in a's words, as at a. Before, b bounded the line by none."""
    marker = tmp / "marker"
    with nodes(tmp, redis, {"a": chat("max_queue = 1\n"), "b": ""}, ttl=STEADY_TTL) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: sum(n["alive"] for n in b.nodes()["nodes"]) == 2,
                   what="both nodes alive")
        turn: dict[str, Any] = {"agent": "chat", "session": "s"}
        a.call("tasks.submit", turn | {"input": {"turn": 1, "how": "hang",
                                                 "marker": str(marker)}})
        wait_until(marker.exists, what="turn 1 running")
        b.call("tasks.submit", turn | {"input": {"turn": 2}})  # (waits in the line)
        for n in (b, a):
            assert error_of(n, "tasks.submit", turn | {"input": {"turn": 3}}) == (
                "queue full: agent chat has 1 task waiting (max_queue 1)")
        assert len(b.call("tasks.list", {"agent": "chat"})["tasks"]) == 2


@pytest.mark.deadline(120)
def test_a_task_submitted_at_a_node_not_running_its_agent_is_bounded_by_its_tenants_max_queue(
        tmp: Path, redis: RedisServer) -> None:
    """A tenant's own `max_queue` ([tenants.X]) bounds its agent's cluster tasks at every
    node, as the node running the agent says it in its beats: b runs none of acme's agents
    and has no [tenants.acme] (decision 2096). Before, it counted only the tasks waiting
    at a node that runs the agent, and b bounded the task by none."""
    # (its agent's own bound is the looser: the tenant's is met, in its words)
    a_toml = sleeper("w") + 'tenant = "acme"\nmax_queue = 2\n\n[tenants.acme]\nmax_queue = 1\n'
    with nodes(tmp, redis, {"a": a_toml, "b": ""}, ttl=STEADY_TTL) as ns:
        a, b = ns["a"], ns["b"]
        with _w_full(a, b) as sleep:
            for n in (b, a):
                assert error_of(n, "tasks.submit", sleep) == (
                    "tenant acme: max_queue 1 reached (1 waiting); a task for w needs 1 "
                    "more")
