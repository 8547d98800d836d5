"""The model gateway's HTTP/1.1 client for its upstreams (corral/daemon/models/http1.py)
against a real server on a loopback port that writes what each test says, byte for byte:
kept-alive connections, the three ways a body ends, and every way an answer can fail,
each failure named exactly."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from corral.daemon.models.http1 import MAX_ANSWER, UpstreamClient, UpstreamFailed, fields
from corral.http1answer import MAX_HEAD, MAX_INTERIM

BODY = b'{"model":"m"}'
OK = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-request-id: r1\r\n"
      b"Content-Length: 11\r\n\r\n{\"ok\":true}")

Writer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A loopback server whose every connection `script` serves; the connections it
    had, and the requests it read (head and body)."""

    def __init__(self) -> None:
        self.script: Writer = answer_each(OK)
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                     ) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        whole = head + await reader.readexactly(length)
        self.requests.append(whole)
        return whole


def answer_each(*answers: bytes) -> Writer:
    """Each request on a connection answered with the next of `answers`; then closed."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await SERVER.request(reader)
            writer.write(answer)
            await writer.drain()
            if b"Connection: close" in answer:
                return
        await reader.read()  # until the client closes
    return script


SERVER = RawServer()


@pytest.fixture
async def raw() -> AsyncIterator[RawServer]:
    global SERVER
    SERVER = RawServer()
    server = await asyncio.start_server(SERVER._serve, "127.0.0.1", 0)
    SERVER.server = server
    port = server.sockets[0].getsockname()[1]
    SERVER.url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        yield SERVER
    finally:
        server.close()
        for writer in SERVER.writers:
            writer.close()


async def call(client: UpstreamClient, url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    answer = await client.post(url, BODY, {"content-type": "application/json"}, timeout)
    try:
        return answer.status, await answer.read()
    finally:
        answer.release()


async def failure(client: UpstreamClient, url: str, timeout: float = 10.0) -> str:
    with pytest.raises(UpstreamFailed) as caught:
        await call(client, url, timeout)
    return str(caught.value)


async def test_a_kept_connection_carries_the_next_call_and_headers_are_read(
        raw: RawServer) -> None:
    raw.script = answer_each(OK, OK.replace(b"r1", b"r2"), OK)
    client = UpstreamClient()
    try:
        answer = await client.post(raw.url, BODY, {"authorization": "Bearer k"}, 10)
        assert (answer.status, answer.headers["x-request-id"]) == (200, "r1")
        assert await answer.read() == b'{"ok":true}'
        answer.release()
        assert await call(client, raw.url) == (200, b'{"ok":true}')
        assert raw.connections == 1
        first = raw.requests[0]
        assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
        assert b"\r\nauthorization: Bearer k\r\n" in first and first.endswith(BODY)
        assert b"Accept-Encoding: identity" in first
        # a route's headers encoded once, a call's own after them
        answer = await client.post(raw.url, BODY, fields({"authorization": "Bearer k"}), 10,
                                   {"openai-beta": "b", "idempotency-key": "i"})
        answer.release()
        assert raw.requests[2].endswith(b"\r\nauthorization: Bearer k\r\nopenai-beta: b\r\n"
                                        b"idempotency-key: i\r\n\r\n" + BODY)
    finally:
        client.close()


async def test_chunked_gzipped_and_close_delimited_bodies_are_read_whole(
        raw: RawServer) -> None:
    packed = gzip.compress(b'{"zipped":1}')
    raw.script = answer_each(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;ext=1\r\ndata\r\n3\r\n: 1\r\n0\r\nX-Trailer: t\r\n\r\n",
        b"HTTP/1.1 503 Busy\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
        % len(packed) + packed,
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end")
    client = UpstreamClient()
    try:
        assert await call(client, raw.url) == (200, b"data: 1")
        assert await call(client, raw.url) == (503, b'{"zipped":1}')
        status, body = await call(client, raw.url)
        assert (status, body, raw.connections) == (200, b"to the end", 1)
        assert await call(client, raw.url) == (200, b"data: 1")  # closed: a new one
        assert raw.connections == 2
    finally:
        client.close()


async def test_a_kept_connection_the_upstream_closed_is_replaced_once(
        raw: RawServer) -> None:
    """The upstream ends a connection after one answer without saying so: the next call
    finds it gone and makes a new one, not a failure."""
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.request(reader)
        writer.write(OK)
        await writer.drain()
    raw.script = once
    client = UpstreamClient()
    try:
        for _ in range(3):
            assert await call(client, raw.url) == (200, b'{"ok":true}')
        assert raw.connections == 3
    finally:
        client.close()


async def test_an_answer_written_behind_the_answer_is_not_the_next_callers(
        raw: RawServer) -> None:
    """An upstream that writes a second answer behind the first, in one write: the call
    is given the first, and the connection is not kept, so no later call is handed the
    second (llhttp reads on past an answer's end: what it began is never read)."""
    other = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"n\":\"b\"}"
    raw.script = answer_each(OK + other, OK + other)
    client = UpstreamClient()
    try:
        assert await call(client, raw.url) == (200, b'{"ok":true}')
        assert await call(client, raw.url) == (200, b'{"ok":true}')
        assert raw.connections == 2
    finally:
        client.close()


async def test_an_answer_planted_on_an_idle_connection_is_not_the_next_callers(
        raw: RawServer) -> None:
    """The attack (issue 88): an upstream writes a second answer on a kept-alive
    connection while it is idle; the next call, another tenant's, was handed it as its
    own answer. The connection is ended instead, and the call made on a new one."""
    planted = (b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n"
               b'{"planted":true}\n')
    answered = asyncio.Event()  # the first call's answer read, its connection kept

    async def plants(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if raw.connections > 1:
            return await answer_each(OK)(reader, writer)
        await raw.request(reader)
        writer.write(OK)
        await writer.drain()
        await answered.wait()
        writer.write(planted)  # on the idle connection, answering no request
        await writer.drain()
        await reader.read()
    raw.script = plants
    client = UpstreamClient()
    try:
        assert await call(client, raw.url) == (200, b'{"ok":true}')
        answered.set()
        idle = next(iter(client.idle.values()))
        while not idle[0].received:  # the planted bytes came to the idle connection
            await asyncio.sleep(0.01)
        assert await call(client, raw.url) == (200, b'{"ok":true}')
        assert raw.connections == 2 and len(raw.requests) == 2
    finally:
        client.close()


async def test_endless_interim_answers_fail_the_call_naming_the_bound(
        raw: RawServer) -> None:
    """The attack (issue 88): `100 Continue` heads without end held the call to the
    model's timeout. MAX_INTERIM of them are read; one more fails the call at once."""
    async def continues(reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                        ) -> None:
        await raw.request(reader)
        for _ in range(MAX_INTERIM):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(OK)  # the answer after as many as are read
        await raw.request(reader)
        while True:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.001)
    raw.script = continues
    client = UpstreamClient()
    try:
        assert await call(client, raw.url) == (200, b'{"ok":true}')
        started = asyncio.get_running_loop().time()
        assert await failure(client, raw.url, timeout=30) == \
            f"the upstream sent over MAX_INTERIM ({MAX_INTERIM}) interim answers (1xx)"
        assert asyncio.get_running_loop().time() - started < 5  # (not the 30 s timeout)
    finally:
        client.close()


async def test_a_connection_cut_before_any_answer_fails_naming_it(raw: RawServer) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.request(reader)
        writer.transport.abort()
    raw.script = cut
    client = UpstreamClient()
    try:
        message = await failure(client, raw.url)
        assert message.startswith("the upstream closed the connection"), message
        assert raw.connections == 1  # a new connection's failure is not tried again
    finally:
        client.close()


NOT_HTTP = "the upstream's answer is not HTTP/1.1: "  # then llhttp's words


@pytest.mark.parametrize(("written", "said"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"half\":",
     "the upstream's answer was cut before its end (the upstream closed the connection)"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nhalf",
     "the upstream's answer was cut before its end (the upstream closed the connection)"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
     NOT_HTTP + "Invalid character in chunk size"),
    # what int(x, 16) reads and no HTTP peer means (a negative size looped the daemon)
    *((b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%b\r\nabcdefghij" % size,
       NOT_HTTP + "Invalid character in chunk size")
      for size in (b"-5", b"+5", b"0x10", b"1_0", b"")),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%b\r\nabcdefghij" % (b"1" * 17),
     NOT_HTTP + "Chunk size overflow"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n",
     NOT_HTTP + "Invalid character in Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
     NOT_HTTP + "Invalid character in Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 1\r\n\r\nx",
     "the upstream's Content-Encoding 'br' is not one corral reads (asked for identity)"),
    (b"SPDY/3 200 OK\r\n\r\n", NOT_HTTP + "Expected HTTP/, RTSP/ or ICE/"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", NOT_HTTP + "Invalid header token"),
    # (llhttp's upgrade, raised past the client, failed the call as a defect)
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
     "the upstream switched protocols (101), asked for none"),
])
async def test_a_half_written_or_broken_answer_fails_naming_how(
        raw: RawServer, written: bytes, said: str) -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.request(reader)
        writer.write(written)
        await writer.drain()
        writer.transport.abort()
    raw.script = half
    client = UpstreamClient()
    try:
        assert await failure(client, raw.url) == said
    finally:
        client.close()


