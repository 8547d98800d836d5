"""`corral mcp serve`'s link to the daemon told `daemon.going_away {last_id}` (decision
940): a call the daemon did not read is sent again, once, on the next connection; one it
read is not; one the next image never comes for is not made, and the host is told.

The daemon here is a stand-in on a unix socket speaking the control protocol's lines, so
that the race (a request sent after the old image stopped reading, before its notice is
read) happens every time: it reads the call, then says it read only what came before.
A real daemon across a real `corral upgrade` is tests/test_upgrade_mcp_serve.py's."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from corral.methods import GOING_AWAY

from .conftest import ROOT
from .daemon_harness import PY

TOOL = {"name": "srv__echo", "description": "echo", "inputSchema": {"type": "object"}}


class StandIn:
    """The daemon's side of each control connection, in a thread: the watch answered by a
    `gateway.changed`, `gateway.list` by the one tool, and `gateway.call` as `going_away`
    says for that connection: None answers it; "unread" and "read" tell `going_away`
    with the id before the call's, or the call's own, as the last read, and hang up."""

    def __init__(self, path: Path, going_away: list[str | None]) -> None:
        self.path = path
        self.going_away = going_away
        self.calls: list[tuple[int, int]] = []  # (connection, request id) of gateway.call
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for n, plan in enumerate(self.going_away):
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed: no more connections
                return
            # (a host killed at the test's end resets its connection)
            with conn, conn.makefile("rwb") as f, contextlib.suppress(OSError):
                for raw in f:
                    msg = json.loads(raw)
                    rid, method = msg.get("id"), msg.get("method")
                    if method == "gateway.watch":
                        self._send(f, {"method": "gateway.changed",
                                       "params": {"kinds": [], "features": ["tools"]}})
                    elif method == "gateway.list":
                        self._send(f, {"id": rid, "result": {
                            "items": [TOOL], "features": ["tools"]}})
                    elif method == "gateway.call":
                        self.calls.append((n, rid))
                        if plan is None:
                            self._send(f, {"id": rid, "result": {"content": [
                                {"type": "text", "text": f"echoed on {n}"}]}})
                        else:
                            last = rid - 1 if plan == "unread" else rid
                            self._send(f, {"method": GOING_AWAY, "params": {
                                "last_id": last, "reason": "upgrading to corral 9"}})
                            break

    @staticmethod
    def _send(f: Any, msg: dict[str, Any]) -> None:
        f.write(json.dumps({"jsonrpc": "2.0", **msg}).encode() + b"\n")
        f.flush()

    def close(self) -> None:
        # (a close alone does not wake an accept under way in the thread; a shutdown does)
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(10)
        assert not self.thread.is_alive()


class Host:
    """`corral mcp serve` run as an MCP host runs it; its answers read by a thread."""

    def __init__(self, sock: Path, reconnect: float) -> None:
        self.proc = subprocess.Popen(
            [PY, "-m", "corral", "--socket", str(sock), "mcp", "serve", "--reconnect",
             f"{reconnect:g}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def ask(self, rid: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method,
                                          "params": params}) + "\n")
        self.proc.stdin.flush()
        while True:
            line = self.lines.get(timeout=60)
            assert line, f"corral mcp serve closed its stdout (exit {self.proc.poll()})"
            got: dict[str, Any] = json.loads(line)
            if got.get("id") == rid:
                return got

    def call(self, rid: int) -> dict[str, Any]:
        return self.ask(rid, "tools/call", {"name": "srv__echo", "arguments": {}})


@contextmanager
def linked(tmp_path: Path, going_away: list[str | None], reconnect: float = 30
           ) -> Iterator[tuple[StandIn, Host]]:
    stand_in = StandIn(tmp_path / "corral.sock", going_away)
    host = Host(stand_in.path, reconnect)
    try:
        got = host.ask(1, "initialize", {"protocolVersion": "2025-11-25",
                                         "capabilities": {},
                                         "clientInfo": {"name": "host", "version": "1"}})
        assert "result" in got, got
        yield stand_in, host
    finally:
        if host.proc.poll() is None:
            host.proc.kill()
        host.proc.wait(10)
        stand_in.close()


def test_a_call_the_daemon_did_not_read_is_sent_again_once_on_the_next_link(
        tmp_path: Path) -> None:
    # the first connection reads the call and says it read only the request before it
    with linked(tmp_path, ["unread", None]) as (stand_in, host):
        got = host.call(2)
        assert got.get("result") == {"content": [{"type": "text", "text": "echoed on 1"}]}, \
            got
        [(first, _), (second, _)] = stand_in.calls
        assert (first, second) == (0, 1)  # sent once on each, answered by the second


def test_a_call_the_daemon_read_is_not_sent_again(tmp_path: Path) -> None:
    # the notice names the call's own id: it was read, maybe made; the host is told
    with linked(tmp_path, ["read", None]) as (stand_in, host):
        got = host.call(2)
        assert got.get("error", {}).get("message") == (
            f"the corral daemon at {stand_in.path} went away"), got
        assert [c for c, _ in stand_in.calls] == [0]


def test_a_call_the_next_image_never_takes_is_not_made_and_the_host_is_told(
        tmp_path: Path) -> None:
    with linked(tmp_path, ["unread"], reconnect=1) as (stand_in, host):
        # no second connection is ever taken (the stand-in's backlog holds it): the
        # link gives up after its second, and so does the process
        assert host.proc.stdin is not None
        host.proc.stdin.write(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                                          "params": {"name": "srv__echo"}}) + "\n")
        host.proc.stdin.flush()
        assert host.proc.wait(30) == 1
        assert host.proc.stderr is not None
        assert host.proc.stderr.read() == (
            f"corral mcp serve: lost the corral daemon at {stand_in.path} and could not "
            "reconnect within 1 s\n")
        assert [c for c, _ in stand_in.calls] == [0]
