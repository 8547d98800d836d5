"""Tool search at the gateway (`[gateway] tool_search`, issue 76): tools/list at /mcp is
`search_tools` and the pinned tools, a search finds tools by name and description within
the client's own view, and a tool found so is called as any (allowlist, accounting); a
tenant's own setting, and a server seen as itself, list every tool. Against the official
MCP SDK's Streamable HTTP client, with a server of 300 tools (servers/many_tools.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from .daemon_harness import PY, Daemon, running_daemon, shared_tmpdir
from .test_gateway_stdio import gateway, listed, text

mcp = pytest.importorskip("mcp")
import httpx2  # noqa: E402
from mcp import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402

MANY = Path(__file__).parent / "servers" / "many_tools.py"
FULL, NARROW = "full-token-for-search", "narrow-token-for-search"
STATELESS = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
             "io.modelcontextprotocol/clientCapabilities": {}}
INVOICES = sorted(f"many__{v}_invoice" for v in (
    "create", "update", "delete", "archive", "export", "import", "list", "fetch", "merge",
    "validate", "approve", "assign", "close", "reopen", "tag"))


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    tmp = shared_tmpdir()
    (tmp / "tokens.toml").write_text(f"""
[clients.full]
token_sha256 = "{sha(FULL)}"

[clients.narrow]
token_sha256 = "{sha(NARROW)}"
tools = ["many__*_invoice"]
""")
    with running_daemon(tmp, f"""
[tenants.acme]
tool_search = false

[mcp_servers.many]
command = ["{PY}", "{MANY}", "300"]
start_timeout = 30.0
shared = true

[mcp_servers.acmes]
command = ["{PY}", "{MANY}", "3"]
start_timeout = 30.0
tenant = "acme"

