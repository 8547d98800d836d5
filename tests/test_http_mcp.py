"""The MCP gateway's `/mcp` on the daemon's one HTTP server (`[http] listen`), beside
`/api/v1`: the official MCP SDK's Streamable HTTP client against it (initialize,
tools/list, tools/call), the gateway's own tokens (not the REST API's), an agent given
its address, the daemon's stop with a stream open, and `[gateway] listen` still a site of
its own."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from corral.daemon.daemon import Daemon

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, free_port, in_process
from .test_gateway_stdio import listed, text
from .test_http_api import SOCKET, Api
from .warmforks import sdk_toml

mcp = pytest.importorskip("mcp")
import httpx2  # noqa: E402
from mcp import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402

GW_TOKEN = "gateway-token-for-tests"
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "t", "version": "1"}}}
ACCEPT = {"Accept": "application/json, text/event-stream"}

# the notes server a fork of this process's MCP SDK server (tests/warmforks.py)
NOTES = sdk_toml(f"{EXAMPLES}/notes_server.py")
pytestmark = pytest.mark.usefixtures("warm_mcp_sdk")


def config(gateway_listen: str = "") -> str:
    return f"""
[agents.gwagent]
command = ["{PY}", "{EXAMPLES}/gateway_agent.py"]
env = {{ PYTHONPATH = "{ROOT}" }}
tools = ["notes__*"]

[mcp_servers.notes]
command = {NOTES}
start_timeout = 30.0

