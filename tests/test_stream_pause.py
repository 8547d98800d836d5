"""A follower of a task's stream that stops reading for a while within the documented
bound (docs/http.md: `[http] stream_write_timeout`, 60 s) and then reads on gets every
chunk, once, in order, then `result`, and the body ends as a whole one does; one the
daemon must end (the bound passed) is told so by a last event, `cut`, naming the id to
resume from, the body then ends as a whole one does, and a follow resumed from that id
gets the rest and `result`.

The followers are raw sockets (http.client reads a chunked body of 4,000 events at a
fraction of the daemon's pace), and their pause is what the tests are about: it is
longer than the kernel's and the daemon's buffers take to fill (a 15 MiB stream)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import pytest

from .daemon_harness import Daemon, free_port
from .test_task_streams import streamer

pytestmark = pytest.mark.long

CHUNKS = 4000
SIZE = 3900  # 4,000 chunks of it: a 15 MiB stream
END = b"0\r\n\r\n"  # a chunked body's last chunk


def unchunked(raw: bytes) -> tuple[bytes, bool]:
    """An HTTP/1.1 response's chunked body, and whether it ended with its last chunk
    (a connection cut mid-body: False)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), head
    body = bytearray()
    view = memoryview(rest)
    at = 0
    while True:
        eol = rest.find(b"\r\n", at)
        if eol < 0:
            return bytes(body), False
        size = int(rest[at:eol], 16)
        if size == 0:
            return bytes(body), True
        if eol + 2 + size + 2 > len(rest):
            return bytes(body), False
        body += view[eol + 2:eol + 2 + size]
        at = eol + 2 + size + 2


def events(body: bytes) -> list[dict[str, Any]]:
    """The SSE events of a body (comments skipped)."""
    out: list[dict[str, Any]] = []
    for block in body.decode().split("\n\n"):
        event: dict[str, Any] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            event[key] = msgspec.json.decode(value) if key == "data" else value
        if event:
            out.append(event)
    return out


class Follower(threading.Thread):
    """A client of /tasks/ID/stream that reads the response's first bytes, takes
    nothing more for `pause` seconds (once `begun` lets the followers go together),
    then reads to the end of the body or of the connection."""

    def __init__(self, port: int, token: str, task_id: str, pause: float,
                 begun: threading.Barrier | None = None, last_id: str | None = None
                 ) -> None:
        super().__init__(daemon=True)
        self.port, self.token, self.task_id, self.pause = port, token, task_id, pause
        self.begun = begun
        self.last_id = last_id
        self.raw = bytearray()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=120) as s:
                resume = f"Last-Event-ID: {self.last_id}\r\n" if self.last_id else ""
                s.sendall(f"GET /api/v1/tasks/{self.task_id}/stream HTTP/1.1\r\n"
                          f"Host: 127.0.0.1\r\nAuthorization: Bearer {self.token}\r\n"
                          f"{resume}\r\n".encode())
                self.raw += s.recv(1024)
                if self.begun is not None:
                    self.begun.wait(60)
                time.sleep(self.pause)  # the reader's pause: what the test is about
                while not self.raw.endswith(END):
                    got = s.recv(1 << 20)
                    if not got:
                        break
                    self.raw += got
        except BaseException as exc:  # told to the test
            self.error = exc

    def result(self) -> tuple[list[dict[str, Any]], bool]:
        """Its events, and whether the body ended whole."""
        assert self.error is None, repr(self.error)
        body, whole = unchunked(bytes(self.raw))
        return events(body), whole


def outputs(seen: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in seen if e["event"] == "tasks.output"]


def daemon(tmp_path: Path, port: int, http: str = "") -> Daemon:
    return Daemon(tmp_path, streamer(tmp_path, extra="max_stream_bytes = 0"),
                  extra=f'\n[http]\nlisten = "127.0.0.1:{port}"\n{http}\n')


def start_flood(d: Daemon) -> tuple[str, str]:
    """A reader's token, and a task that sends CHUNKS chunks of SIZE bytes."""
    token = d.json("token", "create", "reader", "--scope", "tasks:read")["token"]
    task_id = d.cli("submit", "streamer", "--input",
                    f'{{"size": {SIZE}, "count": {CHUNKS}}}').stdout.strip()
    return token, task_id


