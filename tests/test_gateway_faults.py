"""Gateway faults: the daemon restarted under `corral mcp serve` and under HTTP sessions,
a server stopped by hand (list_changed), a client's limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .daemon_harness import PY, Daemon, corral_popen, hello, running_daemon, shared_tmpdir
from .test_gateway_stdio import SCRIPTED, gateway, listed, text, wait_until_async

mcp = pytest.importorskip("mcp")
import httpx2  # noqa: E402
from mcp import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    tmp = shared_tmpdir()
    with running_daemon(tmp, f"""
[mcp_servers.sc]
command = ["{PY}", "{SCRIPTED}", "v2025-11"]
start_timeout = 30.0

[gateway]
listen = "unix:{tmp}/mcp.sock"
anonymous_tools = ["*"]
max_concurrent = 2
max_sessions = 2
""") as d:
        yield d


async def test_mcp_serve_survives_a_daemon_restart(daemon: Daemon) -> None:
    """A call asked while no daemon listens waits for the next (its connection refused,
    nothing of it was sent: decision 1580), which has forgotten the session: it is begun
    again, the call made once, and the host told the lists changed."""
    seen: list[Any] = []
    async with gateway(daemon, seen=seen) as s:
        assert "sc__echo" in await listed(s, "sc__echo")
        await asyncio.to_thread(daemon.stop)
        # what was heard before (the lazy server's tools arriving) says nothing of the
        # reconnection: only a list_changed from now on does
        seen.clear()
        call = asyncio.ensure_future(s.call_tool("sc__echo", {"text": "back"}))
        await asyncio.to_thread(daemon.start)
        assert text(await call) == "back"
        await wait_until_async(lambda: any(
            getattr(m, "method", None) == "notifications/tools/list_changed" for m in seen),
            timeout=30)
        assert text(await s.call_tool("sc__echo", {"text": "again"})) == "again"


async def test_mcp_serve_meets_its_clients_limit_as_every_gateway_client(
        daemon: Daemon) -> None:
    """Through the bridge the operator is the gateway client `operator`, bounded as any:
    max_concurrent = 2, a third call in flight refused at once, in the gateway's words."""
    async with gateway(daemon) as s:
        await listed(s, "sc__slow")
        slow = [asyncio.ensure_future(s.call_tool("sc__slow", {"seconds": 30}))
                for _ in range(2)]
        await wait_until_async(lambda: daemon.ask("mcp.status")["gateway"]["clients"]
                               .get("operator", {}).get("in_flight") == 2)
        with pytest.raises(MCPError) as err:
            await s.call_tool("sc__echo", {"text": "third"})
        assert str(err.value) == ("gateway client operator has 2 calls in flight, its "
                                  "limit (max_concurrent)")
        for t in slow:
            t.cancel()
        await asyncio.gather(*slow, return_exceptions=True)


