"""Hostile HTTP clients against a real daemon process (DESIGN sections 9 and 12): a flood
of requests, 1000 SSE streams that never read, slow-loris clients, oversized headers.
Throughout, the daemon answers its control socket, its loop does not stall more than
100 ms (a probe process calls `daemon.info` every 5 ms, as the benches' probe does), its
memory grows within a stated budget, and every client is answered or closed. Loopback
only; every attack is bounded in count and time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from .daemon_harness import PY, Daemon, free_port, hello, running_daemon
from .test_daemon_cli import tmp, wait_until

__all__ = ["tmp"]

MiB = 1024 * 1024
STALL = 0.100  # the loop's budget (DESIGN section 9)
IDLE = 2.0  # [http] idle_timeout here

PROBE = r"""
import glob, json, os, socket, sys, time
path, stop, pid = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_UNIX); s.connect(path); f = s.makefile("rb")

def waited():
    # nanoseconds spent runnable but off a core (/proc/PID/schedstat's second field): by
    # this probe, and by each of the daemon's threads (one holding the GIL delays the loop)
    total = 0
    for stat in ["/proc/self/schedstat", *glob.glob(f"/proc/{pid}/task/*/schedstat")]:
        try:
            with open(stat) as st:
                total += int(st.read().split()[1])
        except (FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
            pass
    return total / 1e9

worst, stall, n, rid = 0.0, 0.0, 0, 0
# at least 11 round trips whatever the attack's length: a quick attack still has
# its stall measured around it; "up" once the first has come back (the attack waits)
while n < 11 or not os.path.exists(stop):
    rid += 1
    w0, t0 = waited(), time.perf_counter()
    s.sendall(json.dumps({"jsonrpc": "2.0", "id": rid, "method": "daemon.info",
                          "params": {}}).encode() + b"\n")
    line = f.readline()
    assert b'"result"' in line, line
    dt = time.perf_counter() - t0
    # the round trip less the time the host kept the daemon or this probe off a core
    # while runnable: what is left is the daemon holding the answer back, running other
    # work or blocked (a write to a client that never reads), not the machine's load
    own = max(0.0, dt - (waited() - w0))
    worst, stall, n = max(worst, dt), max(stall, own), n + 1
    if n == 1:
        print("up", flush=True)
    time.sleep(max(0.0, 0.005 - dt))
print(json.dumps({"worst": worst, "stall": stall, "calls": n}))
"""


class Probe:
    """The control socket's round trip every 5 ms, in a process of its own (the test's
    clients do not delay it): `worst`, the longest; `stall`, the longest less the time the
    host kept the daemon's threads or the probe waiting for a core: the loop's longest
    stall of its own making (working or blocked), whatever else the host runs."""

    def __init__(self, d: Daemon) -> None:
        self.stop = d.dir / "probe.stop"
        self.stop.unlink(missing_ok=True)
        assert d.proc is not None
        self.proc = subprocess.Popen([PY, "-c", PROBE, str(d.sock), str(self.stop),
                                      str(d.proc.pid)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        # measuring before the attack begins (a probe still starting measures nothing)
        assert self.proc.stdout.readline() == "up\n"

    def result(self) -> dict[str, Any]:
        self.stop.touch()
        out, _ = self.proc.communicate(timeout=30)  # (its "up" line was read)
        assert self.proc.returncode == 0, out
        result: dict[str, Any] = json.loads(out)
        return result


class Http:
    def __init__(self, d: Daemon, port: int) -> None:
        self.d = d
        self.port = port
        assert d.proc is not None
        self.ps = psutil.Process(d.proc.pid)

    def token(self, name: str) -> str:
        r = self.d.cli("token", "create", name, "--scope", "admin", "--json")
        assert r.returncode == 0, r.stderr
        return str(json.loads(r.stdout)["token"])

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def connections(self) -> int:
        """The daemon's TCP connections on its HTTP port."""
        return sum(1 for c in self.ps.net_connections(kind="tcp")
                   if c.laddr and c.laddr.port == self.port and c.raddr)


