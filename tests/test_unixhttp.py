"""corral mcp serve's HTTP/1.1 exchanges on a unix socket (corral/cli/unixhttp.py), against
a real unix server that answers each request with the bytes a test gives it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.cli.unixhttp import ExchangeError, NoConnection, exchange
from corral.http1answer import MAX_HEAD


class Server:
    """Reads each request's head and body (by its Content-Length), writes `answer`, then
    closes the connection (or, `hold`, leaves it open until the test ends)."""

    def __init__(self, answer: bytes, hold: bool = False) -> None:
        self.answer = answer
        self.hold = hold
        self.requests: asyncio.Queue[bytes] = asyncio.Queue()
        self.connections = 0
        self.held: list[asyncio.StreamWriter] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:")]
        body = await reader.readexactly(length[0]) if length else b""
        await self.requests.put(head + body)
        writer.write(self.answer)
        await writer.drain()
        if self.hold:
            self.held.append(writer)
        else:
            writer.close()


@pytest.fixture
async def serving(tmp_path: Path) -> AsyncIterator[tuple[str, list[Server]]]:
    """The socket's path, and the list a test puts its one Server in."""
    path = str(tmp_path / "gw.sock")
    servers: list[Server] = []
    server = await asyncio.start_unix_server(lambda r, w: servers[0].serve(r, w), path)
    try:
        yield path, servers
    finally:
        for s in servers:
            for w in s.held:
                w.close()
        server.close()
        await server.wait_closed()


async def test_a_request_is_sent_whole_and_its_answer_read_by_its_length(
        serving: tuple[str, list[Server]]) -> None:
    path, servers = serving
    servers.append(Server(b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8"
                          b"\r\nMcp-Session-Id: s1\r\nContent-Length: 7\r\n\r\n{\"a\":1}"))
    async with await exchange(path, "POST", "/mcp?agent=a%20b", {"Accept": "x"},
                              b'{"id":1}') as answer:
        assert (answer.status, answer.content_type) == (200, "application/json")
        # a header's name in any case finds it
        assert answer.headers.get("MCP-SESSION-ID") == answer.headers.get("mcp-session-id") == "s1"
        assert await answer.read() == b'{"a":1}'
    assert await servers[0].requests.get() == (
        b"POST /mcp?agent=a%20b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        b"Accept: x\r\nContent-Length: 8\r\n\r\n{\"id\":1}")


async def test_a_chunked_stream_comes_as_it_is_sent_and_ends_with_its_last_chunk(
        serving: tuple[str, list[Server]]) -> None:
    path, servers = serving
    # the stream's end is its last chunk: the connection is left open
    servers.append(Server(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n"
                          b"0\r\n\r\n", hold=True))
    async with await exchange(path, "GET", "/mcp", {}) as answer:
        assert answer.content_type == "text/event-stream"
        assert b"".join([chunk async for chunk in answer.chunks()]) == b"hello world"
    assert (await servers[0].requests.get()).startswith(b"GET /mcp HTTP/1.1\r\n")


async def test_a_body_of_no_stated_length_runs_to_the_connections_end(
        serving: tuple[str, list[Server]]) -> None:
    path, servers = serving
    servers.append(Server(b"HTTP/1.1 404 Not Found\r\n\r\nsession gone"))
    async with await exchange(path, "GET", "/mcp", {}) as answer:
        assert (answer.status, await answer.read()) == (404, b"session gone")


async def test_an_answer_cut_short_is_broken(serving: tuple[str, list[Server]]) -> None:
    path, servers = serving
    servers.append(Server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"))
    async with await exchange(path, "GET", "/mcp", {}) as answer:
        with pytest.raises(ExchangeError, match=r"^the daemon's answer was cut before its end$"):
            await answer.read()


@pytest.mark.parametrize("answer, said", [
    (b"SSH-2.0-OpenSSH\r\n\r\n", r"^the daemon's answer is not HTTP/1\.1: "),
    (b"", "^the connection ended before the daemon's answer$"),
    (b"HTTP/1.1 200 OK\r\n", "^the daemon's answer was cut before its end$"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * (2 * MAX_HEAD),
     rf"^the daemon's answer's head is over MAX_HEAD \({MAX_HEAD} bytes\)$"),
])
async def test_what_is_no_whole_answer_is_broken(serving: tuple[str, list[Server]],
                                                 answer: bytes, said: str) -> None:
    path, servers = serving
    servers.append(Server(answer))
    with pytest.raises(ExchangeError, match=said):
        await exchange(path, "GET", "/mcp", {})


async def test_no_socket_is_unreachable_with_its_reason(tmp_path: Path) -> None:
    with pytest.raises(NoConnection) as got:
        await exchange(str(tmp_path / "none.sock"), "GET", "/mcp", {})
    assert got.value.strerror == "No such file or directory"


@pytest.mark.parametrize("name, value", [("X-Name", "a\r\nInjected: 1"), ("X\nY", "v"),
                                         ("X-Name", "a\0b")])
async def test_a_header_no_request_may_carry_is_refused_before_a_connection(
        serving: tuple[str, list[Server]], name: str, value: str) -> None:
    path, servers = serving
    servers.append(Server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    with pytest.raises(ValueError, match=r"^a header no HTTP/1\.1 request may carry: "):
        await exchange(path, "POST", "/mcp", {name: value}, b"{}")
    assert servers[0].connections == 0
