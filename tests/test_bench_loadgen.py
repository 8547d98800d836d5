"""bench/gateways' C load generator (loadgen.c, through run.py's `load`): every call
answered and timed against the bench's mock provider, whole and streamed; and against a
server of this test that answers one call in ten wrongly, each wrong answer counted by
its kind and the first quoted, its `Connection: close` answers met with a new connection,
its SSE and chunked answers read as its JSON ones."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bench.gateways import run
from bench.gateways.targets import ENV, HERE, PY, free_port

N = 100  # calls a run against the test's server: one in ten answered wrongly


@pytest.fixture
def mock() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([PY, str(HERE / "mock_provider.py"), str(port)], env=ENV,
                            stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().decode().strip()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _model(url: str, stream: bool, n: int, warmup: int) -> dict[str, Any]:
    return {"kind": "model", "url": f"{url}/v1/chat/completions", "model": "bench",
            "headers": {"Authorization": "Bearer sk-bench"}, "stream": stream, "n": n,
            "c": 10, "warmup": warmup, "seconds": 30.0}


@pytest.mark.parametrize("stream", [False, True])
def test_every_call_answered_and_timed_against_the_mock(mock: str, stream: bool) -> None:
    out = run.load(_model(mock, stream, 300, 30), "c")
    assert (out["errors"], out["first_error"]) == (0, None)
    assert len(out["latencies"]) == 300
    assert len(out["first_chunks"]) == (300 if stream else 0)
    assert all(0 < f <= t for f, t in zip(out["first_chunks"], out["latencies"],
                                          strict=False))
    assert 0 < sum(out["latencies"]) / 10 <= out["wall_s"]


@pytest.mark.parametrize("stream", [False, True])
def test_the_floor_proxy_passes_every_call_to_the_floor_mock(stream: bool) -> None:
    """proxy_floor.py (cpu.sh's `--work proxy`): its figure is of calls answered right."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        url = ""
        for script, *upstream in (("mock_floor.py",), ("proxy_floor.py", "")):
            args = [PY, str(HERE / script), str(free_port()), *([url] if upstream else [])]
            procs.append(subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE,
                                          start_new_session=True))
            assert procs[-1].stdout is not None
            url = procs[-1].stdout.readline().decode().strip()
            assert url.startswith("http://127.0.0.1:"), (script, url)
        out = run.load(_model(url, stream, 300, 30), "c")
        assert (out["errors"], out["first_error"]) == (0, None)
        assert len(out["latencies"]) == 300
        assert len(out["first_chunks"]) == (300 if stream else 0)
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


