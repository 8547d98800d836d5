"""The attacker's pass over the A2A door's messages read lean on the [http] site
(corral/daemon/models/lean.py, a2a/routes.py's `lean`; decision 1820): one HTTP parser
beneath (httptools' llhttp, as aiohttp's) and the door's one handler, so what may differ is
what lean reads of a head and a path, and what its LeanRequest tells the handler. Heads and
paths are tried by the thousand against aiohttp's own parser and router; the inputs a caller
controls past them (an agent name's odd bytes, an escape or a dot segment, the
Authorization and Cookie headers, Content-Type, Host) against the daemon, on a lean
connection and an aiohttp one: answered alike, each on the path it belongs to."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiohttp._http_parser import HttpRequestParser
from aiohttp.http_parser import HttpRequestParserPy
from aiohttp.test_utils import make_mocked_request

from corral.daemon.a2a.routes import A2aRoutes
from corral.daemon.caller import Caller
from corral.daemon.models.lean import _head

from .a2a.harness import a2a_config, tck_agent
from .a2a.test_lean_messages import aiohttps, alike, lean_connections, open_wire, post, send
from .daemon_harness import free_port, in_process

OPERATOR = Caller(via="socket")
# what a head is made of: each a byte or word a smuggler reaches for
PIECES = ["\r\n", "\n", "\r", " ", "\t", "\x00", "\x0b", "\x7f", "\xe9", ":", ",", ";", '"',
          "0", "5", "-", "+", "chunked", "close", "keep-alive", "Content-Length",
          "Transfer-Encoding", "Host", "Connection", "HTTP/1.0", "%2e", "..", "?", "#", "@",
          "upgrade", "Expect", "100-continue", "\r\n ", "\r\n\t", "gzip"]
NAMES = ["Content-Length", "content-length", "Transfer-Encoding", "Host", "Connection",
         "Expect", "Content-Encoding", "Upgrade", "TE", "X-A"]
BASE = ["POST /a2a/tck HTTP/1.1", "Host: corral", "Content-Type: application/json",
        "Content-Length: 5"]


def mutated(rng: random.Random) -> bytes:
    """BASE with one to four edits: a piece put in a line, a header added, a byte taken
    out, a line given twice, a line's case changed."""
    lines = list(BASE)
    for _ in range(rng.randint(1, 4)):
        op, i = rng.random(), rng.randrange(len(lines))
        at = rng.randint(0, len(lines[i]))
        if op < 0.35:
            lines[i] = lines[i][:at] + rng.choice(PIECES) + lines[i][at:]
        elif op < 0.55:
            lines.insert(rng.randint(1, len(lines)), rng.choice(NAMES) + rng.choice(
                [": ", ":", " : ", ":\t"]) + rng.choice(PIECES) + rng.choice(["", "5", "0"]))
        elif op < 0.7:
            lines[i] = lines[i][:at] + lines[i][at + 1:]
        elif op < 0.8:
            lines.insert(rng.randint(1, len(lines)), lines[i])
        else:
            lines[i] = lines[i].upper() if rng.random() < 0.5 else lines[i].lower()
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_by(parser: type[Any], data: bytes) -> tuple[Any, ...]:
    """What an aiohttp parser reads of one request: its method, target, headers (lower
    names, each as often as given), whether it closes, is chunked, upgrades or is
    compressed; or its error."""
    loop = asyncio.new_event_loop()
    try:
        messages, _, _ = parser(mock.Mock(), loop, 2 ** 16, max_line_size=8190,
                                max_field_size=8190).feed_data(data)
    except Exception as exc:  # (aiohttp's refusal: the 400 lean would have had to give)
        return ("refused", type(exc).__name__)
    finally:
        loop.close()
    (m, _), = messages
    return (m.method, m.path, [(k.lower(), v) for k, v in m.headers.items()],
            m.should_close, m.chunked, m.upgrade, m.compression)


def test_every_head_lean_takes_aiohttps_parsers_read_alike() -> None:
    """6,000 heads, each BASE edited (seeded): every one lean reads (`_head`: its target,
    headers, body's length and closing) aiohttp's C parser and its Python one read the
    same, a plain POST whose body is that length; none they refuse or read as chunked,
    upgrading, compressed or otherwise. Fails with lean taking a head aiohttp would frame
    or refuse otherwise: a request smuggled between the two parsers of one connection."""
    rng, taken, refused = random.Random(1820), 0, 0
    for _ in range(6000):
        head = mutated(rng)
        if head.find(b"\r\n\r\n") != len(head) - 4:
            continue  # (lean reads to the first blank line: the rest is a body)
        got = _head(head)
        if got is None:
            refused += 1
            continue
        taken += 1
        _, url, headers, length, close = got
        for parser in (HttpRequestParser, HttpRequestParserPy):
            assert read_by(parser, head + b"x" * length) == (
                "POST", url, list(headers.items()), close, False, False, None), (parser, head)
            assert int(headers["content-length"]) == length
    assert taken > 500 and refused > 1500, (taken, refused)  # (both kinds tried)


