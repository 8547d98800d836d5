"""The HTTP health probe (corral/supervisor/probes.py) against real servers on free ports:
its answer's head read by llhttp (httptools), as every HTTP message corral takes is, and
each way an answer can fail it said in the check's message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from corral.http1answer import MAX_HEAD
from corral.supervisor.probes import ProbeResult, probe_http


@asynccontextmanager
async def answering(chunks: Sequence[bytes], *, hold: bool = False
                    ) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A server that reads one request's head, writes `chunks` one write each, then closes
    the connection (or holds it open: `hold`); its URL, and the heads it read."""
    heads: list[bytes] = []
    held = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        if hold:
            await held.wait()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", heads
    finally:
        held.set()
        server.close()
        await server.wait_closed()


async def test_a_status_of_two_or_three_hundred_passes_with_its_reason() -> None:
    async with answering([b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n"]) as (url, _):
        assert await probe_http(url + "/healthz", 5) == ProbeResult(
            True, f"GET {url}/healthz: 204 No Content")
    async with answering([b"HTTP/1.0 302 Found\r\nLocation: /elsewhere\r\n\r\n"]) as (
            url, _):
        assert await probe_http(url, 5) == ProbeResult(True, f"GET {url}: 302 Found")


async def test_an_error_status_fails_and_a_head_in_pieces_is_read_whole() -> None:
    pieces = [b"HTT", b"P/1.1 50", b"3 Service Unav", b"ailable\r\nRetry-After: 1\r", b"\n\r\n"]
    async with answering(pieces) as (url, _):
        assert await probe_http(url, 5) == ProbeResult(
            False, f"GET {url}: 503 Service Unavailable")
    async with answering([b"HTTP/1.1 200 \r\n\r\n"]) as (url, _):  # no reason phrase
        assert await probe_http(url, 5) == ProbeResult(True, f"GET {url}: 200")


async def test_what_is_not_http_fails_saying_how() -> None:
    async with answering([b"SSH-2.0-OpenSSH_9.2\r\n"]) as (url, _):
        assert await probe_http(url, 5) == ProbeResult(
            False, f"GET {url}: the server's answer is not HTTP/1.1: Expected HTTP/, RTSP/ "
            "or ICE/")
    async with answering([]) as (url, _):  # a close without a word
        assert await probe_http(url, 5) == ProbeResult(
            False, f"GET {url}: the connection ended before the server's answer")
    async with answering([b"HTTP/1.1 200 OK\r\nServer: x\r\n"]) as (url, _):  # cut short
        assert await probe_http(url, 5) == ProbeResult(
            False, f"GET {url}: the server's answer was cut before its end")


async def test_a_head_past_the_bound_fails_unread_and_a_silent_one_times_out() -> None:
    endless = [b"HTTP/1.1 200 OK\r\n", b"X-Pad: " + b"a" * MAX_HEAD]
    async with answering(endless, hold=True) as (url, _):
        assert await probe_http(url, 5) == ProbeResult(
            False, f"GET {url}: the server's answer's head is over MAX_HEAD ({MAX_HEAD} bytes)")
    async with answering([b"HTTP/1.1 200 OK\r\n"], hold=True) as (url, _):
        assert await probe_http(url, 0.3) == ProbeResult(
            False, f"GET {url}: no answer within 0.3 s")


async def test_the_request_carries_no_credentials_of_the_url() -> None:
    async with answering([b"HTTP/1.1 200 OK\r\n\r\n"]) as (url, heads):
        secret = url.replace("http://", "http://user:secret@") + "/ready?deep=1"
        assert (await probe_http(secret, 5)).ok
        port = url.rpartition(":")[2]
        assert heads == [b"GET /ready?deep=1 HTTP/1.1\r\nHost: 127.0.0.1:" + port.encode()
                         + b"\r\nUser-Agent: corral-health\r\nAccept: */*\r\n"
                         b"Connection: close\r\n\r\n"]
