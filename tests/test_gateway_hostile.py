"""Hostile HTTP clients against the gateway's own site (`[gateway] listen`), as
tests/test_http_hostile.py's against the [http] site: oversized and malformed heads, a
body refused and never finished. The site with the model gateway (its model calls of the
common shape served lean: corral/daemon/models/lean.py) and without one (aiohttp's
connections alone); both are the hardened connections of corral/daemon/http/server.py.
A real daemon process; loopback only; every attack bounded in count and time."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .daemon_harness import free_port, hello, running_daemon
from .test_daemon_cli import tmp
from .test_http_adversary import HEADS, stderr_until
from .test_http_hostile import Http, MiB, Probe, request, settled
from .test_model_usage import CHAT

__all__ = ["tmp"]


@pytest.fixture(params=["lean", "plain"])
def gateway(request: pytest.FixtureRequest, tmp: Path) -> Iterator[Http]:
    """A daemon whose gateway has a site of its own: with a model gateway ("lean"; its
    provider never called, nothing listens there) or without one ("plain")."""
    port = free_port()
    fleet = hello("hello") + f'\n[gateway]\nlisten = "127.0.0.1:{port}"\n'
    if request.param == "lean":
        (tmp / "provider.key").write_text("sk-provider-never-sent\n")
        fleet += (f'\n[models.m]\nurl = "http://127.0.0.1:{free_port()}/v1"\n'
                  f'format = "openai"\nkey_file = "{tmp}/provider.key"\n')
    with running_daemon(tmp, fleet) as d:
        yield Http(d, port)


def answer_then_closed(s: socket.socket) -> bytes:
    """What the server sends until it closes the connection, which it must within 10 s."""
    s.settimeout(10)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:  # closed with the attack's bytes still unread: a reset
        pass
    return out


def post_head(extra: str = "") -> bytes:
    """A model call's head as lean.py takes it, up to `extra` (its last header's line)."""
    return (f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer not-a-token\r\n"
            f"Content-Type: application/json\r\n{extra}").encode()


@pytest.mark.deadline(180)
def test_oversized_heads_on_the_gateways_site_are_refused_closed_and_bounded(
        gateway: Http) -> None:
    """Each head is refused (400, 414 or 431) and its connection closed; 8 MiB of one
    header line on each of 20 connections, in a GET or in a model call (lean.py's shape
    until the line is too long, then aiohttp's), does not grow the daemon's RSS by 48 MiB
    (the [http] site's bound): what follows a refused head is not read. Fails with the
    gateway's connections feeding it to aiohttp's failed parser (about 8 MiB pinned each)."""
    rss0 = gateway.rss()
    probe = Probe(gateway.d)
    attacks = {
        "a long line": request("t", "/mcp", "X-Big: " + "a" * 100_000 + "\r\n"),
        "many headers": request("t", "/mcp", "".join(f"X-H{i}: v\r\n" for i in range(500))),
        "a long path": f"GET /{'a' * 100_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        "an endless header": request("t", "/mcp")[:-2] + b"X-Endless: " + b"b" * (8 * MiB),
        "an endless header in a model call": post_head("Content-Length: 2\r\n")
        + b"X-Endless: " + b"b" * (8 * MiB),
    }
    for name, data in attacks.items():
        socks = [socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(20)]
        for s in socks:
            with contextlib.suppress(OSError):  # refused and closed before all was sent
                s.sendall(data)
        for s in socks:
            got = answer_then_closed(s)
            s.close()
            assert re.match(rb"HTTP/1\.[01] (400|414|431) ", got) or got == b"", \
                (name, got[:200])
    # an ordinary request still goes through
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.sendall(b"GET /.well-known/oauth-protected-resource HTTP/1.1\r\nHost: x\r\n"
                  b"Connection: close\r\n\r\n")
        assert answer_then_closed(s).startswith(b"HTTP/1.1 200")
    settled(gateway, rss0, 48 * MiB, probe)


def closed_at(s: socket.socket) -> float:
    """When the server closed `s` (within 20 s)."""
    s.settimeout(20)
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic()


@pytest.mark.deadline(120)
def test_a_refused_body_on_the_gateways_site_does_not_hold_its_stop(gateway: Http) -> None:
    """A model call (a wrong token; on the site without a model gateway, no such path)
    with 16 MiB announced and 1 MiB sent is answered 4xx at once, and aiohttp reads what
    comes after it for up to 10 s (its lingering read). At the stop that connection is
    closed with an idle one, not the gateway's shutdown_timeout (2 s) later. Fails with
    the gateway's connections waiting out their lingering read at the stop."""
    d = gateway.d
    assert d.proc is not None
    idle = socket.create_connection(("127.0.0.1", gateway.port))
    body = socket.create_connection(("127.0.0.1", gateway.port))
    try:
        body.sendall(post_head(f"Content-Length: {16 * MiB}\r\n\r\n") + b"{" * MiB)
        body.settimeout(10)
        head = body.recv(4096)
        assert head.startswith((b"HTTP/1.1 401", b"HTTP/1.1 404")), head
        body.setblocking(False)
        with pytest.raises(BlockingIOError):  # still open: aiohttp reads on
            body.recv(1)
        d.proc.send_signal(signal.SIGTERM)
        idle_closed = closed_at(idle)
        gap = closed_at(body) - idle_closed
        assert gap < 1.0, f"the refused body's connection was closed {gap:.1f} s after " \
                          "the idle one"
        # waited for, not stopped again: a second SIGTERM that comes once the daemon has
        # let its signals go, at the end of its teardown, ends it by the signal (CI z1)
        assert d.proc.wait(20) == 0
    finally:
        idle.close()
        body.close()


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "plain"])
@pytest.mark.deadline(120)
def test_slow_and_silent_clients_of_the_gateways_site_are_closed_at_its_idle_timeout(
        tmp: Path, lean: bool) -> None:
    """`[gateway] idle_timeout`: 40 connections, half silent, half sending a model call's
    head a byte every 50 ms (never whole), are each closed within it; a call sent whole,
    slowly but within it, is answered. Fails with aiohttp's keep-alive default (an hour)
    holding every one open."""
    port = free_port()
    fleet = hello("hello") + f'\n[gateway]\nlisten = "127.0.0.1:{port}"\nidle_timeout = 2\n'
    if lean:
        (tmp / "provider.key").write_text("sk-provider-never-sent\n")
        fleet += (f'\n[models.m]\nurl = "http://127.0.0.1:{free_port()}/v1"\n'
                  f'format = "openai"\nkey_file = "{tmp}/provider.key"\n')
    head = post_head("X-Pad: " + "a" * 4000 + "\r\n")
    with running_daemon(tmp, fleet):
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        for s in clients:
            s.setblocking(False)
        open_ = set(range(len(clients)))
        t0 = time.monotonic()
        i = 0
        try:
            while open_ and time.monotonic() - t0 < 2 + 10:
                for k in list(open_):
                    try:
                        if k % 2:
                            clients[k].send(head[i:i + 1])
                        if clients[k].recv(4096) == b"":
                            open_.discard(k)
                    except BlockingIOError:
                        pass
                    except OSError:
                        open_.discard(k)
                i += 1
                time.sleep(0.05)
            assert not open_, f"{len(open_)} of {len(clients)} still open after " \
                              f"{time.monotonic() - t0:.1f} s"
        finally:
            for s in clients:
                s.close()
        with socket.create_connection(("127.0.0.1", port)) as s:
            # in pieces a few sends apart, whole well within it: a byte a send, each
            # 2 ms apart, took past the 2 s on a loaded host (a sleep's wake-up is late)
            whole = post_head("Content-Length: 2\r\n\r\n{}")
            for at in range(0, len(whole), 16):
                s.send(whole[at:at + 16])
                time.sleep(0.05)
            s.settimeout(10)
            assert s.recv(4096).startswith((b"HTTP/1.1 401", b"HTTP/1.1 404"))