@pytest.mark.timeout(120)
async def test_odd_paths_and_heads_of_a_message_are_answered_as_aiohttps(
        tmp_path: Path) -> None:
    """On the daemon's [http] site: 3,000 targets of /a2a/ made of the bytes lean's target
    takes (escapes and dots too): each one the door serves lean (`posts`) aiohttp's router
    routes to the door's handler with the same agent and rest. Then each input a caller
    controls, sent on a fresh connection (lean's) and on one aiohttp reads: an agent name
    with ; : ~ + ' @ or a dot, or another case (not found, alike, lean's); an escaped name
    or a dot segment (aiohttp's: its connection handed over); Authorization twice (aiohttp's:
    its first); a bearer scheme in lowercase, a token padded, another scheme, a Cookie with
    a forged session beside it (aiohttp's); Content-Type with a charset, in capitals, not
    JSON's; GetExtendedAgentCard under a Host of another name (the card's URL is the Host
    asked, alike). Fails with lean answering any of these otherwise than aiohttp, taking
    one it hands over, or handing over one it serves."""
    port = free_port()
    async with in_process(tmp_path, tck_agent() + tck_agent("private"),
                          a2a_config(port)) as d:
        router = d.http_server.app.router
        routes: A2aRoutes = d.http_server.posts.__self__  # type: ignore[attr-defined]
        rng = random.Random(90)
        taken = 0
        for _ in range(3000):
            path = "/a2a/" + "".join(rng.choice("!$&'()*+,-./:;=@_~%aAzZ09")
                                     for _ in range(rng.randint(1, 8)))
            if rng.random() < 0.3:
                path += "/message:send"
            if routes.posts(path) is None:
                continue
            taken += 1
            (m, _), = HttpRequestParser(mock.Mock(), asyncio.get_running_loop(), 2 ** 16
                                        ).feed_data(f"POST {path} HTTP/1.1\r\nHost: a\r\n"
                                                    "Content-Length: 0\r\n\r\n".encode())[0]
            resolved = await router.resolve(make_mocked_request("POST", "/").clone(
                rel_url=m.url))
            agent, _, rest = path[len("/a2a/"):].partition("/")
            assert resolved.handler == routes.serve and dict(resolved) == (
                {"agent": agent} | ({"rest": rest} if rest else {})), path
        assert taken > 1000, taken
        seer = await d.dispatcher.call(OPERATOR, "tokens.create", {
            "name": "seer", "scopes": ["tasks:run", "tasks:read"]})
        auth = f"Authorization: Bearer {seer.token}"
        card = json.dumps({"jsonrpc": "2.0", "id": 3, "method": "GetExtendedAgentCard",
                           "params": {}}).encode()
        cases: list[tuple[bytes, bool]] = [  # (the request, whether lean serves it)
            *((post(f"/a2a/{name}", send("odd")), True)
              for name in ("tck;x", "tck:x", "tck~", "t+ck", "tck'", "tck@x", "t.ck", "TCK")),
            (post("/a2a/t%63k", send("tck-complete-task-escaped")), False),
            (post("/a2a/x/../tck", send("tck-complete-task-dots")), False),
            (post("/a2a/private", send("twice"), auth, "Authorization: Bearer nothing"), False),
            (post("/a2a/private", send("twice"), "Authorization: Bearer nothing", auth), False),
            (post("/a2a/private", send("tck-complete-task-lower"),
                  f"Authorization: bearer {seer.token}"), True),
            (post("/a2a/private", send("tck-complete-task-padded"),
                  f"Authorization: Bearer   {seer.token}  "), True),
            (post("/a2a/private", send("basic"), "Authorization: Basic c2Vlcjp4"), True),
            (post("/a2a/private", send("cookie"), "Authorization: Session x",
                  "Cookie: corral_session=forged"), False),
            *((post("/a2a/tck", send("tck-complete-task-typed")).replace(
                b"application/json", kind), True)
              for kind in (b"application/json; charset=utf-8", b"APPLICATION/JSON",
                           b"application/a2a+json", b"application/jsonx")),
            (post("/a2a/private", card, auth).replace(b"Host: corral",
                                                      b"Host: evil.example:1"), True),
        ]
        for request, served in cases:
            lean, handed = await open_wire(port), await aiohttps(port)
            lean.writer.write(request)
            got = await lean.answer()
            assert sorted(lean_connections(d)) == sorted([False, served]), request
            handed.writer.write(request)
            assert alike(got) == alike(await handed.answer()), request
            for wire in (lean, handed):
                wire.writer.close()
            for _ in range(500):  # (closed: the next case's connections are its own)
                if not lean_connections(d):
                    break
                await asyncio.sleep(0.01)
        assert json.loads(got[2])["result"]["supportedInterfaces"][0]["url"].startswith(
            "http://evil.example:1/a2a/private"), got