async def test_a_slow_upstream_fails_at_the_calls_timeout(raw: RawServer) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.request(reader)
        await reader.read()
    raw.script = silent
    client = UpstreamClient()
    try:
        assert await failure(client, raw.url, timeout=0.2) == \
            "the upstream did not answer in 0.2 s"
    finally:
        client.close()


async def test_each_call_on_a_kept_connection_has_its_own_timeout(raw: RawServer) -> None:
    """One timer a connection, armed again as calls come: a call's shorter timeout
    still ends it at its own deadline, and an earlier call's deadline passing during a
    later call's wait ends nothing."""
    async def slower(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.request(reader)
        writer.write(OK)  # the first call, at once
        await raw.request(reader)
        await asyncio.sleep(0.5)  # past the first call's deadline (0.2 s)
        writer.write(OK)
        await raw.request(reader)
        await reader.read()  # the third never answered
    raw.script = slower
    client = UpstreamClient()
    try:
        assert await call(client, raw.url, timeout=0.2) == (200, b'{"ok":true}')
        assert await call(client, raw.url, timeout=30) == (200, b'{"ok":true}')
        started = asyncio.get_running_loop().time()
        assert await failure(client, raw.url, timeout=0.3) == \
            "the upstream did not answer in 0.3 s"
        assert asyncio.get_running_loop().time() - started < 5  # (not the 30 s call's)
        assert raw.connections == 1
    finally:
        client.close()


async def test_a_stream_that_stops_mid_body_fails_at_the_timeout_not_as_its_end(
        raw: RawServer) -> None:
    """A body read to the connection's end: the call's time running out is a failure,
    never taken for the body's end."""
    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: 1\n\n")
        await writer.drain()
        await reader.read()
    raw.script = stalls
    client = UpstreamClient()
    try:
        answer = await client.post(raw.url, BODY, {}, 0.3)
        while not (got := answer.ready()):
            await answer.more()
        assert got == b"data: 1\n\n"
        with pytest.raises(UpstreamFailed) as caught:
            while not answer.ended:  # (a reader's loop: what is at hand, or a wait)
                assert answer.ready() == b""
                await answer.more()
        assert str(caught.value) == "the upstream did not answer in 0.3 s"
        answer.release()
    finally:
        client.close()


async def test_an_answer_past_its_bounds_fails_naming_the_bound(raw: RawServer) -> None:
    big = b"x" * (MAX_ANSWER + 1)
    raw.script = answer_each(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big)
    client = UpstreamClient()
    try:
        assert await failure(client, raw.url) == \
            f"the upstream's answer is over MAX_ANSWER ({MAX_ANSWER} bytes)"
        raw.script = answer_each(b"HTTP/1.1 200 OK\r\nx-big: " + b"y" * MAX_HEAD)
        assert await failure(client, raw.url) == \
            f"the upstream's answer's head is over MAX_HEAD ({MAX_HEAD} bytes)"
    finally:
        client.close()


async def test_nothing_listening_and_a_header_with_a_line_break_fail_naming_them(
        raw: RawServer) -> None:
    client = UpstreamClient()
    assert raw.server is not None
    raw.server.close()
    await raw.server.wait_closed()
    try:
        message = await failure(client, raw.url)
        assert message.startswith("no connection: ConnectionRefusedError"), message
        with pytest.raises(UpstreamFailed) as caught:
            await client.post(raw.url, BODY, {"x-a": "1\r\nHost: evil"}, 10)
        assert str(caught.value) == "the header 'x-a' for the upstream holds a line break"
        with pytest.raises(UpstreamFailed) as caught:  # (a call's own, after a route's)
            await client.post(raw.url, BODY, fields({}), 10, {"x-b": "1\nHost: evil"})
        assert str(caught.value) == "the header 'x-b' for the upstream holds a line break"
    finally:
        client.close()
