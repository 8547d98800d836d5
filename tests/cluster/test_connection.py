"""The node's Redis client (corral/cluster/connection.py) across a restart of Redis: a
connection of its pool that Redis closed while it was away is made anew before a command
is written on it, and a command whose bytes may have reached Redis is never sent again."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from corral.cluster.connection import connect
from corral.cluster.scripts import Scripts
from corral.supervisor.config import ClusterSettings

from ..redis_harness import RedisServer
from .proxy import Proxy
from .test_failover import MASTER, Sentinel

# a Lua write, as the node's scripts are: its count says how many times it ran
BUMP = b"return redis.call('INCR', KEYS[1])"


@contextlib.contextmanager
def settings_for(tmp: Path, redis: RedisServer, how: str) -> Iterator[ClusterSettings]:
    """A node's settings for `redis`: its URL, or a Sentinel that names it."""
    if how == "url":
        yield ClusterSettings(redis=redis.url, name="t", node="n")
        return
    watch = Sentinel(tmp / "sentinel", redis)
    try:
        yield ClusterSettings(redis="redis://", name="t", node="n",
                              sentinels=[f"127.0.0.1:{watch.port}"], sentinel_master=MASTER)
    finally:
        watch.kill()


@pytest.mark.parametrize("how", ["url", "sentinel"])
async def test_a_write_after_redis_restarts_runs_once_on_a_connection_made_anew(
        tmp: Path, redis: RedisServer, how: str) -> None:
    """redis-py 8.1's pool skips its check of a connection's socket at checkout when its
    maintenance notifications are on, which RESP3 over TCP turns on by itself: a
    connection Redis closed while it was away was handed out, and the first command
    after Redis came back failed "Connection closed by server" (the b1 run's approve in
    test_cluster_approvals). No command is tried again (`Retry(NoBackoff(), 0)`: a Lua
    write may not be), so the connection must be found closed before the write is on it.
    """
    redis.appendfsync = "always"  # (the count before the kill is kept)
    redis.restart()
    with settings_for(tmp, redis, how) as settings:
        client = connect(settings, "n")
        try:
            bump = client.register_script(BUMP)
            # three connections in the pool, each closed by Redis's kill -9
            assert sorted(await asyncio.gather(*(bump(keys=["n"]) for _ in range(3)))) \
                == [1, 2, 3]
            # (in a thread: the client's loop reads each connection's end meanwhile)
            await asyncio.to_thread(redis.restart)
            assert [await bump(keys=["n"]) for _ in range(3)] == [4, 5, 6]
        finally:
            await client.aclose()


async def test_a_command_on_a_connection_reset_under_it_is_a_lost_connection(
        redis: RedisServer) -> None:
    """A connection Redis reset after the pool handed it out and before the command's
    write (the window of a loaded loop: the q-run's failover under load) is a lost
    connection, redis-py's ConnectionError that the node's callers answer as Redis not
    answering: uvloop's transport refuses the write with a RuntimeError ("the handler is
    closed"), which reached a submitter as an internal error. Nothing was written."""
    proxy = Proxy(redis.port)
    client = connect(ClusterSettings(redis=proxy.url, name="t", node="n"), "n")
    try:
        bump = client.register_script(BUMP)
        assert await bump(keys=["n"]) == 1
        conn = await client.connection_pool.get_connection()
        try:
            proxy.reset()
            with pytest.raises(ConnectionResetError):
                await conn._writer.wait_closed()  # the transport closed by the reset
            with pytest.raises(RedisConnectionError) as lost:
                await conn.send_command("EVALSHA", bump.sha, 1, "n")
            assert str(lost.value) == \
                f"Error while writing to 127.0.0.1:{proxy.port}: the connection was closed"
        finally:
            await client.connection_pool.release(conn)
        proxy.restore()
        assert await bump(keys=["n"]) == 2  # the write refused never reached Redis
    finally:
        await client.aclose()
        proxy.close()


# a write, and a read of what it wrote: its answer says whether the write ran before it
PUSH = b"return redis.call('RPUSH', KEYS[1], ARGV[1])"
SEEN = b"return redis.call('LRANGE', KEYS[1], 0, -1)"


async def test_a_batch_on_a_redis_without_the_scripts_runs_its_calls_in_order(
        redis: RedisServer) -> None:
    """A Redis without the scripts (new, restarted, a replica just promoted) has every
    script of the client loaded by each connection as it is made: a batch's call answered
    NOSCRIPT ran again after the calls behind it, which had run, so a step's submit saw
    the end of the step before it not yet written and refused it (a false "another node
    took it over" in a run, a beat lost)."""
    client = connect(ClusterSettings(redis=redis.url, name="t", node="n"), "n")
    try:
        push, seen = client.register_script(PUSH), client.register_script(SEEN)
        scripts = Scripts(client)
        for key in ("new", "restarted"):
            if key == "restarted":
                await asyncio.to_thread(redis.restart)
            # (the read alone first: on the tree before, it loaded its script alone)
            assert await scripts.run([(seen, [key], [])]) == [[]]
            assert await scripts.run([(push, [key], [b"a"]), (seen, [key], [])]) \
                == [1, [b"a"]]
    finally:
        await client.aclose()


async def test_a_connection_is_made_while_the_nodes_loop_is_busier_than_a_beat(
        redis: RedisServer) -> None:
    """A connect is timed on the node's loop, and was bounded by a beat: a loop held by
    callbacks of more than a beat each (a wide map's spawns on a loaded host) failed it
    "Timeout connecting to server" though Redis was idle (test_cluster_spawn's wide map at
    load). Its bound is now the TTL a reply has."""
    settings = ClusterSettings(redis=redis.url, name="t", node="n", beat=0.25, node_ttl=4.0)
    client = connect(settings, "n")
    loop = asyncio.get_running_loop()
    until = time.monotonic() + 3 * settings.beat

    def busy() -> None:  # (a spin, not a sleep: the loop is held, as by work)
        began = time.monotonic()
        while time.monotonic() - began < 1.2 * settings.beat:
            pass
        if began < until:
            loop.call_soon(busy)
    try:
        loop.call_soon(busy)
        assert await client.ping() is True
        assert time.monotonic() > until  # (the connect waited out the busy loop)
    finally:
        await client.aclose()
