"""One view per caller, on every verb (issue 76): what a tenant's token may see of the
pool is judged at each request, for tools, prompts, resources and templates alike, at
/mcp, /mcp/NAME and under tool search — a session opened before another tenant's server
was added by a reload lists nothing of it and is refused each of its verbs. Against the
official MCP SDK's Streamable HTTP client and a scripted server with every kind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest

from .daemon_harness import PY, Daemon, running_daemon, shared_tmpdir
from .test_gateway_stdio import SCRIPTED, listed, text

mcp = pytest.importorskip("mcp")
import httpx2  # noqa: E402
from mcp import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402
from mcp.types import PromptReference  # noqa: E402

CONFIG = f"""
[tenants.acme]
[tenants.beta]
tool_search = true

[mcp_servers.a1]
command = ["{PY}", "{SCRIPTED}", "v2025-11,resources"]
start_timeout = 30.0
tenant = "acme"

[gateway]
listen = "127.0.0.1:0"
"""
BETAS = f"""
[mcp_servers.b1]
command = ["{PY}", "{SCRIPTED}", "v2025-11,resources"]
start_timeout = 30.0
tenant = "beta"
"""


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    with running_daemon(shared_tmpdir(), CONFIG) as d:
        yield d


def url(d: Daemon) -> str:
    u: str = d.json("mcp", "status")["gateway"]["http"]["url"]
    return u


def token(d: Daemon, tenant: str) -> str:
    secret: str = d.json("token", "create", f"{tenant}-t", "--scope", "mcp:call",
                         "--tenant", tenant)["token"]
    return secret


@asynccontextmanager
async def session(d: Daemon, secret: str, at: str = "") -> AsyncIterator[ClientSession]:
    client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {secret}"},
                                timeout=httpx2.Timeout(30, read=60))
    async with client, streamable_http_client(url(d) + at, http_client=client) as (r, w), \
            ClientSession(r, w) as s:
        await s.initialize()
        yield s


async def refused(call: object) -> str:
    with pytest.raises(MCPError) as err:
        await call  # type: ignore[misc]
    return str(err.value)


async def test_a_session_sees_no_server_of_another_tenant_added_while_it_lives(
        daemon: Daemon) -> None:
    acme = token(daemon, "acme")
    async with session(daemon, acme) as s:
        await listed(s, "a1__echo")
        # every server is acme's now: its token's allowlist is everything
        daemon.config.write_text(daemon.config.read_text() + BETAS)
        assert (await asyncio.to_thread(daemon.cli, "reload")).returncode == 0
        beta = token(daemon, "beta")
        async with session(daemon, beta) as b:  # b1 serving, by beta's eyes
            # beta searches for its tools (tool_search): within its view alone
            assert await listed(b, "search_tools") == ["search_tools"]
            found = await b.call_tool("search_tools", {"query": "echo"})
            assert found.structured_content == {"tools": [
                {"name": "b1__echo", "inputSchema": {"type": "object"}}]}
            assert [p.name for p in (await b.list_prompts()).prompts] == ["b1__greet"]
        # acme's session, opened before b1 was: nothing of b1, by any verb
        names = [t.name for t in (await s.list_tools()).tools]
        assert names and all(n.startswith("a1__") for n in names)
        assert [p.name for p in (await s.list_prompts()).prompts] == ["a1__greet"]
        uris = [str(r.uri) for r in (await s.list_resources()).resources]
        assert uris == ["mem://doc/0", "mem://doc/1", "mem://doc/2"]
        assert len((await s.list_resource_templates()).resource_templates) == 1
        # beta's server is none there is, in the words of one that is not (decision 1694)
        for server in ("b1", "nosuch"):
            assert await refused(s.call_tool(f"{server}__echo", {"text": "x"})) == \
                f"no such tool: {server}__echo (no MCP server {server})"
            assert await refused(s.get_prompt(f"{server}__greet", {"who": "x"})) == \
                f"no such MCP server: {server}"
            assert await refused(s.complete(
                PromptReference(type="ref/prompt", name=f"{server}__greet"),
                {"name": "who", "value": "a"})) == f"no such MCP server: {server}"
        # the one server acme sees has it: read there, not "listed by a1, b1"
        got = await s.read_resource("mem://doc/1")  # type: ignore[arg-type]
        assert got.contents[0].text == "contents of mem://doc/1"  # type: ignore[union-attr]
        assert text(await s.call_tool("a1__echo", {"text": "hi"})) == "hi"


async def test_a_server_of_another_tenant_is_404_at_its_own_path(daemon: Daemon) -> None:
    daemon.config.write_text(daemon.config.read_text() + BETAS)
    assert (await asyncio.to_thread(daemon.cli, "reload")).returncode == 0
    acme = token(daemon, "acme")
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}}
    async with httpx2.AsyncClient(timeout=30, headers={
            "Authorization": f"Bearer {acme}",
            "Accept": "application/json, text/event-stream"}) as c:
        r = await c.post(url(daemon) + "/b1", json=init)
        assert r.status_code == 404
        assert r.json()["error"]["message"] == "no MCP server b1 this client may use"
    async with session(daemon, acme, at="/a1") as s:
        assert "echo" in await listed(s, "echo")
        assert [p.name for p in (await s.list_prompts()).prompts] == ["greet"]