[gateway]
listen = "127.0.0.1:0"
tokens_file = "tokens.toml"
tool_search = true
tool_search_pinned = ["many__forecast_*"]
""") as d:
        yield d


def url(d: Daemon) -> str:
    u: str = d.json("mcp", "status")["gateway"]["http"]["url"]
    return u


@asynccontextmanager
async def session(d: Daemon, token: str, at: str = "") -> AsyncIterator[ClientSession]:
    client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                timeout=httpx2.Timeout(30, read=60))
    async with client, streamable_http_client(url(d) + at, http_client=client) as (r, w), \
            ClientSession(r, w) as s:
        await s.initialize()
        yield s


async def search(s: ClientSession, **arguments: Any) -> list[str]:
    res = await s.call_tool("search_tools", arguments)
    assert not res.is_error, text(res)
    assert res.structured_content is not None
    assert json.loads(text(res)) == res.structured_content  # the same, as text
    return [t["name"] for t in res.structured_content["tools"]]


async def list_bytes(d: Daemon, token: str) -> tuple[int, list[str]]:
    """The bytes of a stateless tools/list's answer, and its tools' names."""
    async with httpx2.AsyncClient(timeout=30) as c:
        r = await c.post(url(d), json={"jsonrpc": "2.0", "id": 1, "method": "tools/list",
                                       "params": {"_meta": STATELESS}},
                         headers={"Authorization": f"Bearer {token}",
                                  "Accept": "application/json, text/event-stream",
                                  "MCP-Protocol-Version": "2026-07-28",
                                  "Mcp-Method": "tools/list"})
    assert r.status_code == 200, r.text
    return len(r.content), [t["name"] for t in r.json()["result"]["tools"]]


@pytest.fixture(scope="module")
def acme(daemon: Daemon) -> str:
    """An API token of tenant acme, whose own tool_search is false."""
    made = daemon.json("token", "create", "acme-t", "--scope", "mcp:call", "--tenant", "acme")
    secret: str = made["token"]
    return secret


async def test_the_list_is_search_tools_and_the_pinned_under_5_percent_of_the_full(
        daemon: Daemon, acme: str) -> None:
    async with session(daemon, FULL) as s:
        names = await listed(s, "many__forecast_weather")
        assert names == ["search_tools", "many__forecast_weather"]
        tool = (await s.list_tools()).tools[0]
        assert tool.input_schema["required"] == ["query"]
    # acme's tenant says tool_search = false: it lists every tool it sees (many is shared)
    async with session(daemon, acme) as s:
        await listed(s, "many__forecast_weather", "acmes__forecast_weather")
    full, everything = await list_bytes(daemon, acme)
    searched, few = await list_bytes(daemon, FULL)
    assert len(everything) == 303 and "search_tools" not in everything
    assert few == ["search_tools", "many__forecast_weather"]
    assert searched < 0.05 * full, (searched, full)


async def test_a_search_finds_a_tool_by_a_word_of_its_description_and_it_is_called(
        daemon: Daemon) -> None:
    async with session(daemon, FULL) as s:
        await listed(s, "many__forecast_weather")
        # "precipitation" is in one description alone; acme's own server is none of a
        # tokens file's client of no tenant (the default tenant's, issue 74)
        assert await search(s, query="will there be precipitation") == \
            ["many__forecast_weather"]
        # a word of the name (its server's too) ranks above one of the description;
        # ties go by name
        assert await search(s, query="many invoice", limit=3) == INVOICES[:3]
        assert await search(s, query="archive invoice", limit=1) == \
            ["many__archive_invoice"]
        assert await search(s, query="zeppelin") == []
        # a tool found so is called as any: by its name, counted as the client's call
        res = await s.call_tool("many__archive_invoice", {"id": "I-7"})
        assert json.loads(text(res)) == {"tool": "archive_invoice",
                                         "arguments": {"id": "I-7"}}
    st = daemon.json("mcp", "status")["gateway"]
    assert st["tools"]["many__archive_invoice"]["calls"] == 1
    assert "search_tools" not in st["tools"]  # corral's own, not a call of the pool


async def test_a_search_sees_the_callers_view_alone(daemon: Daemon) -> None:
    async with session(daemon, NARROW) as s:
        await search(s, query="invoice")  # the servers are up once it answers
        assert (await s.list_tools()).tools[0].name == "search_tools"
        assert [t.name for t in (await s.list_tools()).tools] == ["search_tools"]
        assert await search(s, query="precipitation weather") == []
        assert await search(s, query="invoice", limit=50) == INVOICES
        with pytest.raises(MCPError) as err:
            await s.call_tool("many__forecast_weather", {"city": "Oslo"})
        assert str(err.value) == ("tool many__forecast_weather is not allowed for gateway "
                                  "client narrow (its tools allowlist: ['many__*_invoice'])")


async def test_bad_search_arguments_are_invalid_params(daemon: Daemon) -> None:
    async with session(daemon, FULL) as s:
        cases: list[tuple[dict[str, Any], str]] = [
            ({}, "invalid params: search_tools needs a query of at least one word"),
            ({"query": " ,; "},
             "invalid params: search_tools needs a query of at least one word"),
            ({"query": "invoice", "limit": 0},
             "invalid params: search_tools's limit must be an integer from 1 to 50"),
            ({"query": "invoice", "limit": True},
             "invalid params: search_tools's limit must be an integer from 1 to 50")]
        for arguments, message in cases:
            with pytest.raises(MCPError) as err:
                await s.call_tool("search_tools", arguments)
            assert str(err.value) == message
            assert err.value.error.code == -32602


async def test_a_server_seen_as_itself_and_a_tenant_without_search_list_every_tool(
        daemon: Daemon, acme: str) -> None:
    async with session(daemon, FULL, at="/many") as s:
        names = await listed(s, "forecast_weather")
        assert len(names) == 300 and "search_tools" not in names
    async with session(daemon, acme) as s:
        with pytest.raises(MCPError) as err:
            await s.call_tool("search_tools", {"query": "invoice"})
        assert str(err.value) == \
            "no such tool: search_tools (tools are named SERVER__TOOL)"


async def test_corral_mcp_serve_searches_too(daemon: Daemon) -> None:
    """Over stdio (the operator's client, of no tenant): the gateway's setting."""
    async with gateway(daemon) as s:
        assert await listed(s, "many__forecast_weather") == \
            ["search_tools", "many__forecast_weather"]
        assert await search(s, query="archive invoice", limit=1) == ["many__archive_invoice"]
