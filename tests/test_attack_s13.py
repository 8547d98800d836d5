"""An attacker's pass over session 13's changes: the HTTP health probe's head read by
llhttp (d5ea87a6), an agent's health endpoint being the agent's to answer as it likes;
and a cluster run's end waiting for its held rows' writes under way (526c1d5d), a Redis
that never answers one of them. Each asks what the less trusted side may make the daemon
wait for, keep or say (docs/security.md keeps them)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from corral.http1answer import MAX_INTERIM
from corral.supervisor.probes import ProbeResult, probe_http

from .cluster.proxy import Proxy
from .redis_harness import REDIS_SERVER, RedisServer, redis_server
from .test_probes import answering
from .test_workflows_ended_rows import ENDED, RUN_ID, _last, _node, _record

# -- the health probe: an agent's endpoint answers ---------------------------------------


async def test_an_interim_answer_is_read_past_to_the_final_one() -> None:
    """A 1xx answer (103 Early Hints, 100 Continue) is not the answer (HTTP's client reads
    past it): taken for it, a healthy agent whose server sends early hints failed its check
    when the two heads came in two reads and passed when they came in one, saying "200
    Early HintsOK" (the reasons of both heads, the status of the last). Past MAX_INTERIM
    of them the check fails (the answer reader's bound, decision 2200)."""
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n"
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    for chunks in ([hints, final], [hints + final]):
        async with answering(chunks) as (url, _):
            assert await probe_http(url, 30) == ProbeResult(True, f"GET {url}: 200 OK")
    async with answering([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service "
                          b"Unavailable\r\n\r\n"]) as (url, _):
        assert await probe_http(url, 30) == ProbeResult(
            False, f"GET {url}: 503 Service Unavailable")
    # interim answers without end are bounded
    async with answering([b"HTTP/1.1 100 Continue\r\n\r\n" * (MAX_INTERIM + 1)],
                         hold=True) as (url, _):
        assert await probe_http(url, 30) == ProbeResult(False, f"GET {url}: the server sent "
                                                        f"over MAX_INTERIM ({MAX_INTERIM}) "
                                                        "interim answers (1xx)")


async def test_what_follows_the_final_head_changes_neither_its_status_nor_its_reason(
        ) -> None:
    """llhttp reads on past the final head within what one read holds: a next answer's
    head made the status that one's and the reason both (an agent's 204 said "500
    No ContentBad"), and bytes that are no answer failed a check whose head was whole."""
    async with answering([b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 500 Bad\r\n\r\n"]
                         ) as (url, _):
        assert await probe_http(url, 30) == ProbeResult(True, f"GET {url}: 204 No Content")
    async with answering([b"HTTP/1.1 204 No Content\r\n\r\n\x16\x03\x01 not http\r\n"]
                         ) as (url, _):
        assert await probe_http(url, 30) == ProbeResult(True, f"GET {url}: 204 No Content")


async def test_a_body_that_never_ends_and_an_upgrade_are_not_read() -> None:
    """The answer is its head: a body announced past any size and never sent whole is not
    waited for (the check passes at once, not at its timeout), and a 101 upgrade is a
    failed check of that status, what follows it unread."""
    endless = [b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", b"x" * 65536]
    async with answering(endless, hold=True) as (url, _):
        assert await probe_http(url, 60) == ProbeResult(True, f"GET {url}: 200 OK")
    upgrade = [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: "
               b"Upgrade\r\n\r\n\x81\x05hello"]
    async with answering(upgrade, hold=True) as (url, _):
        assert await probe_http(url, 60) == ProbeResult(
            False, f"GET {url}: 101 Switching Protocols")


@asynccontextmanager
async def dripping() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A server that answers a head one byte at a time, never ending it, until the probe
    closes the connection (the event: it did)."""
    closed = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\n" + b"X-Drip: " + b"a" * 10**6
        try:
            for i in range(len(head)):
                writer.write(head[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0.01)  # (a drip: the probe reads each byte alone)
                if writer.is_closing() or reader.at_eof():
                    break
        except ConnectionError:
            pass
        closed.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", closed
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.deadline(60)
async def test_a_head_dripped_a_byte_at_a_time_ends_at_the_checks_timeout() -> None:
    """An endpoint keeping the check's head coming below its bound holds the probe for its
    timeout and no longer: the check fails saying so, and the connection is closed (the
    daemon keeps nothing of it)."""
    async with dripping() as (url, closed):
        assert await probe_http(url, 0.5) == ProbeResult(
            False, f"GET {url}: no answer within 0.5 s")
        await closed.wait()


# -- a cluster run's end and a Redis that never answers its rows' write ------------------


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    assert REDIS_SERVER is not None, "redis-server is not installed: . scripts/redis.sh"
    with redis_server(tmp_path / "redis") as server:
        yield server


@pytest.mark.deadline(60)
async def test_a_runs_end_waits_no_longer_than_redis_is_waited_for_its_rows_write(
        redis: RedisServer) -> None:
    """A run's end waits for the writes under way that took its held rows: a Redis that
    takes such a write and never answers holds that write for as long as any call waits
    for Redis (node_ttl plus a beat), never the end for ever. The write failed, its rows
    are held again and go with the end; nothing of it is kept (`carrying` is empty)."""
    proxy = Proxy(redis.port)
    a = await _node("a", proxy.url)
    b = await _node("b", redis.url)
    try:
        await a.calls.save_call(_record("running"))
        await a.calls.save_steps(RUN_ID, [_last("running")])
        row = b'"succeeded","' + ENDED.encode()
        sent = proxy.watch(row)
        proxy.hold(float("inf"), row)  # (Redis's answers on that connection: never)
        await a.calls.save_steps(RUN_ID, [_last("succeeded", 55)])
        assert await asyncio.to_thread(sent.wait, 30), "the row was never flushed"
        assert a.calls.held == {} and list(a.calls.carrying) == [RUN_ID]
        await a.calls.save_call(_record("succeeded"))
        assert a.calls.carrying == {} and a.calls.held == {}
        assert a.calls.held_again == 1
        got = await b.calls.fetch(RUN_ID)
        assert got is not None
        assert (got.status, got.rows) == ("succeeded", {("last", -1): _last("succeeded", 55)})
    finally:
        for n in (a, b):
            await n.calls.close()
            await n.calls.redis.aclose()
        proxy.close()