def test_mcp_serve_gives_up_with_a_clear_error(daemon: Daemon) -> None:
    import subprocess

    from .conftest import ROOT

    proc = corral_popen(
        ["--socket", str(daemon.sock), "mcp", "serve", "--reconnect",
         "0.5"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{'
                         b'"protocolVersion":"2025-11-25","capabilities":{},'
                         b'"clientInfo":{"name":"h","version":"1"}}}\n'
                         b'{"jsonrpc":"2.0","id":2,"method":"ping"}\n')
        proc.stdin.flush()
        # (the session's list_changed may come between the answers)
        assert b'"id":1,"result"' in next(ln for ln in iter(proc.stdout.readline, b"")
                                          if b'"id":' in ln)
        assert next(ln for ln in iter(proc.stdout.readline, b"") if b'"id":' in ln) == \
            b'{"id":2,"result":{},"jsonrpc":"2.0"}\n'
        daemon.stop()
        assert proc.wait(30) == 1
        assert proc.stderr is not None
        assert proc.stderr.read().decode() == (
            f"corral mcp serve: lost the corral daemon at {daemon.sock} and could not "
            "reconnect within 0.5 s\n")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        daemon.start()


def test_mcp_serve_exits_when_the_next_daemon_refuses_its_client(tmp_path: Path) -> None:
    """A daemon restarted without the agent `--agent` names will not begin the session
    again: the bridge says why on stderr and exits 1, rather than asking for ever."""
    import subprocess

    d = Daemon(tmp_path, hello("h"))
    proc = None
    try:
        d.start()
        proc = corral_popen(["--socket", str(d.sock), "mcp", "serve", "--agent", "h"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(INIT).encode() + b"\n")
        proc.stdin.flush()
        assert b'"id":1,"result"' in proc.stdout.readline()
        d.stop()
        d.config.write_text(d.config.read_text().replace("[agents.h]", "[agents.g]"))
        d.start()
        assert proc.wait(60) == 1
        assert proc.stderr is not None
        assert proc.stderr.read().decode() == (
            f"corral mcp serve: the corral daemon at {d.sock} did not begin the session "
            "again: no such agent: h (agents: g)\n")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        d.close()


def test_a_local_socket_that_cannot_be_bound_is_said_and_the_daemon_serves_on(
        tmp_path: Path) -> None:
    """Something in the local socket's place (a directory here) is no reason not to
    start: the daemon says why in its log and serves on; `corral mcp serve` cannot
    reach it (exit 3), the CLI can."""
    d = Daemon(tmp_path, hello("h"))
    (tmp_path / "corral.sock.mcp").mkdir()
    try:
        d.start()
        assert d.cli("status").returncode == 0
        r = d.cli("mcp", "serve", input="")
        assert r.returncode == 3 and r.stderr.startswith(
            f"corral mcp serve: cannot reach the corral daemon at {d.sock}: "), r.stderr
        log = (d.state / "logs" / "corral.log").read_text()
        assert f"the MCP gateway's local socket {d.sock}.mcp cannot be served (" in log
        assert "): corral mcp serve cannot reach this daemon" in log
    finally:
        d.close()


def test_mcp_serve_answers_a_line_over_its_limit_and_serves_on(daemon: Daemon) -> None:
    """A host's line past the line limit (16 MiB) is never buffered: it is answered as an
    invalid request (its id unread), and the next line is served."""
    import subprocess

    proc = corral_popen(["--socket", str(daemon.sock), "mcp", "serve"],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        big = (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"x":"'
               + b"x" * (16 << 20) + b'"}}')
        proc.stdin.write(big + b"\n")
        proc.stdin.write(b'{"jsonrpc":"2.0","id":2,"method":"server/discover","params":{'
                         b'"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
                         b'"io.modelcontextprotocol/clientCapabilities":{}}}}\n')
        proc.stdin.flush()
        assert proc.stdout.readline() == (
            b'{"id":null,"error":{"code":-32600,"message":"invalid request: a %d-byte '
            b'message is over the line limit"},"jsonrpc":"2.0"}\n' % len(big))
        assert b'"id":2,"result"' in proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait()


def http_client(d: Daemon) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=str(d.dir / "mcp.sock")),
                              timeout=httpx2.Timeout(30, read=60))


async def test_http_sessions_after_a_daemon_restart_get_404_and_initialize_again(
        daemon: Daemon) -> None:
    url = "http://localhost/mcp"
    async with http_client(daemon) as c, streamable_http_client(url, http_client=c) as (r, w), \
            ClientSession(r, w) as s:
        await s.initialize()
        assert "sc__echo" in await listed(s, "sc__echo")
        await asyncio.to_thread(daemon.stop)
        await asyncio.to_thread(daemon.start)
        with pytest.raises(MCPError) as err:
            await s.list_tools()
        assert "no such session" in str(err.value) or "404" in str(err.value), str(err.value)
    async with http_client(daemon) as c, streamable_http_client(url, http_client=c) as (r, w), \
            ClientSession(r, w) as s:
        await s.initialize()
        assert text(await s.call_tool("sc__echo", {"text": "again"})) == "again"


async def test_list_changed_when_a_server_is_stopped_and_limits_refuse(daemon: Daemon) -> None:
    seen: list[Any] = []
    async with gateway(daemon, seen=seen) as s:
        assert "sc__echo" in await listed(s, "sc__echo")
        r = await asyncio.to_thread(daemon.cli, "mcp", "stop", "sc")
        assert r.returncode == 0, r.stderr
        await wait_until_async(lambda: any(
            getattr(m, "method", None) == "notifications/tools/list_changed" for m in seen))
    # max_concurrent = 2: a third call in flight for one client is refused at once
    async with http_client(daemon) as c, \
            streamable_http_client("http://localhost/mcp", http_client=c) as (r, w), \
            ClientSession(r, w) as s:
        await s.initialize()
        await listed(s, "sc__slow")
        slow = [asyncio.ensure_future(s.call_tool("sc__slow", {"seconds": 30}))
                for _ in range(2)]
        await wait_until_async(lambda: daemon.ask("mcp.status")["gateway"]["clients"]
                               .get("anonymous", {}).get("in_flight") == 2)
        with pytest.raises(MCPError) as err:
            await s.call_tool("sc__echo", {"text": "third"})
        assert str(err.value) == ("gateway client anonymous has 2 calls in flight, its "
                                  "limit (max_concurrent)")
        for t in slow:
            t.cancel()
        await asyncio.gather(*slow, return_exceptions=True)


INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "raw", "version": "1"}}}
ACCEPT = {"Accept": "application/json, text/event-stream"}


