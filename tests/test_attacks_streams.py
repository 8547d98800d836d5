"""An attacker's pass over a task's live output (docs/streams.md) from a tenant's caller
holding `tasks:read` and an agent whose chunks it controls.

- readers that never read (a token may hold `max_streams_per_token` streams of one task)
  each hold a page of the task's output, at most BATCH_BYTES past its first chunk, never
  the whole of a 256-chunk batch;
- a chunk past MAX_CHUNK_BYTES is not kept, the stream saying so by the bound's name, so
  that a page holds one."""

from __future__ import annotations

import http.client
import io
import json
import socket
from pathlib import Path

import pytest

from corral.mcp import sse
from corral.supervisor.tasks.output import MAX_CHUNK_BYTES
from corral.taskoptions import TaskOptions

from .daemon_harness import Daemon, free_port, in_process, running_daemon, shared_tmpdir, sleeper
from .test_daemon_cli import wait_until
from .test_task_streams import rss, streamer

READERS = 30


def progress_ids(got: bytes) -> list[int]:
    """The event ids of an SSE answer's progress notifications, in the order sent (the
    answer read whole off its socket: its chunked body undone by http.client, its
    events by corral's SSE parser)."""
    answer = http.client.HTTPResponse(_Received(got))  # type: ignore[arg-type]
    answer.begin()
    events = sse.Parser(len(got)).feed(answer.read())
    return [int(e.id) for e in events
            if e.id is not None and b'"method":"notifications/progress"' in e.data]


class _Received:
    """Bytes already read off a socket, as http.client reads a socket."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def first_output_event(sock: socket.socket) -> None:
    """Read the stream until its first chunk's event has come (its page is read then)."""
    seen = b""
    sock.settimeout(30)
    while b"event: tasks.output" not in seen:
        got = sock.recv(4096)
        assert got, seen[-300:]
        seen += got


@pytest.mark.deadline(180)
def test_readers_that_never_read_hold_a_page_each_not_the_tasks_output(
        tmp_path: Path) -> None:
    """A task's 16 MiB of output in 64 KiB chunks and 30 streams of it whose client stops
    reading at the first chunk: the daemon grows by a few MiB a reader (its page, the SSE
    stream's own bound), not by the 16 MiB each held when a reader's batch was 256 chunks
    whatever their size (30 such readers grew it by some 430 MB; 60 by 850 MB)."""
    port = free_port()
    d = Daemon(tmp_path, streamer(tmp_path),
               extra=f'\n[http]\nlisten = "127.0.0.1:{port}"\n')
    socks: list[socket.socket] = []
    try:
        d.start()
        assert d.proc is not None
        token = d.json("token", "create", "reader", "--scope", "tasks:read")["token"]
        task_id = d.cli("submit", "streamer", "--input",
                        '{"size": 65536, "count": 250}').stdout.strip()
        r = d.cli("task", task_id, "--stream")  # waits for its end; read once whole
        assert r.returncode == 0 and len(r.stdout) >= 250 * 65536, r.stderr
        before = rss(d.proc.pid)
        for _ in range(READERS):
            sock = socket.create_connection(("127.0.0.1", port))
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(f"GET /api/v1/tasks/{task_id}/stream HTTP/1.1\r\nHost: 127.0.0.1"
                         f"\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
            first_output_event(sock)
        grown = rss(d.proc.pid) - before
        assert grown < READERS * (4 << 20), f"the daemon grew by {grown} bytes"
        assert d.stop() == 0
    finally:
        for sock in socks:
            sock.close()
        d.close()


async def test_a_chunk_past_max_chunk_bytes_is_not_kept_and_the_stream_says_so(
        tmp_path: Path) -> None:
    async with in_process(tmp_path, streamer(tmp_path)) as d:
        res = await d.sup.tasks.run("streamer", {"size": MAX_CHUNK_BYTES + 1, "count": 2},
                                    TaskOptions(timeout=60))
        assert res.status == "succeeded", res
        chunks = [c async for c in d.sup.tasks.output(res.task_id)]
        assert [(c.id, c.data, c.truncated) for c in chunks] == [
            ("1-1", f"output truncated: a chunk of task {res.task_id} of "
                    f"{MAX_CHUNK_BYTES + 1} bytes is over MAX_CHUNK_BYTES ({MAX_CHUNK_BYTES}); "
                    "the rest of attempt 1's output is not kept", True)]


def test_a_gateway_client_that_does_not_read_its_calls_progress_is_sent_a_bounded_part(
        ) -> None:
    """A tenant's MCP client calls its own agent at /mcp/corral with a progressToken (its
    live output comes as progress) and reads nothing until the task has ended: the
    gateway keeps at most MAX_PENDING_BYTES of the stream's progress for it (and
    REPLAY_BYTES for a resumption), not the task's 15 MiB of output in 30 chunks, which
    a bound of MAX_PENDING events let through whole; the answer still comes."""
    port = free_port()
    agents = sleeper("chat") + 'tenant = "acme"\n'
    with running_daemon(shared_tmpdir(), agents, extra=f"""
[tenants.acme]
[gateway]
listen = "127.0.0.1:{port}"
""") as d:
        token = d.json("token", "create", "mcp-acme", "--scope", "mcp:call", "--tenant",
                       "acme")["token"]
        chunk = "x" * (512 << 10)
        body = json.dumps({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
            "name": "chat", "arguments": {"do": "emit", "chunks": [chunk] * 30},
            "_meta": {"progressToken": "p1",
                      "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}}}}).encode()
        sock = socket.socket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(f"POST /mcp/corral HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                         f"Authorization: Bearer {token}\r\nConnection: close\r\n"
                         "Content-Type: application/json\r\n"
                         "Accept: application/json, text/event-stream\r\n"
                         "MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\n"
                         f"Mcp-Name: chat\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                         + body)
            wait_until(lambda: d.ask("tasks.list", {"agent": "chat", "status": "succeeded"})[
                "tasks"], 60, "the task's end")
            sock.settimeout(60)
            got = b""
            while data := sock.recv(1 << 20):
                got += data
        finally:
            sock.close()
        assert b'"id":9' in got and b'"structuredContent":{"emitted":30}' in got, got[-500:]
        # each of the session's events is numbered as it comes, sent or not: the numbers
        # of the progress sent before the first one missing are what the stream held for a
        # reader that did not read (what the kernel's buffers took, then
        # MAX_PENDING_BYTES); the gateway follows the task's output behind its end, so
        # what came after the reader began to read may come whole
        sent = progress_ids(got)
        held = next((i for i, n in enumerate(sent) if n != sent[0] + i), len(sent))
        assert 0 < held < 20, sent