@pytest.mark.timeout(240)
def test_three_followers_that_pause_8_s_each_get_every_chunk_then_the_result(
        tmp_path: Path) -> None:
    """Each pause is well within the bound (20 s here: the default's 60 s is a minute a
    run) and longer than the buffers on the way take to fill (a follower cut after 1 s of
    its 3 s pause, below, found them full)."""
    port = free_port()
    d = daemon(tmp_path, port, "stream_write_timeout = 20.0")
    try:
        d.start()
        token, task_id = start_flood(d)
        begun = threading.Barrier(3)
        followers = [Follower(port, token, task_id, 8.0, begun) for _ in range(3)]
        for f in followers:
            f.start()
        for f in followers:
            f.join(180)
            assert not f.is_alive()
        for f in followers:
            seen, whole = f.result()
            assert whole, seen[-1]
            assert seen[0]["event"] == "tasks.task"
            assert outputs(seen) == [f"1-{n}" for n in range(1, CHUNKS + 1)]
            assert all(len(e["data"]["data"]) == SIZE for e in seen
                       if e["event"] == "tasks.output")
            assert [e["event"] for e in seen[-1:]] == ["result"]
            assert seen[-1]["data"]["status"] == "succeeded"
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.timeout(180)
def test_a_follower_past_the_bound_is_cut_with_the_id_to_resume_from(
        tmp_path: Path) -> None:
    """A follower that takes nothing for longer than `stream_write_timeout` (1 s here)
    is cut: what was written before the cut reaches it in order, then `cut` naming the
    bound and the last id written, then the body's end; resumed from that id, it gets
    every chunk after it and `result`."""
    port = free_port()
    d = daemon(tmp_path, port, "stream_write_timeout = 1.0")
    try:
        d.start()
        token, task_id = start_flood(d)
        first = Follower(port, token, task_id, 3.0)
        first.start()
        first.join(120)
        seen, whole = first.result()
        assert whole, seen[-1]
        kept = outputs(seen)
        assert kept == [f"1-{n}" for n in range(1, len(kept) + 1)]
        assert 0 < len(kept) < CHUNKS
        assert seen[-1] == {"event": "cut", "data": {
            "reason": "the client took nothing for 1 s", "last_event_id": kept[-1]}}
        assert [e["event"] for e in seen].count("result") == 0

        rest = Follower(port, token, task_id, 0.0, last_id=kept[-1])
        rest.start()
        rest.join(120)
        seen, whole = rest.result()
        assert whole
        assert outputs(seen) == [f"1-{n}" for n in range(len(kept) + 1, CHUNKS + 1)]
        assert seen[-1]["event"] == "result"
        assert seen[-1]["data"]["status"] == "succeeded"
        assert d.stop() == 0
    finally:
        d.close()


def publish(port: int, token: str, topic: str, data: Any) -> int:
    """The event published, and the count of the daemon's followers it reached."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/events", method="POST",
        data=msgspec.json.encode({"topic": topic, "data": data}),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200
        return int(msgspec.json.decode(answer.read())["delivered"])


def follow_events(port: int, token: str, pattern: str, last_id: str | None = None,
                  rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf is not None:  # (before the connection: the window it starts with)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    resume = f"Last-Event-ID: {last_id}\r\n" if last_id else ""
    s.sendall(f"GET /api/v1/events/stream?pattern={pattern} HTTP/1.1\r\nHost: x\r\n"
              f"Authorization: Bearer {token}\r\n{resume}\r\n".encode())
    return s


def read_until(s: socket.socket, raw: bytearray, done: bytes) -> None:
    while done not in raw and not raw.endswith(END):
        got = s.recv(1 << 20)
        if not got:
            return
        raw += got


@pytest.mark.timeout(120)
def test_an_event_stream_past_the_bound_is_cut_with_the_id_to_resume_from(
        tmp_path: Path) -> None:
    """/events/stream: a client that takes nothing past the bound (1 s here) gets what
    was written, then `cut` naming the id to resume from, then the body's end; resumed
    from that id it gets every event after, none twice."""
    port = free_port()
    d = daemon(tmp_path, port, "stream_write_timeout = 1.0")
    try:
        d.start()
        token = d.json("token", "create", "ev", "--scope", "events")["token"]
        # the daemon follows the bus for its streams from the first one on: told by a
        # warm-up event reaching a first stream
        with follow_events(port, token, "warm") as warm:
            seen = bytearray()
            while b'"topic":"warm"' not in seen:
                publish(port, token, "warm", 0)
                warm.settimeout(0.2)
                with contextlib.suppress(TimeoutError):
                    seen += warm.recv(1 << 16)
        pad = "x" * (64 << 10)
        with follow_events(port, token, "big.*", rcvbuf=16 << 10) as slow:
            raw = bytearray(slow.recv(1024))
            for i in range(100):  # 6.4 MiB: more than every buffer on the way holds
                publish(port, token, f"big.{i}", {"i": i, "pad": pad})
            # the client's pause: past the bound, until the daemon has cut its stream (an
            # event then reaches no follower). Not a fixed pause after the publishes: the
            # cut's grace runs from the bound's end, soon after the stream stalls at its
            # first events, and at load the publishes after the stall outlasted the pause's
            # margin, so the client read past the grace (the body cut short, CI suite1 and
            # run1; publishes slowed to a load's pace did it at every try)
            published = 100
            pause = time.monotonic() + 60
            while publish(port, token, f"big.{published}", {"i": published}):
                published += 1
                assert time.monotonic() < pause, "the stream was not cut within 60 s"
                time.sleep(0.05)
            published += 1
            # then read as a client that reads does: what was written before the cut is
            # taken within the daemon's grace (through a small window, on a loaded host
            # it was not: the body cut short, CI suite1)
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            read_until(slow, raw, END)
        first, whole = unchunked(bytes(raw))
        assert whole
        *got, cut = events(first)
        assert cut["event"] == "cut", cut
        assert cut["data"]["reason"] == "the client took nothing for 1 s"
        topics = [e["data"]["topic"] for e in got]
        assert 0 < len(topics) < 100
        assert topics == [f"big.{i}" for i in range(len(topics))]
        assert int(cut["data"]["last_event_id"]) >= int(got[-1]["id"])

        last = f'"topic":"big.{published - 1}"'.encode()
        with follow_events(port, token, "big.*", cut["data"]["last_event_id"]) as again:
            raw = bytearray()
            read_until(again, raw, last)
            while not raw.endswith(b"\n\n\r\n"):  # the rest of that event's chunk
                raw += again.recv(1 << 20)
        rest = events(unchunked(bytes(raw) + END)[0])
        assert [e["data"]["topic"] for e in rest] == [
            f"big.{i}" for i in range(len(topics), published)]
        assert d.stop() == 0
    finally:
        d.close()