@pytest.fixture
def http(tmp: Path) -> Iterator[Http]:
    port = free_port()
    agents = hello("hello") + f"""
[http]
listen = "127.0.0.1:{port}"
rate_per_minute = 0
idle_timeout = {IDLE}
"""
    with running_daemon(tmp, agents) as d:
        yield Http(d, port)


def request(token: str, path: str = "/api/v1/agents", extra: str = "") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"{extra}\r\n").encode()


def answer_of(s: socket.socket, timeout: float = 10.0, out: bytes = b"") -> bytes:
    """What the server sends (after `out`, read of it already) until its answer is whole
    (its head and the body its Content-Length says), it closes, or `timeout`: an answer
    the server keeps the connection open after (a refused stream's 503, an answered
    request) was read until the timeout, every such read a wait of its whole bound."""
    s.settimeout(timeout)
    try:
        while not whole(out) and (chunk := s.recv(65536)):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def whole(answer: bytes) -> bool:
    """Whether `answer` holds a head and all of the body its Content-Length says (an
    answer without one ends where the server closes)."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:] if sep else []:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def settled(h: Http, rss0: int, budget: int, probe: Probe, *, known_stall: str = "",
            known_growth: str = "") -> dict[str, Any]:
    """After an attack: no connection left, memory within budget, the loop never
    stalled; the control socket still answers. A known, not yet fixed, breach of the
    stall or the memory bound (`known_*`: why) is reported as an expected failure, and
    only after every other check here has held."""
    wait_until(lambda: h.connections() == 0, timeout=IDLE + 10)
    grown = h.rss() - rss0
    seen = probe.result()
    assert seen["calls"] > 10
    assert h.d.status()["hello#0"]["state"] == "ready"
    over = []
    # the daemon's own part of the longest round trip: a loaded host's scheduling delays
    # the probe and the daemon alike, and is no stall of the daemon's making
    if seen["stall"] >= STALL:
        if not known_stall:
            raise AssertionError(seen)
        over.append(f"{known_stall} (worst {seen['stall'] * 1000:.0f} ms of the daemon's "
                    f"own)")
    if grown >= budget:
        if not known_growth:
            raise AssertionError(f"RSS grew {grown / MiB:.1f} MiB")
        over.append(f"{known_growth} (RSS grew {grown / MiB:.1f} MiB)")
    if over:
        pytest.xfail("; ".join(over))
    return seen


# -- a flood ------------------------------------------------------------------------------
@pytest.mark.deadline(120)
def test_a_flood_of_requests_is_answered_and_the_loop_keeps_turning(http: Http) -> None:
    token = http.token("flood")
    rss0 = http.rss()
    probe = Probe(http.d)

    async def flood() -> list[int]:
        statuses: list[int] = []
        headers = {"Authorization": f"Bearer {token}"}
        base = f"http://127.0.0.1:{http.port}"
        # 32 keep-alive connections and 32 that open a connection per request
        async with aiohttp.ClientSession() as keep, aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True)) as fresh:
            deadline = time.monotonic() + 8.0

            async def worker(s: aiohttp.ClientSession, k: int) -> None:
                for i in range(60):
                    if time.monotonic() > deadline:
                        return
                    path = ("/api/v1/agents", "/api/v1/nothing", "/healthz",
                            "/api/v1/tasks?limit=5")[(k + i) % 4]
                    async with s.get(base + path, headers=headers) as r:
                        await r.read()
                        statuses.append(r.status)

            await asyncio.gather(*(worker(keep, k) for k in range(32)),
                                 *(worker(fresh, k) for k in range(32)))
        return statuses

    statuses = asyncio.run(flood())
    assert len(statuses) > 500
    assert set(statuses) <= {200, 404}, set(statuses)
    settled(http, rss0, 64 * MiB, probe)


# -- digits int() refuses -------------------------------------------------------------------
@pytest.mark.deadline(60)
def test_other_digits_where_a_number_goes_are_no_number_not_an_error(http: Http) -> None:
    """'²' is a digit to str.isdigit() and not to int(): in a stream's Last-Event-ID it is
    no id (the stream starts at the newest), in a replica's label a clear refusal. Fails
    with a 500 (int() raising past the check)."""
    token = http.token("digits")

    def head(path: str, extra: str = "") -> bytes:
        with socket.create_connection(("127.0.0.1", http.port), timeout=10) as s:
            s.sendall(request(token, path, extra))
            got = b""
            while b"\r\n\r\n" not in got and (chunk := s.recv(4096)):
                got += chunk
            return got + (s.recv(4096) if b"200" not in got.split(b"\r\n")[0] else b"")

    for path in ("/api/v1/events/stream", "/api/v1/replicas/stream"):
        for last in ("\u00b2", "1-\u00b2"):
            got = head(path, f"Last-Event-ID: {last}\r\n")
            assert got.startswith(b"HTTP/1.1 200"), (path, last, got)
    got = head("/api/v1/agents?names=hello%23%C2%B2")
    assert got.startswith(b"HTTP/1.1 400"), got
    assert "hello#\u00b2: the replica after '#' must be a number" in got.decode(), got
    r = http.d.cli("status", "hello#\u00b2")
    assert r.returncode != 0 and "hello#\u00b2: the replica after '#' must be a number" in \
        r.stderr, r.stderr
    assert http.d.status()["hello#0"]["state"] == "ready"


# -- streams that never read ----------------------------------------------------------------
@pytest.mark.deadline(180)
def test_a_thousand_streams_that_never_read_are_bounded_and_capped(http: Http) -> None:
    tokens = [http.token(f"s{i}") for i in range(11)]
    rss0 = http.rss()
    probe = Probe(http.d)
    socks: list[socket.socket] = []

    def open_stream(token: str) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", http.port))
        s.sendall(request(token, "/api/v1/events/stream?pattern=*"))
        return s

    try:
        for i in range(1000):
            socks.append(open_stream(tokens[i // 100]))
        # each has its head (read it now, then never again): the streams are open
        for s in socks:
            s.settimeout(10)
            assert s.recv(1024).startswith(b"HTTP/1.1 200"), "a stream was not opened"
        # a token past its 100 streams, and anyone past the server's 1000: 503
        for token in (tokens[0], tokens[10]):
            s = open_stream(token)
            got = answer_of(s, 5)
            s.close()
            head = got.split(b"\r\n\r\n")[0].lower()
            assert got.startswith(b"HTTP/1.1 503"), got[:200]
            assert b"retry-after: 5" in head
        # events the streams do not read: 300 of 2 KiB, pipelined on the control socket
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(http.d.sock))
            f = c.makefile("rb")
            data = "x" * 2048
            c.sendall(b"".join(json.dumps({
                "jsonrpc": "2.0", "id": i, "method": "events.publish",
                "params": {"topic": "flood", "data": data}}).encode() + b"\n"
                for i in range(300)))
            for _ in range(300):
                assert b'"result"' in f.readline()
        # none of them was closed for not reading: each is within its write timeout
        assert http.connections() == 1000
    finally:
        for s in socks:
            s.close()
    # gone clients end their streams: the server's slots are free again
    wait_until(lambda: http.connections() == 0, timeout=IDLE + 10)
    s = open_stream(tokens[0])
    s.settimeout(10)
    assert s.recv(1024).startswith(b"HTTP/1.1 200")
    s.close()
    settled(http, rss0, 160 * MiB, probe)


def test_the_stream_caps_are_the_configs(tmp: Path) -> None:
    """[http] max_streams 3 and max_streams_per_token 2: a token's third stream is refused
    naming its limit, and anyone's past the server's three naming the server's; a stream
    closed frees its slot."""
    port = free_port()
    with running_daemon(tmp, hello("hello") + f"""