LEAN_HEADS = [
    # a repeated Content-Length (a smuggling attempt): handed over by lean.py, refused
    post_head("Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}"),
    # past lean.py's bound on a head with no end yet: handed over, a line too long
    post_head("X-Big: " + "a" * 20_000 + "\r\n\r\n"),
]


@pytest.mark.deadline(120)
def test_refused_heads_on_the_gateways_site_are_one_counted_log_line(gateway: Http) -> None:
    """50 heads aiohttp refuses (test_http_adversary's, and two that pass through lean.py
    first) are told in one or two lines of the daemon's log at most (one every 10 s),
    never a traceback, and each is counted in `gateway.status`'s `http.refused`."""
    assert gateway.d.proc is not None and gateway.d.proc.stderr is not None
    fd = gateway.d.proc.stderr.fileno()
    gateway.token("before")  # (its audit line is the start marker)
    stderr_until(fd, '"name":"before"')
    heads = HEADS + LEAN_HEADS
    for i in range(50):
        head = heads[i % len(heads)]
        with socket.create_connection(("127.0.0.1", gateway.port)) as s:
            s.sendall(head)
            s.settimeout(10)
            assert s.recv(4096).startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), head[:40]
    gateway.token("after")
    lines = stderr_until(fd, '"name":"after"')[:-1]
    told = [ln for ln in lines if "refused a request" in ln]
    assert 1 <= len(told) <= 2, lines
    assert re.fullmatch(r"corral: WARNING corral\.http: refused a request from 127\.0\.0\.1: "
                        r"4\d\d, .+", told[0]), told[0]
    assert all(ln.startswith("corral: ") for ln in lines), lines
    refused = gateway.d.ask("gateway.status")["http"]["refused"]
    assert sum(refused.values()) == 50, refused


def test_a_heads_bytes_that_are_no_utf8_are_refused_in_words_not_a_500(gateway: Http) -> None:
    """An Origin (judged before any token) and a session's MCP-Protocol-Version holding a
    byte that is no UTF-8 (aiohttp's to read, with surrogateescape: lean takes ASCII heads
    alone): 403 and 400, a JSON-RPC error showing the byte escaped. Failed with aiohttp's
    bare 500 and a traceback, anyone's to send: the error's text held a surrogate, which
    no JSON encoder takes."""
    token = gateway.token("hostile").encode()
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}'
    for extra, status, said in (
            (b"Origin: http://\xff.example\r\n", 403,
             "origin http://\\xff.example is not allowed"),
            (b"Authorization: Bearer %b\r\nMcp-Session-Id: s\r\nMCP-Protocol-Version: \xff\r\n"
             % token, 400, "unsupported MCP-Protocol-Version: \\xff")):
        with socket.create_connection(("127.0.0.1", gateway.port)) as s:
            s.sendall(b"POST /mcp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%b"
                      b"Accept: application/json, text/event-stream\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                      % (extra, len(body), body))
            head, _, rest = answer_then_closed(s).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d " % status), head
        assert json.loads(rest)["error"]["message"] == said
