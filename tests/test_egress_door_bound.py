"""The egress door's connections bounded (issue 88): 9,000 connections an agent held at
its door (egress = "gateways" as root: the daemon's listener in the agent's namespace,
each connection two of the daemon's fds) took the daemon to 19,999 of its 20,000 file
descriptors. An agent's doors hold MAX_HELD at once; past it a connection is answered at
once (a 503 naming corral's boundary, the agent's own error) and closed, and recorded as
`boundary.refused`; one let go makes room again."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from corral.supervisor.egressdoors import MAX_HELD, Doors, spawning_in
from corral.supervisor.refusals import BoundaryRefusals, BoundaryRefused
from corral.supervisor.stream import Stream

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the daemon holds the agent's "
                                                          "namespace as root alone")


async def _connect(ns: int, port: int) -> socket.socket:
    sock = spawning_in(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def _until(condition: object) -> None:
    async with asyncio.timeout(30):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_connections_held_at_the_egress_door_are_bounded_and_refusals_recorded(
        tmp_path: Path) -> None:
    stream = Stream()
    said: list[BoundaryRefused] = []
    stream.subscribe(said.append, BoundaryRefused)
    refusals = BoundaryRefusals(stream)
    passed: list[asyncio.StreamWriter] = []

    async def gateway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        passed.append(writer)
        await reader.read()
        writer.close()

    gateways = str(tmp_path / "gw.sock")
    server = await asyncio.start_unix_server(gateway, gateways)
    doors = Doors(refusals)
    held: list[socket.socket] = []
    try:
        ns = await doors.open("web#0", "http://127.0.0.1:8787", gateways,
                              task_of=lambda: "t1")
        assert ns is not None
        for _ in range(MAX_HELD):
            held.append(await _connect(ns, 8787))
        await _until(lambda: len(passed) == MAX_HELD)
        # one more: reset by the door, never passed on, and recorded
        extra = await _connect(ns, 8787)
        held.append(extra)
        # the agent's HTTP client reads why, in corral's words (egressdoors.http_refusal)
        got = await asyncio.wait_for(_read_all(extra), 30)
        body = (f"refused by corral's boundary: agent web's connection to corral's "
                f"gateways at 127.0.0.1:8787 (over {MAX_HELD} connections held by the "
                "agent); this attempt is recorded (boundary.refused)\n").encode()
        assert got == (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; "
                       b"charset=utf-8\r\nConnection: close\r\nContent-Length: "
                       + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert len(passed) == MAX_HELD
        assert [(e.agent, e.task, e.kind, e.target) for e in said] == [
            ("web", "t1", "connect",
             f"127.0.0.1:8787 (over {MAX_HELD} connections held by the agent)")]
        assert refusals.counts == {("web", "connect"): 1}
        # one let go: the next connection is passed on again
        held.pop(0).close()
        await _until(lambda: doors.held.by_agent.get("web") == MAX_HELD - 1)
        held.append(await _connect(ns, 8787))
        await _until(lambda: len(passed) == MAX_HELD + 1)
        assert len(said) == 1
    finally:
        for sock in held:
            sock.close()
        doors.close()
        server.close()
        for writer in passed:
            writer.close()


async def _read_all(sock: socket.socket) -> bytes:
    got = b""
    while chunk := await _read(sock, 4096):
        got += chunk
    return got


async def _read(sock: socket.socket, n: int = 1) -> bytes:
    try:
        return await asyncio.get_running_loop().sock_recv(sock, n)
    except ConnectionResetError:
        return b""
