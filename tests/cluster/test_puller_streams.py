"""What a node's puller keeps of the streams it read (cluster/puller.py): where the beat's
refresh looks for the entries this node holds without running them (a round trip each a
beat), so it is bounded by the agents the node runs, not every agent it ever ran. A real
daemon in the test's loop on a real redis-server, agents added and removed at run time."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from corral.cluster.keys import route
from corral.supervisor.config import DEFAULT_TENANT

from ..conftest import EXAMPLES, ROOT
from ..daemon_harness import PY, in_process
from ..redis_harness import RedisServer
from ..test_gateway_stdio import wait_until_async
from ..test_methods import Raw
from .harness import cluster_table, sleeper

pytestmark = pytest.mark.timeout(90)


def control(sock: Path, method: str, params: dict[str, Any]) -> None:
    c = Raw(sock)
    try:
        c.call(method, params)
    finally:
        c.close()


async def test_a_removed_agents_streams_are_let_go_once_the_node_holds_nothing_there(
        tmp: Path, redis: RedisServer) -> None:
    """Agents added and removed under fresh names, each read by the node's pull loop: its
    streams, and its priorities' lookup, are let go once it is gone and the node holds no
    entry in them, so what is kept is the agents it runs. Fails on the tree before: every
    agent ever read kept its streams (a tenant churning agent names grew them, and the
    beat's round trips, without bound)."""
    (tmp / "a").mkdir()
    sock = tmp / "a" / "corral.sock"
    table = {"command": [PY, str(EXAMPLES / "misbehave.py")], "env": {"PYTHONPATH": str(ROOT)}}
    async with in_process(tmp / "a", sleeper("kept"), toml=cluster_table(redis, "a")) as d:
        puller = d.cluster.puller
        kept = route(DEFAULT_TENANT, "kept")
        await wait_until_async(lambda: kept in puller._prios)
        for n in range(4):
            name = f"churn{n}"
            await asyncio.to_thread(control, sock, "agents.add", {"agents": {name: table}})
            read = route(DEFAULT_TENANT, name)
            await wait_until_async(lambda r=read: r in puller._prios)  # type: ignore[misc]
            await asyncio.to_thread(control, sock, "agents.remove", {"names": [name]})
        # (let_go forgets a route's priorities, then its streams a round trip each: the
        # wait is for both, or at load it read the last one's stream not yet let go)
        only = [puller.keys.stream(DEFAULT_TENANT, "kept", 0)]
        with contextlib.suppress(AssertionError):  # (what was read then says why not)
            await wait_until_async(lambda: set(puller._prios) == {kept}
                                   and puller.streams() == only, timeout=30)
        assert set(puller._prios) == {kept}, puller._prios
        read = puller.streams()
        assert read == only, read