[http]
listen = "127.0.0.1:{port}"
max_streams = 3
max_streams_per_token = 2
""") as d:
        h = Http(d, port)
        a, b = h.token("a"), h.token("b")

        def opened(token: str) -> tuple[socket.socket, bytes]:
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(request(token, "/api/v1/events/stream?pattern=*"))
            s.settimeout(10)
            return s, s.recv(4096)

        def refused(token: str) -> bytes:
            s, got = opened(token)
            got = answer_of(s, 5, got)
            s.close()
            assert got.startswith(b"HTTP/1.1 503"), got
            return got

        socks: list[socket.socket] = []
        try:
            for token in (a, a, b):
                s, head = opened(token)
                socks.append(s)
                assert head.startswith(b"HTTP/1.1 200"), head
                if len(socks) == 2:
                    assert b"holds 2 streams, its limit (max_streams_per_token)" in refused(a)
            assert b"3 streams are open, the server's limit (max_streams)" in refused(b)
            socks.pop(0).close()
            wait_until(lambda: h.connections() == 2, what="a's first stream closed")
            s, head = opened(a)
            socks.append(s)
            assert head.startswith(b"HTTP/1.1 200"), head
        finally:
            for s in socks:
                s.close()


# -- a stream's flow control, in this process (the fan-out's state is visible) ---------------
class RawStream:
    """`/events/stream` on a socket with a small receive buffer, read only when asked:
    the chunked body decoded by hand, the events parsed (comments skipped)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str, token: str, path: str, last_id: str | None = None
                   ) -> RawStream:
        host, port = url.removeprefix("http://").split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        # the client's own buffer is small too: what it does not read stays in the daemon
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        extra = f"Last-Event-ID: {last_id}\r\n" if last_id is not None else ""
        writer.write(request(token, path, extra))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in \
            head.lower(), head
        return cls(reader, writer)

    async def events(self, count: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        text = b""
        while len(out) < count:
            size = int((await self.reader.readline()).strip(), 16)
            text += (await self.reader.readexactly(size + 2))[:-2]
            *whole, text = text.split(b"\n\n")
            for block in whole:
                event = dict(line.decode().split(": ", 1) for line in block.split(b"\n")
                             if not line.startswith(b":"))
                if event:
                    out.append(event)
        return out

    def close(self) -> None:
        self.writer.close()


@pytest.mark.deadline(60)
async def test_a_stream_whose_client_stops_reading_is_held_then_resumed_in_order(
        tmp_path: Path) -> None:
    """The fan-out passes by a client that has not taken what it was sent (its reader is
    held, its connection buffers a bounded amount); once it reads again it gets every
    event, in order, from its cursor; events that were never in the ring are told as
    missed, in their place."""
    from corral.daemon.caller import Caller
    from corral.daemon.http import sse
    from corral.daemon.http.rest import API_KEY

    from .daemon_harness import in_process
    from .test_gateway_stdio import wait_until_async

    own = Caller(via="socket")
    async with in_process(tmp_path, hello("hello"),
                          '\n[http]\nlisten = "127.0.0.1:0"\nrate_per_minute = 0\n') as d:
        token = (await d.dispatcher.call(own, "tokens.create", {
            "name": "ev", "scopes": ["events"]})).token
        ring = d.http_server.app[API_KEY].ring
        stream = await RawStream.open(d.http_server.url, token,
                                      "/api/v1/events/stream?pattern=flood.*")
        await wait_until_async(lambda: len(ring.readers) == 1 and ring.task is not None
                               and d.sup.events.followers)
        reader = next(iter(ring.readers))

        async def publish(n: int, start: int) -> None:
            for i in range(start, start + n):
                await d.dispatcher.call(own, "events.publish", {
                    "topic": "flood.x" if i % 2 else "flood.y", "data": f"{i:05d}" * 400})
                await d.dispatcher.call(own, "events.publish", {"topic": "other",
                                                                 "data": i})

        # 400 KiB the client does not read: held, with at most a batch past its bound
        await publish(200, 0)
        await wait_until_async(lambda: reader.held)
        transport = reader.request.transport
        assert transport is not None
        assert transport.get_write_buffer_size() <= sse.STREAM_BUFFER + sse.BATCH_BYTES
        behind = ring.last + 1 - reader.cursor
        assert behind > 100  # what is still only in the ring
        # numbers the bus dropped before the ring saw them, then more
        ring.notify("events.missed", {"count": 3})
        await publish(10, 200)

        got = await asyncio.wait_for(stream.events(211), 20)
        stream.close()
        missed = [e for e in got if e["event"] == "missed"]
        assert [json.loads(e["data"]) for e in missed] == [{"count": 3}]
        published = [e for e in got if e["event"] == "events.event"]
        data = [json.loads(e["data"])["data"] for e in published]
        assert data == [f"{i:05d}" * 400 for i in range(210)]
        ids = [int(e["id"]) for e in published]
        assert ids == sorted(ids) and len(set(ids)) == 210
        # the gap is where it was: between the 200th event and the 201st
        where = got.index(missed[0])
        assert got[where - 1]["id"] == published[199]["id"]
        assert int(published[200]["id"]) > int(published[199]["id"]) + 3
        await wait_until_async(lambda: not ring.readers)


@pytest.mark.deadline(60)
async def test_a_held_stream_that_never_drains_is_aborted_at_its_write_deadline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.daemon.caller import Caller
    from corral.daemon.http import sse
    from corral.daemon.http.rest import API_KEY

    from .daemon_harness import in_process
    from .test_gateway_stdio import wait_until_async

    # a client that never reads takes not even the cut's last words (CUT_GRACE)
    monkeypatch.setattr(sse, "CUT_GRACE", 1.0)
    own = Caller(via="socket")
    async with in_process(tmp_path, hello("hello"),
                          '\n[http]\nlisten = "127.0.0.1:0"\nrate_per_minute = 0\n'
                          'stream_write_timeout = 1.0\n') as d:
        token = (await d.dispatcher.call(own, "tokens.create", {
            "name": "ev", "scopes": ["events"]})).token
        api = d.http_server.app[API_KEY]
        stream = await RawStream.open(d.http_server.url, token, "/api/v1/events/stream")
        await wait_until_async(lambda: len(api.ring.readers) == 1 and api.ring.task
                               is not None and d.sup.events.followers)
        reader = next(iter(api.ring.readers))
        loop = asyncio.get_running_loop()
        # the last look that saw the reader not held: it was held after (the first look
        # that sees it held may come late, on a loaded host after its deadline had passed)
        free_at = loop.time()
        for _ in range(200):
            await d.dispatcher.call(own, "events.publish", {"topic": "t", "data": "x" * 2048})
            if not reader.held:
                free_at = loop.time()
        bound = loop.time() + 30
        while not reader.held:
            free_at = loop.time()
            assert free_at < bound, "the reader was never held"
            await asyncio.sleep(0.05)
        # its deadline passes: the connection is aborted, its slot and cursor are free
        await wait_until_async(lambda: not api.ring.readers and not api.streams.open,
                               timeout=10)
        assert loop.time() - free_at >= 0.9
        # and the connection, its cut's last words never taken, aborted after CUT_GRACE
        await wait_until_async(lambda: reader.request.transport is None
                               or reader.request.transport.is_closing(), timeout=10)
        got = b""
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(stream.reader.read(65536), 10):
                got += chunk
        stream.close()
        # what was sent before the abort, never a clean end of the chunked body
        assert not got.endswith(b"0\r\n\r\n")


# -- slow-loris ------------------------------------------------------------------------------
def dripped(socks: list[socket.socket], piece: Callable[[int, int], bytes]
            ) -> dict[int, float]:
    """Each of `socks` (non-blocking) sent `piece(k, i)` at its `i`th turn, a turn every
    20 ms (the attack's pace; b"": nothing), until the server has closed each or IDLE +
    10 s have passed: when each was closed, from the first turn. Each is closed after."""
    closed_at: dict[int, float] = {}
    t0, i = time.monotonic(), 0
    while len(closed_at) < len(socks) and time.monotonic() - t0 < IDLE + 10:
        for k, s in enumerate(socks):
            if k in closed_at:
                continue
            try:
                if data := piece(k, i):
                    s.send(data)
                if s.recv(4096) == b"":
                    closed_at[k] = time.monotonic() - t0
            except BlockingIOError:
                pass
            except OSError:
                closed_at[k] = time.monotonic() - t0
        i += 1
        time.sleep(0.02)
    for s in socks:
        s.close()
    return closed_at


@pytest.mark.deadline(120)
def test_slow_loris_clients_are_closed_and_a_slow_whole_request_is_answered(
        http: Http) -> None:
    token = http.token("slow")
    rss0 = http.rss()
    probe = Probe(http.d)
    head = request(token, extra="X-Pad: " + "a" * 4000 + "\r\n")
    loris = []
    for _ in range(200):
        s = socket.socket()
        s.connect(("127.0.0.1", http.port))
        s.setblocking(False)
        loris.append(s)
    # a byte every 20 ms each: the head is never whole within idle_timeout
    closed_at = dripped(loris, lambda k, i: head[i:i + 1])
    assert len(closed_at) == len(loris), f"{len(loris) - len(closed_at)} still open"
    assert max(closed_at.values()) < IDLE + 5
    # the same in pieces of a few bytes, but whole well within idle_timeout: answered (a
    # byte at a time, each after a short sleep, took longer than idle_timeout at a loaded
    # host's pace of wake-ups)
    whole = request(token, "/healthz")
    with socket.create_connection(("127.0.0.1", http.port)) as s:
        for i in range(0, len(whole), 8):
            s.send(whole[i:i + 8])
            time.sleep(0.02)
        assert answer_of(s, 5).startswith(b"HTTP/1.1 200")
    settled(http, rss0, 32 * MiB, probe)


# -- oversized headers -----------------------------------------------------------------------
@pytest.mark.deadline(120)
def test_oversized_headers_are_refused_and_bounded(http: Http) -> None:
    token = http.token("big")
    rss0 = http.rss()
    probe = Probe(http.d)
    attacks = {
        "a long line": request(token, extra="X-Big: " + "a" * 100_000 + "\r\n"),
        "many headers": request(token, extra="".join(f"X-H{i}: v\r\n" for i in range(500))),
        "a long path": f"GET /{'a' * 100_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        # no end of line at all: 8 MiB of one header that never ends
        "an endless header": request(token)[:-2] + b"X-Endless: " + b"b" * (8 * MiB),
    }
    for name, data in attacks.items():
        socks = []
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", http.port))
            socks.append(s)
        for s in socks:
            with contextlib.suppress(OSError):  # refused and closed before all was sent
                s.sendall(data)
        for s in socks:
            got = answer_of(s, 10)
            s.close()
            assert got.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")) or got == b"", \
                (name, got[:200])
            assert got.split(b" ")[1:2] in ([b"400"], [b"431"], [b"414"], []), name
    # an ordinary request still goes through
    with socket.create_connection(("127.0.0.1", http.port)) as s:
        s.sendall(request(token, extra="Connection: close\r\n"))
        assert answer_of(s).startswith(b"HTTP/1.1 200")
    # what follows a refused head is not read (server._Connection): 8 MiB of one header
    # on each of 20 connections once pinned about that much per connection
    settled(http, rss0, 48 * MiB, probe)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