[gateway]
tokens_file = "tokens.toml"
{gateway_listen}
"""


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, listen: str = "127.0.0.1:0", gateway_listen: str = ""
                  ) -> AsyncIterator[Api]:
    digest = hashlib.sha256(GW_TOKEN.encode()).hexdigest()
    (tmp_path / "tokens.toml").write_text(
        f'[clients.full]\ntoken_sha256 = "{digest}"\n')
    async with in_process(tmp_path, config(gateway_listen),
                          f'\n[http]\nlisten = "{listen}"\n') as d, \
            aiohttp.ClientSession() as session:
        yield Api(d, session)


@contextlib.asynccontextmanager
async def mcp_session(url: str, token: str) -> AsyncIterator[ClientSession]:
    client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                timeout=httpx2.Timeout(30, read=60))
    async with client, streamable_http_client(url, http_client=client) as (r, w), \
            ClientSession(r, w) as s:
        await s.initialize()
        yield s


async def run_agent(d: Daemon) -> dict[str, Any]:
    """examples/gateway_agent.py's task: it reaches the gateway at the address corral
    gave it (CORRAL_MCP_URL, CORRAL_MCP_SOCKET) with its own token."""
    done = await asyncio.wait_for(d.dispatcher.call(SOCKET, "tasks.run", msgspec.json.encode({
        "agent": "gwagent", "input": {"title": "otters", "text": "hold hands"}})), 90)
    done = msgspec.json.decode(msgspec.json.encode(done))  # as a client reads it
    assert done["status"] == "succeeded", done
    output: dict[str, Any] = done["output"]
    return output


@pytest.mark.deadline(180)
async def test_mcp_is_served_by_the_http_server_beside_the_rest_api(tmp_path: Path
                                                                    ) -> None:
    async with serving(tmp_path) as api:
        base = api.d.http_server.url
        url = base + "/mcp"
        gateway = api.d.services.http
        assert gateway.status() == {"listen": None, "url": url, "socket": None,
                                    "mounted": url, "sessions": 0, "busy": 0,
                                    "evicted": 0, "refused": {}}
        assert api.d.services.gateway.url == url  # what agents are given

        # an MCP client session on the [http] server's port, with a gateway token
        async with mcp_session(url, GW_TOKEN) as s:
            assert gateway.status()["sessions"] == 1
            names = await listed(s, "notes__add")
            assert names == ["notes__add", "notes__get", "notes__search"]
            assert text(await s.call_tool("notes__add", {"title": "a", "text": "b"})) \
                == "stored a"
            assert text(await s.call_tool("notes__get", {"title": "a"})) == "b"
            with pytest.raises(MCPError) as err:
                await s.call_tool("notes__nothing", {})
            assert "notes__nothing" in str(err.value)
            # and the REST API on the same port, meanwhile
            await api.token("reader", "agents:read", "mcp:call")
            status, body, _ = await api.ask("GET", "/agents", "reader")
            assert status == 200 and [a["name"] for a in body["agents"]] == ["gwagent"]
            status, body, _ = await api.ask("GET", "/tools", "reader")
            assert status == 200 and [t["name"] for t in body["tools"]] == names
        st = api.d.services.gateway_status()
        assert st["clients"]["full"]["calls"] == 3 and st["clients"]["full"]["errors"] == 1

        # one token for every door: a REST token holding mcp:call opens /mcp (issue 36);
        # one without it is refused for its scope (403), none as unauthenticated (401); a
        # gateway file token is no REST token
        await api.token("rest-only", "agents:read")
        async with aiohttp.ClientSession() as http:
            headers = {**ACCEPT, "Authorization": f"Bearer {api.tokens['reader']}"}
            async with http.post(url, json=INIT, headers=headers) as r:
                assert r.status == 200
            headers = {**ACCEPT, "Authorization": f"Bearer {api.tokens['rest-only']}"}
            async with http.post(url, json=INIT, headers=headers) as r:
                assert r.status == 403
                assert (await r.json())["error"]["message"] == (
                    "forbidden: token rest-only lacks the mcp:call scope the gateway needs")
            async with http.post(url, json=INIT, headers=ACCEPT) as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"] == (
                    f'Bearer resource_metadata="{base}/.well-known/'
                    'oauth-protected-resource/mcp"')
            async with http.get(base + "/.well-known/oauth-protected-resource/mcp") as r:
                meta = await r.json()
            assert (meta["resource"], meta["bearer_methods_supported"]) == (
                url, ["header"])
        status, body, _ = await api.ask("GET", "/agents", GW_TOKEN)
        assert (status, body["detail"]) == (
            401, "unauthorized: the bearer token is not valid (unknown, revoked or expired)")

        # an agent is given the [http] server's /mcp, and its own token works there
        out = await run_agent(api.d)
        assert (out["tools"], out["stored"]) == (
            ["notes__add", "notes__get", "notes__search"], "stored otters")
        assert out["refused"].startswith("tool sc__echo is not allowed for agent "
                                         "gwagent (its tools allowlist: ")

        # a session's stream open when the daemon stops ends with it, at once (not at
        # the server's shutdown timeout)
        async with aiohttp.ClientSession() as http:
            auth = {"Authorization": f"Bearer {GW_TOKEN}"}
            async with http.post(url, json=INIT, headers={**ACCEPT, **auth}) as r:
                assert r.status == 200
                sid = r.headers["Mcp-Session-Id"]
            stream = await http.get(url, headers={
                **auth, "Accept": "text/event-stream", "Mcp-Session-Id": sid})
            assert stream.status == 200
            assert gateway.status()["busy"] == 1
            stopping = time.monotonic()
            api.d.request_stop()
            # the stream ends, cleanly, once the daemon stops serving it
            assert await asyncio.wait_for(stream.content.read(), 10) == b""
            stream.close()
    assert time.monotonic() - stopping < 10


@pytest.mark.deadline(120)
async def test_an_agent_reaches_mcp_over_the_http_servers_unix_socket(tmp_path: Path
                                                                      ) -> None:
    sock = tmp_path / "http.sock"
    async with serving(tmp_path, listen=f"unix:{sock}") as api:
        gateway = api.d.services.gateway
        assert (gateway.url, gateway.socket_path) == ("http://localhost/mcp", str(sock))
        out = await run_agent(api.d)
        assert out["stored"] == "stored otters"


@pytest.mark.deadline(120)
async def test_a_gateway_site_of_its_own_stays_beside_the_http_server(tmp_path: Path
                                                                      ) -> None:
    port = free_port()
    async with serving(tmp_path, gateway_listen=f'listen = "127.0.0.1:{port}"') as api:
        own = f"http://127.0.0.1:{port}/mcp"
        mounted = api.d.http_server.url + "/mcp"
        assert api.d.services.http.status() == {
            "listen": f"127.0.0.1:{port}", "url": own, "socket": None, "mounted": mounted,
            "sessions": 0, "busy": 0, "evicted": 0, "refused": {}}
        assert api.d.services.gateway.url == own  # agents are given the gateway's own
        for url in (own, mounted):
            async with mcp_session(url, GW_TOKEN) as s:
                assert text(await s.call_tool("notes__add", {"title": url, "text": "x"})
                            ) == f"stored {url}"
        assert (await run_agent(api.d))["stored"] == "stored otters"
