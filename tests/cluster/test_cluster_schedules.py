"""Schedules on a cluster (corral/cluster/schedules.py, docs/workflows.md#schedules): two
nodes with the same schedule fire it once per fire time between them (its lease is one
node's, the fire time written through the fence), and when the holder is killed -9 the
other node takes the lease over and fires on; the SAVE script alone refuses another's
live lease and a fire time already taken."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import pytest

from corral.cluster.schedules import ClusterLedger
from corral.supervisor.schedule import ScheduleRow

from ..conftest import ROOT
from ..daemon_harness import PY
from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import Node, nodes

pytestmark = pytest.mark.timeout(90)
HERE = Path(__file__).parent.parent


def fleet(count: Path) -> str:
    return textwrap.dedent(f"""
        [agents.leaf]
        command = ["{PY}", "{HERE}/orchestrator_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        max_concurrent_tasks = 4

        [schedules.tick]
        agent = "leaf"
        every = "1s"
        input = {{ leaf = true, n = 1, count = "{count}", marks = "{count}.marks" }}
    """)


def runs(count: Path) -> int:
    """The fires' tasks that ran, each counted once: a task the killed node ran, its end
    not yet written, runs again on the survivor (retry_lost), one task of one fire."""
    marks = Path(f"{count}.marks")
    return len({m.name.split(".")[1] for m in marks.iterdir()}) if marks.exists() else 0


def listed(n: Node) -> bool:
    return any(s["name"] == "tick" for s in n.call("schedules.list")["schedules"])


def tick(n: Node) -> Any:
    return next(s for s in n.call("schedules.list")["schedules"] if s["name"] == "tick")


def test_two_nodes_fire_each_time_once_and_the_survivor_takes_over(
        tmp: Path, redis: RedisServer) -> None:
    count = tmp / "count"
    Path(f"{count}.marks").mkdir()
    agents = fleet(count)
    with nodes(tmp, redis, {"a": agents, "b": agents}) as ns:
        # a node lists a schedule once it has set it up, after it joined (a loaded host
        # may take a while over b's start)
        wait_until(lambda: all(listed(n) for n in ns.values()), 60, "tick on both nodes")
        wait_until(lambda: tick(ns["a"])["fires"] >= 3, 30, "three fires")
        shown = {name: tick(n) for name, n in ns.items()}
        # one node holds the lease: only it says when the next fire is
        holders = [name for name, s in shown.items() if s["next_fire"] is not None]
        assert len(holders) == 1, shown
        holder, other = ns[holders[0]], ns["b" if holders[0] == "a" else "a"]
        fires_before = tick(other)["fires"]
        holder.kill9()
        wait_until(lambda: tick(other)["fires"] >= fires_before + 3, 30,
                   "three fires by the survivor")
        assert tick(other)["next_fire"] is not None
        paused = other.call("schedules.pause", {"name": "tick"})
        assert paused["paused"] is True
        fires = paused["fires"]
        # every fire ran its task once (the killed node's last fire may have been lost
        # with it: at most once), none twice
        wait_until(lambda: runs(count) >= fires - 1, 30, "each fire's task")
        assert fires - 1 <= runs(count) <= fires


def test_the_save_script_refuses_another_lease_and_a_time_taken(redis: RedisServer
                                                                ) -> None:
    asyncio.run(_script(redis))


class _Member:
    def __init__(self, consumer: str) -> None:
        self.consumer = consumer
        self.member = True


async def _script(redis: RedisServer) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(redis.url)
    try:
        said: list[str] = []
        a = ClusterLedger(client, "t:", _Member("a/1"), 5.0, said.append)
        b = ClusterLedger(client, "t:", _Member("b/1"), 5.0, said.append)
        assert await a.save("s", ScheduleRow(100.0), new=True)
        assert not await b.save("s", ScheduleRow(100.0), new=True)  # a's lease is live
        assert a.holds("s") and not b.holds("s")
        assert await a.save("s", ScheduleRow(110.0, 1), fire=True)
        assert not await a.save("s", ScheduleRow(110.0, 1), fire=True)  # taken already
        assert not await b.save("s", ScheduleRow(120.0, 1), fire=True)
        row = await b.load("s")
        assert row == ScheduleRow(110.0, 1, None, None)
        # a set never takes the fire time back
        assert await a.save("s", ScheduleRow(50.0, 1, "task-1", True))
        assert await a.load("s") == ScheduleRow(110.0, 1, "task-1", True)
        # the lease expired (as a dead holder's does): b takes it, with a new fence
        await client.hset("t:schedule:s", "until", 0)
        fence = int(await client.hget("t:schedule:s", "fence"))
        assert await b.save("s", ScheduleRow(120.0, 2), fire=True)
        assert int(await client.hget("t:schedule:s", "fence")) == fence + 1
        assert not await a.save("s", ScheduleRow(130.0, 3), fire=True)
        assert not a.holds("s") and b.holds("s")
        # a node that is not a member (joining, fenced) writes nothing
        b.membership.member = False
        assert not await b.save("s", ScheduleRow(140.0, 3), fire=True)
        assert not b.holds("s")
    finally:
        await client.aclose()
