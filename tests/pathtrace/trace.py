"""The test's side of the per-path module counts (issue 86): a traced daemon's
environment, its control socket, and the count of a path.

A path's modules are the `corral.*` modules whose functions ran in the daemon (and in a
traced CLI the path started) between the path's marks, less those the daemon ran while
idle in the windows before and after it (tests/pathtrace/hook.py records them)."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
# an idle window's span at least (the daemon's heartbeats come every 0.2 s in the tests'
# config, its sweeps at most a second apart), and what it waits to see at least once: the
# metrics history's sample, its write and the WAL's checkpoint after it (every `[http]
# history_interval`), whose turn comes late on a busy machine
IDLE = 1.5
IDLE_WORK = ("corral.daemon.history", "corral.daemon.storewriter", "corral.daemon.storeschema",
             "corral.daemon.checkpointer")


class Tracer:
    """A directory whose sitecustomize installs the hook in a process given env()."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "pathtrace"
        site = self.dir / "site"
        site.mkdir(parents=True)
        (site / "sitecustomize.py").write_text(
            "from tests.pathtrace.hook import install\n\ninstall()\n")
        self.site = site

    def env(self) -> dict[str, str]:
        return {"CORRAL_PATHTRACE": str(self.dir), "PYTHONPATH": f"{self.site}:{ROOT}"}

    def wrapper(self) -> list[str]:
        """What execs the daemon (tests/daemon_harness.Daemon's wrapper): env(), set."""
        return ["env", *(f"{k}={v}" for k, v in self.env().items())]

    def control(self, pid: int) -> Control:
        return Control(self.dir / f"{pid}.sock")

    def exited(self, pid: int) -> dict[str, list[str]]:
        """The windows a traced process wrote at its exit."""
        loaded: dict[str, list[str]] = json.loads((self.dir / f"{pid}.json").read_text())
        return loaded


class Control:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rw")

    def say(self, line: str) -> str:
        self.file.write(line + "\n")
        self.file.flush()
        return self.file.readline()

    def mark(self, name: str) -> None:
        assert self.say(f"mark {name}") == "ok\n"

    def settle(self) -> None:
        assert self.say("settle") == "ok\n"

    def idle(self) -> None:
        assert self.say(f"idle {IDLE} {' '.join(IDLE_WORK)}") == "ok\n"

    def windows(self) -> dict[str, list[str]]:
        dumped: dict[str, list[str]] = json.loads(self.say("dump"))
        return dumped

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def path_modules(control: Control, path: Callable[[], set[str]]) -> list[str]:
    """The daemon's modules of path() (which returns those that traced processes of its
    own ran), less its idle windows' before and after; the path's window is closed once
    it has settled (its trailing work, an audit row's write, done)."""
    control.mark("before")
    control.settle()  # what came before (a connection's close) is not idle work
    control.mark("idle-before")
    control.idle()
    control.mark("path")
    others = path()
    control.settle()
    control.mark("idle-after")
    control.idle()
    w = control.windows()
    return sorted((set(w["path"]) | others) - set(w["idle-before"]) - set(w["idle-after"]))


class McpSession:
    """An MCP client of the daemon's HTTP gateway, as raw as a test can make it (its
    own work is no daemon's): initialize, then tools/call."""

    def __init__(self, url: str, token: str) -> None:
        self.url = urllib.parse.urlsplit(url)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                        "Accept": "application/json, text/event-stream"}
        self.conn = http.client.HTTPConnection(self.url.netloc, timeout=30)
        self.ids = 0

    def __enter__(self) -> McpSession:
        self.post("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                 "clientInfo": {"name": "pathtrace", "version": "1"}})
        self.post("notifications/initialized", None)
        return self

    def __exit__(self, *_: object) -> None:
        self.conn.close()

    def post(self, method: str, params: dict[str, Any] | None) -> Any:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            self.ids += 1
            msg["id"] = self.ids
            msg["params"] = params
        self.conn.request("POST", self.url.path, json.dumps(msg), self.headers)
        r = self.conn.getresponse()
        body = r.read().decode()
        if sid := r.getheader("Mcp-Session-Id"):
            self.headers["Mcp-Session-Id"] = sid
        assert r.status in (200, 202), (r.status, body)
        if "id" not in msg:
            return None
        if r.getheader("Content-Type", "").startswith("text/event-stream"):
            body = next(line[5:] for line in body.splitlines() if line.startswith("data:"))
        answer = json.loads(body)
        assert "result" in answer, answer
        return answer["result"]

    def call_tool(self, name: str, arguments: dict[str, Any]) -> str:
        result = self.post("tools/call", {"name": name, "arguments": arguments})
        text: str = result["content"][0]["text"]
        return text
