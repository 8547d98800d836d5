"""The HTTP gateway's sessions, bounded per client and per daemon (issue 52): a client that
never sends DELETE (several SDKs' default) recycles its own sessions, the least recently
used idle one first, and never refuses another client; a new session is refused, naming
the bound, only when every session under it is busy."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from .conftest import ROOT
from .daemon_harness import PY, Daemon, free_port, running_daemon, shared_tmpdir
from .test_gateway_stdio import SCRIPTED, listed, text, wait_until_async

mcp = pytest.importorskip("mcp")
import httpx2  # noqa: E402
from mcp import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

SDK = ROOT / ".npm-test" / "node_modules" / "@modelcontextprotocol" / "sdk"
TS_CLIENTS = Path(__file__).with_name("ts_gateway_clients.mjs")
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "raw", "version": "1"}}}
PING = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
ACCEPT = {"Accept": "application/json, text/event-stream"}
CLIENTS = ("a", "b", "c", "d", "big")


def token(client: str) -> str:
    return f"token-of-{client}"


class Gateway(NamedTuple):
    daemon: Daemon
    origin: str  # the gateway's site: http://127.0.0.1:PORT


@pytest.fixture
def daemon() -> Iterator[Gateway]:
    tmp = shared_tmpdir()
    port = free_port()
    entries = "".join(
        f'[clients.{c}]\ntoken_sha256 = "{hashlib.sha256(token(c).encode()).hexdigest()}"\n'
        + ("max_sessions = 3\n" if c == "big" else "") for c in CLIENTS)
    (tmp / "tokens.toml").write_text(entries)
    with running_daemon(tmp, f"""
[tenants.acme]
max_gateway_sessions = 3

[mcp_servers.sc]
command = ["{PY}", "{SCRIPTED}", "v2025-11"]
start_timeout = 30.0

