"""The cluster suite's fixtures: a real redis-server of the test's own, started on a free
port in the test's directory and killed by pid after it (tests/redis_harness.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.cluster.connection import connect
from corral.cluster.keys import Keys
from corral.supervisor.config import ClusterSettings

from ..redis_harness import REDIS_SERVER, RedisServer, redis_server


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A short path (daemons' unix sockets live in it), empty at the start of each case
    and gone after it."""
    d = Path(os.environ.get("TMPDIR", "/tmp")) / f"corral-cluster-{os.getpid()}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def redis(tmp: Path) -> Iterator[RedisServer]:
    # ./test.sh installs it (scripts/redis.sh): missing, the setup is broken, not the test
    assert REDIS_SERVER is not None, "redis-server is not installed: . scripts/redis.sh"
    with redis_server(tmp / "redis") as server:
        yield server


@pytest.fixture
async def client(redis: RedisServer) -> AsyncIterator[Any]:
    """A client of the test's Redis as a node of cluster `t` connects, its incarnation
    n/1 alive (its liveness key set, as a member's is: a claim is a live incarnation's)."""
    c = connect(ClusterSettings(redis=redis.url, name="t", node="n"), "n")
    await c.set(Keys("t").alive("n/1"), b"{}")
    yield c
    await c.aclose()
