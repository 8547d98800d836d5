"""`corral mcp serve` across a real `corral upgrade`'s exec: a tool call the host sends
while no image reads (the old one gone to its exec, the new one's boot held on a FIFO
the test writes) is made once, by the next image, and the bridge serves on: the handed-over
socket holds its connection in its backlog, and the next image's 404 for the session it
never had has the host's initialize sent again, then the call (decision 1580)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT
from .daemon_harness import PY, Daemon, shared_tmpdir
from .test_daemon_cli import wait_until
from .test_upgrade import worker
from .test_upgrade_goaway import drained, gated, upgrade_to

pytestmark = pytest.mark.long
HERE = Path(__file__).parent


def counting(tmp: Path) -> str:
    return f"""
[mcp_servers.counting]
command = ["{PY}", "{HERE}/servers/counting_mcp.py", "{tmp}/count"]
start = "eager"
start_timeout = 30.0
"""


class Host:
    """`corral mcp serve` as an MCP host runs it: JSON-RPC lines on its stdin, its
    answers read from its stdout by a thread (a test waits on them with a bound)."""

    def __init__(self, d: Daemon, *args: str) -> None:
        self.proc = subprocess.Popen(
            [PY, "-m", "corral", "--socket", str(d.sock), "mcp", "serve", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def say(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"jsonrpc": "2.0", **msg}) + "\n")
        self.proc.stdin.flush()

    def answer(self, rid: int, timeout: float = 60) -> dict[str, Any]:
        while True:
            line = self.lines.get(timeout=timeout)
            assert line, f"corral mcp serve closed its stdout (exit {self.proc.poll()})"
            got: dict[str, Any] = json.loads(line)
            if got.get("id") == rid:
                return got

    def initialized(self) -> None:
        self.say({"id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "host", "version": "1"}}})
        assert "result" in self.answer(1)
        self.say({"method": "notifications/initialized"})
        tools = self.answer_to(2, "tools/list", {})
        assert "counting__bump" in {t["name"] for t in tools["result"]["tools"]}

    def answer_to(self, rid: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.say({"id": rid, "method": method, "params": params})
        return self.answer(rid)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def bump(i: int) -> dict[str, Any]:
    return {"name": "counting__bump", "arguments": {"i": i}}


def test_a_tool_call_sent_while_no_image_reads_is_made_once_by_the_next() -> None:
    tmp = shared_tmpdir()
    d = Daemon(tmp, worker("w"), extra=counting(tmp))
    new, gate = gated(tmp)
    host: Host | None = None
    try:
        d.start()
        host = Host(d, "--reconnect", "30")
        host.initialized()
        assert host.answer_to(3, "tools/call", bump(1))["result"]["content"][0]["text"] \
            == "bumped 1"
        upgrade_to(d, new)
        drained(d)  # the old image is gone to its exec; the new one waits on the gate
        host.say({"id": 4, "method": "tools/call", "params": bump(2)})
        os.write(gate, b"x")
        got = host.answer(4)
        assert got.get("result", {}).get("content") == [
            {"type": "text", "text": "bumped 2"}], got
        wait_until(lambda: d.ask("daemon.upgrade", {"report": True})["state"] == "done",
                   what="the upgrade's end")
        assert (tmp / "count").read_text() == "1\n2\n"  # each made once
        assert host.proc.stdin is not None
        host.proc.stdin.close()
        assert host.proc.wait(30) == 0
    finally:
        if host is not None:
            host.kill()
        os.close(gate)
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)