async def test_sessions_are_capped_and_a_client_gone_mid_call_cancels_it(
        daemon: Daemon) -> None:
    url = "http://localhost/mcp"
    async with http_client(daemon) as c:
        ids = []
        for _ in range(2):
            r = await c.post(url, json=INIT, headers=ACCEPT)
            assert r.status_code == 200 and r.json()["result"]["protocolVersion"] == \
                "2025-06-18"
            ids.append(r.headers["Mcp-Session-Id"])
        # a third: the least recently used idle one (the first) makes room, told why
        r = await c.post(url, json=INIT, headers=ACCEPT)
        assert r.status_code == 200
        ids.append(r.headers["Mcp-Session-Id"])
        r = await c.post(url, headers={**ACCEPT, "Mcp-Session-Id": ids.pop(0)},
                         json={"jsonrpc": "2.0", "id": 2, "method": "ping"})
        assert r.status_code == 404
        assert r.json()["error"]["message"] == (
            "session evicted: the gateway was at max_sessions 2 and it was the least "
            "recently used idle one: initialize again")
        r = await c.delete(url, headers={"Mcp-Session-Id": ids.pop()})
        assert r.status_code == 200
        sid = ids[0]
        r = await c.post(url, headers={**ACCEPT, "Mcp-Session-Id": "nope"},
                         json={"jsonrpc": "2.0", "id": 2, "method": "ping"})
        assert r.status_code == 404
        # a call whose client goes away (its read times out) is cancelled upstream
        with pytest.raises(httpx2.ReadTimeout):
            await c.post(url, headers={**ACCEPT, "Mcp-Session-Id": sid}, timeout=2.0, json={
                "jsonrpc": "2.0", "id": 3, "method": "tools/call",
                "params": {"name": "sc__slow", "arguments": {"seconds": 60}}})
    await wait_until_async(lambda: "cancelled" in daemon.logs("sc"))


def test_a_non_loopback_address_without_tls_is_refused(tmp_path: Any) -> None:
    d = Daemon(tmp_path, """
[gateway]
listen = "0.0.0.0:0"
""")
    try:
        d.start(wait_ready=False)
        assert d.proc is not None
        assert d.proc.wait(30) == 1
        assert d.said().endswith(
            "corral: cannot start the gateway on 0.0.0.0:0: gateway.listen: refusing to "
            "serve 0.0.0.0, which is not a loopback address, without TLS: set tls_cert and "
            "tls_key, or allow_remote = true\n")
    finally:
        d.close()


def test_a_clients_rate_is_limited_per_minute() -> None:
    from corral.daemon.gatewayaccess import Identity
    from corral.daemon.gatewaylimits import Limiter
    from corral.jsonrpc import RpcError

    ident = Identity(name="c", allow=None, owner=None, max_concurrent=10, rate_per_minute=2,
                     max_sessions=1)
    lim = Limiter()
    lim.admit(ident)
    lim.admit(ident)
    with pytest.raises(RpcError) as err:
        lim.admit(ident)
    assert err.value.message == "gateway client c is over its rate of 2 calls a minute"
    assert lim.in_flight == 2


async def test_an_idle_session_expires_and_its_client_is_told_to_initialize_again(
        ) -> None:
    tmp = shared_tmpdir()
    with running_daemon(tmp, f"""
[gateway]
listen = "unix:{tmp}/idle.sock"
anonymous_tools = ["*"]
session_idle_timeout = 0.4
""") as d:
        transport = httpx2.AsyncHTTPTransport(uds=str(tmp / "idle.sock"))
        async with httpx2.AsyncClient(transport=transport) as c:
            r = await c.post("http://localhost/mcp", json=INIT, headers=ACCEPT)
            sid = r.headers["Mcp-Session-Id"]
            await wait_until_async(
                lambda: d.ask("mcp.status")["gateway"]["http"]["sessions"] == 0)
            r = await c.post("http://localhost/mcp", headers={**ACCEPT, "Mcp-Session-Id": sid},
                             json={"jsonrpc": "2.0", "id": 2, "method": "ping"})
            assert r.status_code == 404
            assert r.json()["error"]["message"].startswith("no such session")
