"""MCP Apps through the gateway (issue 76): a tool whose `_meta.ui.resourceUri` names a
`ui://` view, and that view, reach a client of the official MCP SDK at /mcp and at
/mcp/NAME, and the view is read back through the same endpoint — its mimeType
(text/html;profile=mcp-app), its HTML and its `_meta.ui` unchanged. At /mcp a resource
keeps its URI (the gateway finds its server by who lists it), so the tool's pointer,
passed on as the server wrote it, still reads the view. A scripted Apps server
(servers/apps_mcp.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from .daemon_harness import PY, Daemon, running_daemon, shared_tmpdir
from .test_gateway_stdio import listed

mcp = pytest.importorskip("mcp")
import httpx2  # noqa: E402
from mcp import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402

SERVER = Path(__file__).parent / "servers" / "apps_mcp.py"
UI = "io.modelcontextprotocol/ui"
MIME = "text/html;profile=mcp-app"
VIEW = "ui://weather/view.html"
VIEW_META = {"ui": {"csp": {"connectDomains": [], "resourceDomains": []},
                    "prefersBorder": True}}


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    with running_daemon(shared_tmpdir(), f"""
[mcp_servers.ap]
command = ["{PY}", "{SERVER}"]
start_timeout = 30.0

[gateway]
listen = "127.0.0.1:0"
anonymous_tools = ["ap__*"]
""") as d:
        yield d


@asynccontextmanager
async def session(d: Daemon, at: str) -> AsyncIterator[ClientSession]:
    url = d.json("mcp", "status")["gateway"]["http"]["url"] + at
    client = httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=60))
    # a host that renders views says so (the extension's client capability)
    async with client, streamable_http_client(url, http_client=client) as (r, w), \
            ClientSession(r, w, extensions={UI: {"mimeTypes": [MIME]}}) as s:
        await s.initialize()
        yield s


@pytest.mark.parametrize(("at", "tool"), [("", "ap__show_weather"),
                                          ("/ap", "show_weather")])
async def test_an_apps_view_reaches_the_client_and_is_read_back(
        daemon: Daemon, at: str, tool: str) -> None:
    async with session(daemon, at) as s:
        assert tool in await listed(s, tool)
        found = next(t for t in (await s.list_tools()).tools if t.name == tool)
        assert found.meta == {"ui": {"resourceUri": VIEW, "visibility": ["model", "app"]},
                              "ui/resourceUri": VIEW}
        views = [r for r in (await s.list_resources()).resources
                 if str(r.uri) == VIEW]
        assert [(v.name, v.mime_type, v.meta) for v in views] == \
            [("weather view", MIME, VIEW_META)]
        # the host reads the view the tool names, by that very URI
        pointer = found.meta["ui"]["resourceUri"]
        read = (await s.read_resource(pointer)).contents
        assert len(read) == 1
        assert (str(read[0].uri), read[0].mime_type, read[0].meta) == \
            (VIEW, MIME, VIEW_META)
        assert getattr(read[0], "text", "").startswith("<!doctype html>")
        called = await s.call_tool(tool, {"city": "Oslo"})
        assert called.structured_content == {"city": "Oslo", "sky": "sunny",
                                             "celsius": 21}


async def test_a_view_no_server_lists_is_refused_with_its_uri(daemon: Daemon) -> None:
    async with session(daemon, "") as s:
        await listed(s, "ap__show_weather")
        with pytest.raises(MCPError) as err:
            await s.read_resource("ui://weather/other.html")
        assert str(err.value) == ("resource ui://weather/other.html: no server this "
                                  "client may use lists it")