[gateway]
listen = "127.0.0.1:{port}"
tokens_file = "tokens.toml"
max_sessions = 6
max_sessions_per_client = 2
""") as d:
        yield Gateway(d, f"http://127.0.0.1:{port}")


def http(d: Gateway, client: str, secret: str | None = None) -> httpx2.AsyncClient:
    """An HTTP client of the gateway as `client` of the tokens file (or with `secret`,
    an API token's)."""
    return httpx2.AsyncClient(base_url=d.origin, timeout=httpx2.Timeout(30, read=60),
                              headers={"Authorization": f"Bearer {secret or token(client)}"})


def api_token(d: Gateway, name: str, *tenant: str) -> str:
    made = d.daemon.json("token", "create", name, "--scope", "mcp:call", *tenant)
    secret: str = made["token"]
    return secret


@contextlib.asynccontextmanager
async def sdk_session(d: Gateway, client: str) -> AsyncIterator[ClientSession]:
    """The official MCP SDK's Streamable HTTP client, as client `client`."""
    async with http(d, client) as c, streamable_http_client(d.origin + "/mcp",
                                                                   http_client=c) as (r, w), \
            ClientSession(r, w) as s:
        await s.initialize()
        yield s


async def initialize(c: httpx2.AsyncClient) -> httpx2.Response:
    return await c.post("/mcp", json=INIT, headers=ACCEPT)


async def opened(c: httpx2.AsyncClient) -> str:
    r = await initialize(c)
    assert r.status_code == 200, r.text
    sid: str = r.headers["Mcp-Session-Id"]
    return sid


async def ping(c: httpx2.AsyncClient, sid: str) -> httpx2.Response:
    return await c.post("/mcp", json=PING, headers={**ACCEPT, "Mcp-Session-Id": sid})


async def stream(c: httpx2.AsyncClient, sid: str) -> httpx2.Response:
    """The session's GET stream, held open (the session is busy while it is)."""
    r = await c.send(c.build_request("GET", "/mcp", headers={
        "Accept": "text/event-stream", "Mcp-Session-Id": sid}), stream=True)
    assert r.status_code == 200
    return r


def sessions(d: Gateway) -> dict[str, Any]:
    http_status: dict[str, Any] = d.daemon.json("mcp", "status")["gateway"]["http"]
    return http_status


def message(r: httpx2.Response) -> str:
    said: str = r.json()["error"]["message"]
    return said


async def test_one_clients_flood_recycles_its_own_sessions_and_refuses_no_other(
        daemon: Gateway) -> None:
    async with sdk_session(daemon, "b") as b:
        assert "sc__echo" in await listed(b, "sc__echo")
        # client a opens session after session and never ends one
        async with http(daemon, "a") as a, http(daemon, "big") as big:
            flood = [await opened(a) for _ in range(40)]
            # its tokens-file entry's own bound, over the [gateway] default
            bigs = [await opened(big) for _ in range(5)]
            st = sessions(daemon)
            assert (st["sessions"], st["evicted"]) == (1 + 2 + 3, 38 + 2)
            # its newest two are kept, the older ones are told why they are gone
            for sid in flood[-2:]:
                assert (await ping(a, sid)).status_code == 200
            r = await ping(a, flood[0])
            assert r.status_code == 404
            assert message(r) == ("session evicted: gateway client a was at "
                                  "max_sessions_per_client 2 and it was the least recently "
                                  "used idle one: initialize again")
            assert [(await ping(big, sid)).status_code for sid in bigs] == [404] * 2 + [200] * 3
            # b's session lived through it, and b opens another meanwhile
            assert text(await b.call_tool("sc__echo", {"text": "still here"})) == "still here"
            async with sdk_session(daemon, "b") as again:
                assert text(await again.call_tool("sc__echo", {"text": "two"})) == "two"


async def test_every_session_busy_under_a_bound_refuses_naming_it_until_one_is_idle(
        daemon: Gateway) -> None:
    async with contextlib.AsyncExitStack() as held:
        clients = {n: await held.enter_async_context(http(daemon, n)) for n in CLIENTS}
        streams: dict[str, list[httpx2.Response]] = {}
        ids: dict[str, list[str]] = {}
        for n in ("a", "c", "d"):
            ids[n] = [await opened(clients[n]) for _ in range(2)]
            streams[n] = [await stream(clients[n], sid) for sid in ids[n]]
        try:
            # a's own bound: both its sessions hold a stream open
            r = await initialize(clients["a"])
            assert (r.status_code, r.headers["Retry-After"]) == (503, "5")
            assert message(r) == ("gateway client a has 2 sessions, every one busy (a call "
                                  "in flight or a stream open): max_sessions_per_client 2; "
                                  "end one (DELETE) or try again later")
            # the gateway's: six sessions, all busy, none of b's
            r = await initialize(clients["b"])
            assert r.status_code == 503
            assert message(r) == ("the gateway has 6 sessions, every one busy (a call in "
                                  "flight or a stream open): max_sessions 6; end one "
                                  "(DELETE) or try again later")
            assert sessions(daemon)["evicted"] == 0
            assert sessions(daemon)["busy"] == 6
            # two go idle; the one used since is kept, the least recently used makes room
            for n in ("d", "c"):
                await streams[n].pop(0).aclose()
            await wait_until_async(lambda: sessions(daemon)["busy"] == 4)
            assert (await ping(clients["d"], ids["d"][0])).status_code == 200
            sid = await opened(clients["b"])
            r = await ping(clients["c"], ids["c"][0])
            assert r.status_code == 404
            assert message(r) == ("session evicted: the gateway was at max_sessions 6 and it "
                                  "was the least recently used idle one: initialize again")
            for n, mine in (("b", sid), ("d", ids["d"][0]), ("c", ids["c"][1])):
                assert (await ping(clients[n], mine)).status_code == 200
            st = sessions(daemon)
            assert (st["sessions"], st["busy"], st["evicted"]) == (6, 4, 1)
        finally:
            for opened_streams in streams.values():
                for s in opened_streams:
                    await s.aclose()


@pytest.mark.skipif(not SDK.is_dir(), reason="the TypeScript MCP SDK is not installed in "
                    f"{SDK.parent.parent.parent} (test.sh installs it)")
async def test_typescript_sdk_clients_that_never_delete_leave_room_for_another_token(
        daemon: Gateway) -> None:
    """The TypeScript SDK's client closes without DELETE: 20 of them, one after another,
    as client a (the issue: 256 such filled the gateway for ten minutes, and every other
    client got 503)."""
    proc = await asyncio.create_subprocess_exec(
        "node", str(TS_CLIENTS), str(SDK), daemon.origin + "/mcp", token("a"), "20",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    results = json.loads(out)
    assert [r.get("error") for r in results] == [None] * 20
    assert len({r["session"] for r in results}) == 20
    st = sessions(daemon)
    assert (st["sessions"], st["evicted"]) == (2, 18)
    async with sdk_session(daemon, "b") as b:
        assert text(await b.call_tool("sc__echo", {"text": "room"})) == "room"


async def test_a_tenants_clients_together_recycle_the_tenants_sessions(daemon: Gateway
                                                                      ) -> None:
    """Tenant acme's tokens hold max_gateway_sessions 3 together: past it, acme's least
    recently used idle session makes room, whichever of its tokens holds it; a token of
    no tenant (the operator's) and another token are untouched, and all of acme's busy
    refuses acme alone, naming the tenant's bound."""
    secrets = {n: api_token(daemon, n, "--tenant", "acme") for n in ("t1", "t2")}
    secrets["ops"] = api_token(daemon, "ops")
    async with contextlib.AsyncExitStack() as held:
        c = {n: await held.enter_async_context(http(daemon, n, s)) for n, s in secrets.items()}
        c["b"] = await held.enter_async_context(http(daemon, "b"))
        ops, b = await opened(c["ops"]), await opened(c["b"])
        first = [await opened(c["t1"]) for _ in range(2)]
        second = [await opened(c["t2"]) for _ in range(2)]  # the third and a fourth of acme's
        r = await ping(c["t1"], first[0])
        assert r.status_code == 404
        assert message(r) == ("session evicted: tenant acme was at max_gateway_sessions 3 "
                              "and it was the least recently used idle one: initialize again")
        for who, sid in (("t1", first[1]), ("t2", second[0]), ("t2", second[1]),
                         ("ops", ops), ("b", b)):
            assert (await ping(c[who], sid)).status_code == 200
        streams = [await stream(c[who], sid) for who, sid in (
            ("t1", first[1]), ("t2", second[0]), ("t2", second[1]))]
        try:
            r = await initialize(c["t1"])
            assert r.status_code == 503
            assert message(r) == ("tenant acme has 3 sessions, every one busy (a call in "
                                  "flight or a stream open): max_gateway_sessions 3; end one "
                                  "(DELETE) or try again later")
            assert (await initialize(c["ops"])).status_code == 200
        finally:
            for s in streams:
                await s.aclose()
        st = sessions(daemon)
        assert (st["sessions"], st["evicted"]) == (6, 1)
