"""A hostile client against the gateway's lean HTTP/1.1 path (corral/daemon/models/lean.py),
raw bytes on a socket: every request lean takes must be one aiohttp takes alike, and every
one aiohttp refuses or reads otherwise must be aiohttp's (smuggling and desync live in the
difference). Each attack is sent twice, on a fresh connection (lean's) and on one a GET made
aiohttp's for its life, and the two answers compared.

Real parts: the daemon in this loop, the stand-in provider (tests/servers/
model_upstream.py)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from corral.daemon.http.mcp import METADATA

from .daemon_harness import in_process
from .servers.model_upstream import StandIn
from .test_model_gateway import provider_key, upstream  # noqa: F401
from .test_model_lean import Wire, connected, fleet
from .test_model_usage import CHAT, chat, token_of

GET = b"GET /.well-known/oauth-protected-resource HTTP/1.1\r\nHost: corral\r\n\r\n"
INIT = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {},
    "clientInfo": {"name": "attack", "version": "1"}}}).encode()


async def writable(s: socket.socket) -> None:
    loop, ready = asyncio.get_running_loop(), asyncio.Event()
    loop.add_writer(s.fileno(), ready.set)
    try:
        await ready.wait()
    finally:
        loop.remove_writer(s.fileno())


def raw(line: str, *headers: str, body: bytes) -> bytes:
    return "\r\n".join([line, *headers, "", ""]).encode("latin-1") + body


async def aiohttps(d: Any) -> Wire:
    """A connection aiohttp reads from its first request on (lean hands over a GET)."""
    wire = await connected(d)
    wire.writer.write(GET)
    assert (await wire.answer())[0] == 200
    return wire


def unvarying(answer: tuple[int, dict[str, str], bytes]) -> tuple[Any, ...]:
    """An answer but for what differs between two sends of one request (aiohttp's Date and
    Server headers, lean's answer has neither)."""
    status, headers, body = answer
    return status, {k: v for k, v in headers.items() if k not in ("date", "server")}, body


async def closed(wire: Wire) -> bool:
    """Whether the gateway closes the connection, nothing more said."""
    got = await asyncio.wait_for(wire.reader.read(), 60)
    wire.writer.close()
    return got == b""


async def test_a_head_aiohttp_refuses_or_reads_otherwise_is_never_lean(
        tmp_path: Path, upstream: StandIn) -> None:  # noqa: F811
    """Heads each a smuggling or desync attempt (a Content-Length with a sign, a space
    within, hex, a vertical tab, an overflow; two of them, equal; with Transfer-Encoding;
    header names with a space, a tab, a NUL, a parenthesis, a byte past ASCII, a space
    before the colon, an obs-fold; values with a NUL, DEL, a bare CR or LF hiding a second
    Content-Length; a target with a NUL, a tab, DEL or a byte past ASCII; a request line
    with two spaces or a trailing one, `http/1.1`, a lowercase method; no Host): answered
    on lean's connection as on aiohttp's, byte for byte but its date (a 400, the
    connection closed), no call made upstream. Then the shapes both take (a Content-Length
    of leading zeros, tabs around it, an absolute-form target, HTTP/1.0, Transfer-Encoding
    `Chunked`) answered alike too, and a POST of /mcp with an empty Host (a 401 naming
    localhost). Fails with lean taking any head aiohttp refuses (it took 16 of them: a
    200 and a call), or answering a shape otherwise (aiohttp's path answered the empty
    Host a 500, its traceback logged). An upgrade asked with no body is aiohttp's too
    (llhttp's parser beneath lean raised on it, the connection left unanswered)."""
    async with in_process(tmp_path, fleet(upstream.url)) as d:
        token = await token_of(d)
        body = json.dumps(chat("attack")).encode()
        n, line = len(body), f"POST {CHAT} HTTP/1.1"
        common = ["Host: corral", f"Authorization: Bearer {token}",
                  "Content-Type: application/json"]

        def call(*extra: str, first: str = line, length: str = f"Content-Length: {n}",
                 host: list[str] = common) -> bytes:
            return raw(first, *host, *extra, length, body=body)

        refused = [call(length=f"Content-Length: +{n}"), call(length=f"Content-Length: {n} 1"),
                   call(length=f"Content-Length: 0x{n:x}"),
                   call(length=f"Content-Length:\x0b{n}"),
                   call(length="Content-Length: 99999999999999999999999999"),
                   call(f"Content-Length: {n}"), call("Transfer-Encoding: chunked"),
                   call("Transfer-Encoding: chunked, identity"),
                   call("X A: 1"), call("X\tA: 1"), call("X\x00A: 1"), call("X(A): 1"),
                   call("X\xe9: 1"), call("Transfer-Encoding : chunked"),
                   call("X-A: 1", " Content-Length: 3"), call("X-A: 1\x002"), call("X-A: 1\x7f"),
                   call("X-A: 1\nContent-Length: 3"), call("X-A: 1\rContent-Length: 3"),
                   *(call(first=f"POST {CHAT}?{c} HTTP/1.1") for c in ("\x00", "\ta", "\x7f",
                                                                       "\xe9")),
                   call(first=line + " "),
                   call(first=f"POST {CHAT} http/1.1"), call(first=f"post {CHAT} HTTP/1.1"),
                   call(host=common[1:]),
                   raw("POST /mcp HTTP/1.1", "Content-Type: application/json",
                       f"Content-Length: {len(INIT)}", body=INIT)]
        made = upstream.calls()
        for attack in refused:
            lean, handed = await connected(d), await aiohttps(d)
            for wire in (lean, handed):
                wire.writer.write(attack)
            refusal = unvarying(await lean.answer())
            assert refusal[0] == 400, (attack, refusal)
            assert refusal == unvarying(await handed.answer()), attack
            assert await closed(lean) and await closed(handed)
        assert upstream.calls() == made
        chunked = b"%x\r\n%b\r\n0\r\n\r\n" % (n, body)
        taken = [call(length=f"Content-Length: 000{n}"), call(length=f"Content-Length:\t{n}\t"),
                 call(first=f"POST http://corral{CHAT} HTTP/1.1"),
                 call(first=f"POST {CHAT} HTTP/1.0"), call("X-A: caf\xe9"),
                 call(first=f"POST  {CHAT} HTTP/1.1"),
                 raw(line, *common, "Transfer-Encoding: Chunked", body=chunked)]
        for attack in taken:
            lean, handed = await connected(d), await aiohttps(d)
            for wire in (lean, handed):
                wire.writer.write(attack)
            alike = unvarying(await lean.answer())
            assert alike[0] == 200 and b"echo: attack" in alike[2], (attack, alike)
            assert alike == unvarying(await handed.answer()), attack
            lean.writer.close()
            handed.writer.close()
        assert upstream.calls() == made + len(taken) * 2
        # /mcp without a token and with an empty Host: a 401 naming localhost's metadata
        empty = raw("POST /mcp HTTP/1.1", "Host:", "Content-Type: application/json",
                    f"Content-Length: {len(INIT)}", body=INIT)
        lean, handed = await connected(d), await aiohttps(d)
        for wire in (lean, handed):
            wire.writer.write(empty)
        status, headers, _ = alike = unvarying(await lean.answer())
        assert (status, headers["www-authenticate"]) == (401, 'Bearer resource_metadata="'
                                                         f'http://localhost{METADATA}/mcp"')
        assert alike == unvarying(await handed.answer())
        # an upgrade asked with no body (llhttp ends the message at its head and says it
        # asks an upgrade): aiohttp's, answered alike, not lean's connection broken
        upgrade = raw(line, *common, "Connection: Upgrade", "Upgrade: websocket",
                      "Content-Length: 0", body=b"")
        lean, handed = await connected(d), await aiohttps(d)
        for wire in (lean, handed):
            wire.writer.write(upgrade)
        alike = unvarying(await lean.answer())
        assert alike[0] == 400 and alike == unvarying(await handed.answer()), alike


async def test_a_request_pipelined_behind_a_good_one_is_neither_its_body_nor_unchecked(
        tmp_path: Path, upstream: StandIn) -> None:  # noqa: F811
    """A call of the common shape, then in the same write a second that is an attack:
    without a token (a 401: its auth not skipped), a name with a NUL, a Content-Length
    hidden behind a bare LF, and Transfer-Encoding beside a Content-Length whose chunked
    body holds a third call (the smuggled one): the first answered (its body its own
    Content-Length's, no more), the second refused as aiohttp refuses it, then the
    connection closed; one call made upstream, the smuggled one never. Fails with the
    second read as part of the first's body, taken lean, or its inner call made."""
    async with in_process(tmp_path, fleet(upstream.url)) as d:
        token = await token_of(d)
        body = json.dumps(chat("first")).encode()
        head = [f"POST {CHAT} HTTP/1.1", "Host: corral", "Content-Type: application/json"]
        good = raw(*head, f"Authorization: Bearer {token}", f"Content-Length: {len(body)}",
                   body=body)
        inner = raw(*head, f"Authorization: Bearer {token}", f"Content-Length: {len(body)}",
                    body=body.replace(b"first", b"inner"))
        second = [raw(*head, "X\x00: 1", f"Authorization: Bearer {token}",
                      f"Content-Length: {len(body)}", body=body),
                  raw(*head, f"Authorization: Bearer {token}", "X-A: 1\nContent-Length: 0",
                      f"Content-Length: {len(inner)}", body=inner),
                  raw(*head, f"Content-Length: {len(inner) + 5}", "Transfer-Encoding: chunked",
                      body=b"0\r\n\r\n" + inner)]
        made = upstream.calls()
        wire = await connected(d)
        wire.writer.write(good + raw(*head, f"Content-Length: {len(body)}", body=body))
        assert json.loads((await wire.answer())[2])["choices"][0]["message"]["content"] \
            == "echo: first"
        status, _, refusal = await wire.answer()
        assert (status, json.loads(refusal)["error"]["code"]) == (401, "invalid_api_key")
        wire.writer.close()
        for attack in second:
            wire = await connected(d)
            wire.writer.write(good + attack)
            assert (await wire.answer())[0] == 200
            status, _, refusal = await wire.answer()
            assert status == 400, (attack, refusal)
            assert await closed(wire)
        assert upstream.calls() == made + 4


@pytest.mark.deadline(120)
@pytest.mark.parametrize("path", ["lean", "aiohttp"])
async def test_answers_a_client_does_not_read_stop_its_requests_being_read(
        tmp_path: Path, upstream: StandIn, path: str) -> None:  # noqa: F811
    """A client pipelines refused calls (no token, each answered a 401 larger than it) and
    reads none of the answers, on lean's connection and on one a GET made aiohttp's: the
    gateway stops reading its requests once its answers wait unread (the client's writes
    stall well before 64 MiB), then, read, every answer comes, in order, and the
    connection still serves. Fails with the daemon reading on and buffering the answers
    (lean took 125 MiB in 45 s, growing 250 MiB; aiohttp's path 172 MiB, 1.3 GiB)."""
    async with in_process(tmp_path, fleet(upstream.url)) as d:
        body = json.dumps(chat("unread")).encode()
        one = raw(f"POST {CHAT} HTTP/1.1", "Host: corral", "Content-Type: application/json",
                  f"Content-Length: {len(body)}", body=body)
        s = socket.socket()
        for buffer in (socket.SO_RCVBUF, socket.SO_SNDBUF):  # (the kernel's part: less)
            s.setsockopt(socket.SOL_SOCKET, buffer, 65536)
        s.connect(("127.0.0.1", int(d.services.gateway.url.split(":")[2].partition("/")[0])))
        s.setblocking(False)
        get = GET if path == "aiohttp" else b""
        flood, sent = memoryview(get + one * (64 * 1024 * 1024 // len(one))), 0
        while sent < len(flood):
            try:
                sent += s.send(flood[sent:sent + 65536])
            except BlockingIOError:
                try:  # (the daemon no longer reads: what the test waits for)
                    await asyncio.wait_for(writable(s), 2)
                except TimeoutError:
                    break
        assert sent < len(flood)
        token = await token_of(d)
        wire = Wire(*await asyncio.open_connection(sock=s))
        whole = -(-(sent - len(get)) // len(one))  # (the calls sent, one in part)
        wire.writer.write(flood[sent:len(get) + whole * len(one)].tobytes() + raw(
            f"POST {CHAT} HTTP/1.1", "Host: corral", f"Authorization: Bearer {token}",
            f"Content-Length: {len(body)}", body=body))
        if get:
            assert (await wire.answer())[0] == 200
        for _ in range(whole):
            assert (await wire.answer())[0] == 401
        status, _, answer = await wire.answer()
        assert (status, b"echo: unread" in answer) == (200, True)
        wire.writer.close()


async def test_calls_pipelined_behind_one_whose_body_came_late_are_each_answered(
        tmp_path: Path, upstream: StandIn) -> None:  # noqa: F811
    """On a connection aiohttp reads: a refused call's head alone (answered, its body still
    to come), its body with a whole call behind it, then in one write forty refused calls
    and a GET: each answered once, in order. aiohttp's parser (3.14.5) counts a request in
    flight from its body's end to its start, and the first, started before its body came,
    stays counted: the parser pauses a call short of the queue's bound at which the
    connection stops reading, the handler drains the queue and waits for bytes the client
    never sends, and the calls held behind the pause went unanswered until the connection
    was closed as idle at idle_timeout (the unread pipelining test's IncompleteReadError
    at load). Fails without HttpConnection parsing what it holds when its queue runs dry."""
    async with in_process(tmp_path, fleet(upstream.url)) as d:
        body = json.dumps(chat("late")).encode()
        head = raw(f"POST {CHAT} HTTP/1.1", "Host: corral", "Content-Type: application/json",
                   f"Content-Length: {len(body)}", body=b"")
        wire = await aiohttps(d)
        wire.writer.write(head)
        assert (await wire.answer())[0] == 401
        wire.writer.write(body + head + body)  # (its body read: the next is answered)
        assert (await wire.answer())[0] == 401
        wire.writer.write((head + body) * 40 + GET)
        assert [(await wire.answer())[0] for _ in range(41)] == [401] * 40 + [200]
        wire.writer.close()


async def test_a_call_sent_a_byte_a_write_is_answered_whole(
        tmp_path: Path, upstream: StandIn) -> None:  # noqa: F811
    """A call of the common shape and one pipelined behind it, each byte a write of its
    own (what lean.py holds in place, parsing the head again only once its body may have
    come): both answered, in order, as one write of each is. Fails with a byte lost,
    doubled or the head parsed from a body's bytes."""
    async with in_process(tmp_path, fleet(upstream.url)) as d:
        token = await token_of(d)
        calls = b"".join(raw(f"POST {CHAT} HTTP/1.1", "Host: corral",
                             f"Authorization: Bearer {token}",
                             f"Content-Length: {len(json.dumps(chat(text)))}",
                             body=json.dumps(chat(text)).encode()) for text in ("a" * 300, "b"))
        wire = await connected(d)
        for i in range(len(calls)):
            wire.writer.write(calls[i:i + 1])
            await wire.writer.drain()
            await asyncio.sleep(0)  # (the daemon's loop is this one: it reads each byte)
        for text in ("a" * 300, "b"):
            answer = (await wire.answer())[2]
            assert json.loads(answer)["choices"][0]["message"]["content"] == "echo: " + text
        wire.writer.close()
