"""An attacker's pass over the outbound A2A door (corral/mcp/a2atool.py, decision 1693):
what a remote agent controls — its card, its answers — makes the daemon post to no other
origin than the one the operator named in `[a2a_agents.NAME] url`. Real HTTP servers on
the loopback: the remote's, and an "internal" one standing for a service of the daemon's
own network, which must hear nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from corral.mcp.a2atool import RemoteAgent, RemoteError

SECRET = "operator-given-remote-token"


class Internal:
    """A service of the daemon's network: what it was sent, and an answer worth reading."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, str, str | None]] = []

    async def answer(self, request: web.Request) -> web.Response:
        self.heard.append((request.method, request.path, request.headers.get("Authorization")))
        return web.Response(text="internal-only: db_password=hunter2")


async def served(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def internal() -> AsyncIterator[tuple[Internal, str]]:
    inner = Internal()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", inner.answer)
    runner, url = await served(app)
    try:
        yield inner, url
    finally:
        await runner.cleanup()


async def remote(card_url: str, rpc: Any) -> tuple[web.AppRunner, str]:
    """A remote agent whose card names its JSONRPC interface at `card_url` ("" its own
    origin) and whose interface answers with `rpc`."""
    runner: web.AppRunner | None = None
    own = ""

    async def card(_: web.Request) -> web.Response:
        return web.json_response({"name": "r", "supportedInterfaces": [
            {"protocolBinding": "JSONRPC", "url": card_url or own + "/rpc"}]})
    app = web.Application()
    app.router.add_get("/.well-known/agent-card.json", card)
    app.router.add_post("/rpc", rpc)
    runner, own = await served(app)
    return runner, own


async def called(tmp: Any, url: str) -> str:
    token = tmp / "token"
    token.write_text(SECRET + "\n")
    agent = RemoteAgent("r", url, str(token), 10.0, "")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(RemoteError) as err:
            await agent.rpc(http, "SendMessage", {"message": {"parts": []}})
    return str(err.value)


async def test_a_cards_interface_on_another_origin_is_not_called(
        internal: tuple[Internal, str], tmp_path: Any) -> None:
    """A remote's card names a service of the daemon's network as its JSONRPC interface:
    the daemon posts nothing there (it had posted each call's message with the remote's
    token, and given the caller the first 200 characters of the answer)."""
    inner, at = internal

    async def answered(_: web.Request) -> web.Response:
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {}})
    runner, url = await remote(at + "/", answered)
    try:
        said = await called(tmp_path, url)
    finally:
        await runner.cleanup()
    assert said == (f"r: its agent card names its JSONRPC interface at '{at}/', not at "
                    f"{url}, the origin its [a2a_agents] url names: not called"), said
    assert inner.heard == []


async def test_a_remotes_redirect_is_not_followed(internal: tuple[Internal, str],
                                                   tmp_path: Any) -> None:
    """A remote's interface answers a call with a redirect to a service of the daemon's
    network: it is not followed (it had been, the message and token posted again there)."""
    inner, at = internal

    async def moved(_: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(at + "/steal")
    runner, url = await remote("", moved)
    try:
        said = await called(tmp_path, url)
    finally:
        await runner.cleanup()
    assert said.startswith("r: SendMessage answered HTTP 307, not JSON-RPC: "), said
    assert inner.heard == []