class OneInTen(BaseHTTPRequestHandler):
    """Chat: every tenth call a 500. MCP: the session's three messages, then tools/call
    answered with the next call's text when its number ends in 3, as SSE (chunked) when
    odd and as JSON when even; each seventh closes its connection."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are written apart
    chats = 0
    closes = 0
    lock = threading.Lock()

    def log_message(self, *args: Any) -> None:
        pass

    def answer(self, status: int, body: bytes, kind: str = "application/json",
               chunked: bool = False, close: bool = False, session: str = "") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        if session:
            self.send_header("Mcp-Session-Id", session)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (body[:7], body[7:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/chat/completions":
            with self.lock:
                OneInTen.chats += 1
                wrong = OneInTen.chats % 10 == 0
            self.answer(500, b"no echo here") if wrong else self.answer(200, b'{"echo": 1}')
            return
        msg = json.loads(raw)
        if "id" not in msg:
            self.answer(202, b"")
            return
        if msg["method"] == "initialize":
            result: dict[str, Any] = {"protocolVersion": "2025-06-18"}
            self.answer(200, json.dumps({"jsonrpc": "2.0", "id": msg["id"],
                                         "result": result}).encode(), session="s1")
            return
        if msg["method"] == "tools/list":
            tools = [{"name": "other"}, {"name": "min_echo"}]
            self.answer(200, json.dumps({"jsonrpc": "2.0", "id": msg["id"],
                                         "result": {"tools": tools}}).encode())
            return
        assert self.headers["Mcp-Session-Id"] == "s1"
        assert msg["params"]["name"] == "min_echo"
        i = int(msg["params"]["arguments"]["text"].removeprefix("hi "))
        assert msg["id"] == i + 2
        said = f"hi {i + 1}" if i % 10 == 3 else f"hi {i}"
        body = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {
            "content": [{"type": "text", "text": said}], "isError": False}}).encode()
        close = i % 7 == 6
        if close:
            with self.lock:
                OneInTen.closes += 1
        if i % 2:
            self.answer(200, b"event: message\ndata: " + body + b"\n\n", "text/event-stream",
                        chunked=True, close=close)
        else:
            self.answer(200, body.replace(b'":"', b'": "'), close=close)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # (5: a sixth connect at once waits out a lost SYN, 1 s)


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """`handler` served on a free port, its URL; the server shut and its thread joined."""
    server = Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def one_in_ten() -> Iterator[str]:
    OneInTen.chats = OneInTen.closes = 0
    with serving(OneInTen) as url:
        yield url


def test_a_wrong_chat_answer_is_counted_by_its_kind(one_in_ten: str) -> None:
    out = run.load(_model(one_in_ten, False, N, 0), "c")
    assert (out["errors"], len(out["latencies"])) == (N // 10, N - N // 10)
    assert out["first_error"] == f"{N // 10}x status 500: b'no echo here'"


def test_another_calls_tool_result_is_counted_as_such(one_in_ten: str) -> None:
    out = run.load({"kind": "mcp", "url": f"{one_in_ten}/mcp", "headers": {}, "n": N,
                    "c": 10, "warmup": 0, "seconds": 30.0}, "c")
    assert (out["errors"], len(out["latencies"])) == (N // 10, N - N // 10)
    said = re.fullmatch(rf"{N // 10}x tools/call answered with another call's result: "
                        r"asked 'hi (\d+)', answered 'hi (\d+)'", out["first_error"])
    assert said, out["first_error"]
    asked, answered = int(said[1]), int(said[2])
    assert (asked % 10, answered) == (3, asked + 1)
    assert out["reconnects"] == OneInTen.closes == len(range(6, N, 7))


class CutsTheSecond(BaseHTTPRequestHandler):
    """Each connection's second answer cut after its head and ten bytes of its body."""

    protocol_version = "HTTP/1.1"
    cuts = 0

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.served = getattr(self, "served", 0) + 1  # (one handler a connection)
        body = b'{"echo": 1, "pad": "' + b"x" * 64 + b'"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.served == 2:
            CutsTheSecond.cuts += 1
            self.wfile.write(body[:10])
            self.close_connection = True
            return
        self.wfile.write(body)


def test_an_answer_cut_mid_body_is_an_error_not_a_call_sent_again() -> None:
    # (sent again, it was answered on a new connection: the cut counted nowhere)
    CutsTheSecond.cuts = 0
    with serving(CutsTheSecond) as url:
        out = run.load({**_model(url, False, 10, 0), "c": 1}, "c")
    assert CutsTheSecond.cuts == 5  # calls 1, 3, 5, 7, 9 (each even one a connection's first)
    assert (out["errors"], len(out["latencies"])) == (5, 5)
    assert out["first_error"] == "5x the server closed the connection mid-answer"


class EndsEachAnswer(BaseHTTPRequestHandler):
    """HTTP/1.0: no Content-Length, each answer's body ended by closing its connection."""

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"echo": 1}')


def test_an_answer_ended_by_its_connection_is_read_whole_and_counted_once() -> None:
    with serving(EndsEachAnswer) as url:
        out = run.load({**_model(url, False, 20, 0), "c": 2}, "c")
    assert (out["errors"], len(out["latencies"]), out["reconnects"]) == (0, 20, 20)
