"""The A2A door's messages read lean on the [http] site (corral/daemon/models/lean.py): a
POST of /a2a/AGENT or /a2a/AGENT/message:send in the common shape is read by httptools
and served by the door's own handler (routes.py `lean`), anything else handed to aiohttp
with its connection; the two answer alike, and every hostile client meets the same
refusal and the same bounds on both. Raw HTTP/1.1 on sockets.

Real parts: the daemon in this loop (its connections looked at: which path each is on),
or a daemon process for the bounds (tests/test_http_hostile.py's probe), the TCK's agent
(examples/a2a/tck_agent.py) and examples/hello.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from corral.daemon.caller import Caller
from corral.daemon.models.lean import LEAN_BODY

from ..daemon_harness import free_port, in_process
from ..test_daemon_cli import tmp
from ..test_http_hostile import IDLE, Http, MiB, Probe, answer_of, dripped, http, settled
from ..test_model_lean import Wire
from .harness import a2a_config, tck_agent

__all__ = ["http", "tmp"]

OPERATOR = Caller(via="socket")
CARD = b"GET /a2a/tck/.well-known/agent-card.json HTTP/1.1\r\nHost: corral\r\n\r\n"


def post(path: str, body: bytes, *extra: str, first: str = "") -> bytes:
    head = [first or f"POST {path} HTTP/1.1", "Host: corral",
            "Content-Type: application/json", *extra]
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in extra):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def send(mid: str, method: str = "SendMessage") -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": {"message": {
        "messageId": mid, "role": "ROLE_USER", "parts": [{"text": "hi"}]}}}).encode()


def message(mid: str) -> bytes:
    return json.dumps({"message": {"messageId": mid, "role": "ROLE_USER",
                                   "parts": [{"text": "hi"}]}}).encode()


def alike(answer: tuple[int, dict[str, str], bytes]) -> tuple[Any, ...]:
    """An answer but for what differs between two sends (a task's ids and times, aiohttp's
    Date and Server headers on an answer it wrote)."""
    status, headers, body = answer
    kept = {k: v for k, v in headers.items() if k not in ("date", "server", "content-length")}
    text = re.sub(rb'"(id|taskId|contextId|timestamp|artifactId|messageId)":"[^"]*"',
                  rb'"\1":"-"', body)
    return status, kept, json.loads(text)


async def open_wire(port: int) -> Wire:
    return Wire(*await asyncio.open_connection("127.0.0.1", port))


async def aiohttps(port: int) -> Wire:
    """A connection aiohttp reads from its first request on (lean hands over a GET)."""
    wire = await open_wire(port)
    wire.writer.write(CARD)
    assert (await wire.answer())[0] == 200
    return wire


def lean_connections(d: Any) -> list[bool]:
    """Whether each of the [http] site's open connections is lean's still."""
    server = d.http_server.runner.server
    return [conn._lean for conn in server.connections]


@pytest.mark.timeout(120)
async def test_a_message_read_lean_is_answered_as_aiohttps_and_streams_are_handed_over(
        tmp_path: Path) -> None:
    """Each request on a fresh connection (lean's) and on one a GET made aiohttp's: a
    blocking message on both bindings (an anonymous caller's, a token's), and the refusals
    (no token, a bad one, a token not seeing the agent, an agent not found, a version not
    served, a body not JSON or not JSON's type, a taskId not found): answered alike, the
    fresh connection lean's still after each, and each counted in /metrics' requests as
    aiohttp's are. A message asking for a stream (JSON-RPC and HTTP+JSON) and one with a
    query are aiohttp's, as they came: the stream's events come, its connection is
    aiohttp's from then on. Fails with lean answering any of these otherwise, or taking a
    stream (the door's task made, then nothing written)."""
    port = free_port()
    async with in_process(tmp_path, tck_agent() + tck_agent("private"),
                          a2a_config(port)) as d:
        seer = await d.dispatcher.call(OPERATOR, "tokens.create", {
            "name": "seer", "scopes": ["tasks:run", "tasks:read"]})
        blind = await d.dispatcher.call(OPERATOR, "tokens.create", {
            "name": "blind", "scopes": ["tasks:run", "tasks:read"], "agents": "tck"})
        requests = d.http_server.ctx.requests
        n = iter(range(1000))
        cases = [
            lambda: post("/a2a/tck", send(f"tck-complete-task-{next(n)}")),
            lambda: post("/a2a/tck/message:send", message(f"tck-complete-task-{next(n)}")),
            lambda: post("/a2a/private", send(f"tck-complete-task-{next(n)}"),
                         f"Authorization: Bearer {seer.token}"),
            lambda: post("/a2a/private", send("no token")),
            lambda: post("/a2a/private/message:send", message("no"),
                         "Authorization: Bearer not-a-token"),
            lambda: post("/a2a/private", send("blind"), f"Authorization: Bearer {blind.token}"),
            lambda: post("/a2a/nobody", send("nobody")),
            lambda: post("/a2a/tck", send("v9"), "A2A-Version: 9"),
            lambda: post("/a2a/tck", b'{"jsonrpc": "2.0", "id": 1, "method": '),
            lambda: post("/a2a/tck/message:send", b"[1]"),
            lambda: post("/a2a/tck", b"{}", first="POST /a2a/tck HTTP/1.1").replace(
                b"application/json", b"text/plain"),
            lambda: post("/a2a/tck", json.dumps({"jsonrpc": "2.0", "id": 7, "method": "GetTask",
                                                 "params": {"id": "none"}}).encode()),
        ]
        for make in cases:
            lean, handed = await open_wire(port), await aiohttps(port)
            before = dict(requests)
            lean.writer.write(make())
            got = await lean.answer()
            assert sorted(lean_connections(d)) == [False, True], make()
            counted = {k: v - before.get(k, 0) for k, v in requests.items()
                       if v != before.get(k, 0)}
            assert len(counted) == 1 and list(counted.values()) == [1], counted
            (route, status), = counted
            assert route.startswith("/a2a/{agent}") and status == str(got[0]), counted
            handed.writer.write(make())
            assert alike(got) == alike(await handed.answer()), make()
            assert requests[route, status] == before.get((route, status), 0) + 2
            for wire in (lean, handed):
                wire.writer.close()
            await asyncio.sleep(0)
        assert alike(got)[2]["error"]["code"] == -32001  # (the last: a task not found)
        # a stream, a query: aiohttp's, as they came
        for request in (post("/a2a/tck", send(f"tck-stream-001-{next(n)}",
                                              "SendStreamingMessage")),
                        post("/a2a/tck/message:stream", message(f"tck-stream-001-{next(n)}")),
                        post("/a2a/tck/message:send?historyLength=1",
                             message(f"tck-complete-task-{next(n)}"),
                             first="POST /a2a/tck/message:send?historyLength=1 HTTP/1.1")):
            wire = await open_wire(port)
            wire.writer.write(request)
            status, headers, body = await wire.answer()
            assert status == 200, body
            assert lean_connections(d) == [False]
            if headers["content-type"].startswith("text/event-stream"):
                events = [json.loads(line[5:]) for line in body.split(b"\n")
                          if line.startswith(b"data:")]
                assert events and all("error" not in e for e in events), events
            wire.writer.close()
            await wait_closed(d)


async def wait_closed(d: Any) -> None:
    for _ in range(500):
        if not lean_connections(d):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("a connection the test closed is still open")


async def closed(wire: Wire) -> bool:
    """Whether the daemon closes the connection, nothing more said."""
    got = await asyncio.wait_for(wire.reader.read(), 60)
    wire.writer.close()
    return got == b""


async def tasks_made(d: Any) -> int:
    page = await d.dispatcher.call(OPERATOR, "tasks.list", {"agent": "tck", "limit": 100})
    return len(page.tasks)


@pytest.mark.timeout(120)
async def test_a_head_aiohttp_refuses_is_refused_alike_and_nothing_smuggled_behind_a_message(
        tmp_path: Path) -> None:
    """An A2A message's head made a smuggling or desync attempt (models/lean.py's list,
    tests/test_lean_attacks.py: a Content-Length signed, hex, doubled, beside
    Transfer-Encoding; names and values with a space, a NUL, a bare CR or LF hiding a
    second Content-Length; a target with a NUL or a byte past ASCII; a request line
    otherwise; no Host) is answered on lean's connection as on aiohttp's (a 400, the
    connection closed) and makes no task. Then a good message with an attack pipelined
    behind it (a name with a NUL; Transfer-Encoding beside a Content-Length whose chunked
    body holds a second message: the smuggled one): the first answered alone, the second
    refused, the connection closed; one task made, the smuggled one never. Fails with
    lean taking any of them, or reading the second as the first's body."""
    port = free_port()
    async with in_process(tmp_path, tck_agent(), a2a_config(port)) as d:
        body = send("tck-complete-task-attack")
        n, line = len(body), "POST /a2a/tck HTTP/1.1"

        def call(*extra: str, first: str = line, length: str = f"Content-Length: {n}") -> bytes:
            return post("", body, *extra, length, first=first)

        refused = [call(length=f"Content-Length: +{n}"), call(length=f"Content-Length: 0x{n:x}"),
                   call(length="Content-Length: 99999999999999999999999999"),
                   call(f"Content-Length: {n}"), call("Transfer-Encoding: chunked"),
                   call("X A: 1"), call("X\x00A: 1"), call("Transfer-Encoding : chunked"),
                   call("X-A: 1", " Content-Length: 3"), call("X-A: 1\x002"),
                   call("X-A: 1\nContent-Length: 3"), call("X-A: 1\rContent-Length: 3"),
                   *(call(first=f"POST /a2a/tck?{c} HTTP/1.1") for c in ("\x00", "\xe9")),
                   call(first=line + " "), call(first="POST /a2a/tck http/1.1"),
                   call(first="post /a2a/tck HTTP/1.1"),
                   call().replace(b"Host: corral\r\n", b"")]
        made = await tasks_made(d)
        for attack in refused:
            lean, handed = await open_wire(port), await aiohttps(port)
            for wire in (lean, handed):
                wire.writer.write(attack)
            refusal = alike(await lean.answer())
            assert refusal[0] == 400, (attack, refusal)
            assert refusal == alike(await handed.answer()), attack
            assert await closed(lean) and await closed(handed)
        assert await tasks_made(d) == made
        good = post("/a2a/tck", send("tck-complete-task-first"))
        inner = post("/a2a/tck", send("tck-complete-task-smuggled"))
        for attack in (post("/a2a/tck", body, "X\x00: 1"),
                       post("/a2a/tck", b"0\r\n\r\n" + inner, "Transfer-Encoding: chunked",
                            f"Content-Length: {len(inner) + 5}")):
            wire = await open_wire(port)
            wire.writer.write(good + attack)
            status, _, answer = await wire.answer()
            assert (status, json.loads(answer)["result"]["task"]["status"]["state"]) == (
                200, "TASK_STATE_COMPLETED")
            assert (await wire.answer())[0] == 400
            assert await closed(wire)
        assert await tasks_made(d) == made + 2  # (the good one twice: no context, no key)


# a look at a task that is none (answered by the door; no task made: the agent stays ready)
LOOK = b'{"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "none"}}'


def a2a_head(token: str, length: int, extra: str = "") -> bytes:
    """A message's head as lean takes it, to hello (a token's caller), up to its body."""
    return (f"POST /a2a/hello HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\n{extra}Content-Length: {length}\r\n\r\n"
            ).encode()


@pytest.mark.deadline(120)
def test_slow_and_silent_a2a_clients_are_closed_at_the_idle_timeout(http: Http) -> None:
    """On the [http] site (idle_timeout 2 s), 60 connections: silent, sending a message's
    head a byte every 20 ms (never whole), or its whole head then its body a byte every
    20 ms (lean holds it until whole): each closed within the idle timeout; then a
    request sent whole in pieces within it is answered. The daemon's loop never stalls and
    its memory stays within 32 MiB. Fails with lean holding a head or a body it waits for
    past the idle timeout (aiohttp reads a body it was handed for as long as it comes)."""
    token = http.token("slow")
    rss0 = http.rss()
    probe = Probe(http.d)
    head = a2a_head(token, 100_000, "X-Pad: " + "a" * 4000 + "\r\n")
    slow = [socket.create_connection(("127.0.0.1", http.port)) for _ in range(60)]
    for k, s in enumerate(slow):
        if k % 3 == 2:
            s.sendall(head)
        s.setblocking(False)
    gone = dripped(slow, lambda k, i: (head[i:i + 1] if k % 3 == 1 else b"{")
                   if k % 3 else b"")
    assert len(gone) == len(slow), f"{len(slow) - len(gone)} still open"
    assert max(gone.values()) < IDLE + 5, sorted(gone.values())[-3:]
    whole = a2a_head(token, len(LOOK)) + LOOK
    with socket.create_connection(("127.0.0.1", http.port)) as s:
        for at in range(0, len(whole), 32):
            s.send(whole[at:at + 32])
            time.sleep(0.01)
        got = answer_of(s, 10)
        assert got.startswith(b"HTTP/1.1 200") and b"no such task: none" in got, got
    settled(http, rss0, 32 * MiB, probe)


@pytest.mark.deadline(180)
def test_oversized_a2a_messages_are_refused_or_read_by_aiohttp_and_bounded(http: Http) -> None:
    """A message's head with 8 MiB of one header that never ends, on each of 20
    connections: a 400 or 431, closed, what follows not read (RSS within 48 MiB). A body
    announced past the door's limit: a 413 before it is read. A body past LEAN_BODY
    (lean's bound): aiohttp's to read as it comes, answered by the door. Fails with lean holding a
    head or a body past its bounds."""
    token = http.token("big")
    rss0 = http.rss()
    probe = Probe(http.d)
    endless = a2a_head(token, 2)[:-len("Content-Length: 2\r\n\r\n")] + b"X-Endless: " + \
        b"b" * (8 * MiB)
    socks = [socket.create_connection(("127.0.0.1", http.port)) for _ in range(20)]
    for s in socks:
        with contextlib.suppress(OSError):  # refused and closed before all was sent
            s.sendall(endless)
    for s in socks:
        got = answer_of(s, 10)
        s.close()
        assert re.match(rb"HTTP/1\.[01] (400|431) ", got) or got == b"", got[:200]
    with socket.create_connection(("127.0.0.1", http.port)) as s:
        s.sendall(a2a_head(token, 17 * MiB) + b"{" * MiB)
        assert answer_of(s, 10).startswith(b"HTTP/1.1 413"), "a body past the limit"
    big = LOOK.replace(b'"none"', b'"none", "pad": "%b"' % (b"a" * LEAN_BODY))
    with socket.create_connection(("127.0.0.1", http.port)) as s:
        s.sendall(a2a_head(token, len(big), "Connection: close\r\n") + big)
        got = answer_of(s, 30)
        assert got.startswith(b"HTTP/1.1 200") and b"no such task: none" in got, got[:300]
    settled(http, rss0, 48 * MiB, probe)
