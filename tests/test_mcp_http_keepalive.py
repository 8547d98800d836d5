"""corral's MCP client over HTTP (corral/mcp/http.py) and a server's idle close of a kept
connection. A server closes a connection idle past its keep-alive limit, and a request
sent on it as it closes is reset unread: the conformance suite's Express servers did so at
load (the client idle through an OAuth round in between), and the whole transport was
lost, 'unreachable: [Errno 104] Connection reset by peer'. The client keeps a connection
only a short while idle (KEEPALIVE), and a request safe to repeat that a reset met on a
kept connection is sent once more on a new one (corral/mcp/resend.py); a tools/call is
not. A real server on a socket here resets what arrives on a connection idle past its
limit, or the next request on a kept connection when told to."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from corral import jsonrpc
from corral.mcp.http import KEEPALIVE, HttpTransport

# the server's idle limit: past the client's keep-alive, as servers' limits are
IDLE = KEEPALIVE + 1.0
RESET = "[Errno 104] Connection reset by peer"


class KeptServer:
    """HTTP/1.1 that answers each JSON-RPC POST at once and keeps its connection; a
    request arriving on a connection idle IDLE seconds or more is reset unread (the
    server's idle close crossed it), and so is the next one on a kept connection after
    `reset_next` is set."""

    def __init__(self) -> None:
        self.connections = 0
        self.resets = 0
        self.reset_next = False

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                    ) -> None:
        self.connections += 1
        connection = self.connections
        answered = time.monotonic()
        served = 0
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                if time.monotonic() - answered >= IDLE or (self.reset_next and served):
                    self.reset_next = False
                    self.resets += 1
                    writer.get_extra_info("socket").setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                request = msgspec.json.decode(await reader.readexactly(length))
                body = msgspec.json.encode({"jsonrpc": "2.0", "id": request["id"],
                                            "result": {"connection": connection}})
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                served += 1
                answered = time.monotonic()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


class Client:
    """An HttpTransport and what it was fed, each answer awaited by its id."""

    def __init__(self, url: str) -> None:
        self.answers: dict[int, dict[str, Any]] = {}
        self.arrived = asyncio.Event()
        self.lost: list[str] = []
        self.transport = HttpTransport("kept", url, feed=self.fed, on_lost=self.lost.append)

    def fed(self, line: bytes) -> None:
        message = msgspec.json.decode(line)
        self.answers[message["id"]] = message
        self.arrived.set()

    async def ask(self, request_id: int, method: str = "tools/list") -> dict[str, Any]:
        params = {"name": "act", "arguments": {}} if method == "tools/call" else {}
        self.transport.send(msgspec.json.encode({"jsonrpc": "2.0", "id": request_id,
                                                 "method": method, "params": params}))
        async with asyncio.timeout(30):
            while request_id not in self.answers:
                self.arrived.clear()
                await self.arrived.wait()
        return self.answers[request_id]


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[tuple[KeptServer, Client, str]]:
    kept = KeptServer()
    server = await asyncio.start_server(kept.serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp"
    client = Client(url)
    try:
        yield kept, client, url
    finally:
        await client.transport.close()
        server.close()
        await server.wait_closed()


def answer(request_id: int, connection: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": {"connection": connection}}


async def test_a_connection_idle_past_the_servers_limit_is_not_sent_on() -> None:
    async with serving() as (server, client, _url):
        assert await client.ask(1) == answer(1, 1)
        # the idle time is what is tested: the client waits past the server's limit
        await asyncio.sleep(IDLE + 0.5)
        assert await client.ask(2) == answer(2, 2)
        assert (client.lost, server.connections, server.resets) == ([], 2, 0)


async def test_requests_one_after_another_share_one_connection() -> None:
    async with serving() as (server, client, _url):
        for n in (1, 2, 3):
            assert await client.ask(n) == answer(n, 1)
        assert (client.lost, server.connections, server.resets) == ([], 1, 0)


async def test_a_listing_reset_on_a_kept_connection_is_sent_again_on_a_new_one() -> None:
    async with serving() as (server, client, _url):
        assert await client.ask(1) == answer(1, 1)
        server.reset_next = True
        assert await client.ask(2) == answer(2, 2)
        assert (client.lost, server.connections, server.resets) == ([], 2, 1)
        # (the one sent again had a connection of its own, closed after it)
        assert await client.ask(3) == answer(3, 3)
        assert (client.lost, server.connections, server.resets) == ([], 3, 1)


async def test_a_tool_call_reset_on_a_kept_connection_is_not_sent_again() -> None:
    async with serving() as (server, client, url):
        assert await client.ask(1) == answer(1, 1)
        server.reset_next = True
        assert await client.ask(2, "tools/call") == {"jsonrpc": "2.0", "id": 2, "error": {
            "code": jsonrpc.REFUSED, "message": f"cannot reach {url}: {RESET}"}}
        assert (client.lost, server.connections, server.resets) == (
            [f"unreachable: {RESET}"], 1, 1)
