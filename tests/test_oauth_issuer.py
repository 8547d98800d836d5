"""The issuer checks of corral's OAuth client (decision 509), each refusal with its
message and what it leaves: no token asked for, no token file written. The servers are
real (aiohttp on loopback): a protected resource naming its authorization server, whose
metadata and redirect say what each test needs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from aiohttp import web

from corral.mcp.http import HttpError
from corral.mcp.oauth import OAuth, OAuthSettings, Redirect, parse_challenge

REDIRECT = "http://127.0.0.1/callback"


@dataclass
class Issuer:
    """How the authorization server names itself: in its metadata, in its redirect."""

    in_metadata: str | None = None  # None: its own URL, as RFC 8414 asks
    in_redirect: str | None = None  # None: no iss in the redirect
    promises_iss: bool = False
    base: str = ""  # where it listens, once it does
    token_requests: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
async def servers() -> AsyncIterator[tuple[str, Issuer]]:
    issuer = Issuer()
    app = web.Application()

    async def prm(_: web.Request) -> web.Response:
        base = issuer.base
        return web.json_response({"resource": f"{base}/mcp",
                                  "authorization_servers": [base]})

    async def metadata(_: web.Request) -> web.Response:
        base = issuer.base
        meta: dict[str, Any] = {
            "issuer": issuer.in_metadata or base, "authorization_endpoint":
            f"{base}/authorize", "token_endpoint": f"{base}/token",
            "code_challenge_methods_supported": ["S256"]}
        if issuer.promises_iss:
            meta["authorization_response_iss_parameter_supported"] = True
        return web.json_response(meta)

    async def authorize(request: web.Request) -> web.Response:
        q = {"code": "the-code", "state": request.query["state"]}
        if issuer.in_redirect is not None:
            q["iss"] = issuer.in_redirect
        raise web.HTTPFound(f"{request.query['redirect_uri']}?{urlencode(q)}")

    async def token(request: web.Request) -> web.Response:
        issuer.token_requests.append(dict(await request.post()))  # type: ignore[arg-type]
        return web.json_response({"access_token": "t", "token_type": "Bearer"})

    app.router.add_get("/.well-known/oauth-protected-resource/mcp", prm)
    app.router.add_get("/.well-known/oauth-authorization-server", metadata)
    app.router.add_get("/authorize", authorize)
    app.router.add_post("/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    issuer.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield issuer.base, issuer
    finally:
        await runner.cleanup()


async def follow(url: str, redirect_uri: str, state: str) -> Redirect:
    async with aiohttp.ClientSession() as http, http.get(url, allow_redirects=False) as r:
        location = r.headers["Location"]
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == [state]
    return Redirect(query["code"][0], (query.get("iss") or [None])[0])


def oauth(base: str, tmp: Path) -> OAuth:
    settings = OAuthSettings(client_id="corral-test", redirect_uri=REDIRECT)
    return OAuth("secure", f"{base}/mcp", settings, tmp / "tokens.json", authorize=follow)


async def test_a_redirect_naming_the_issuer_as_it_is_gets_a_token(
        servers: tuple[str, Issuer], tmp_path: Path) -> None:
    base, issuer = servers
    issuer.in_redirect, issuer.promises_iss = base, True
    await oauth(base, tmp_path).obtain(parse_challenge(None))
    assert [r["code"] for r in issuer.token_requests] == ["the-code"]
    assert (tmp_path / "tokens.json").exists()


@pytest.mark.parametrize("named", ["http://127.0.0.1:1", "BASE/"])
async def test_a_redirect_naming_another_issuer_is_refused(
        servers: tuple[str, Issuer], tmp_path: Path, named: str) -> None:
    base, issuer = servers
    # another server, or this one with a trailing slash: compared as it is (RFC 9207)
    issuer.in_redirect = named.replace("BASE", base)
    with pytest.raises(HttpError) as err:
        await oauth(base, tmp_path).obtain(parse_challenge(None))
    assert str(err.value) == (f"secure: the authorization response names issuer "
                              f"{issuer.in_redirect!r}, not {base!r}: the code is refused")
    assert issuer.token_requests == []
    assert not (tmp_path / "tokens.json").exists()


async def test_a_redirect_without_the_iss_its_server_promised_is_refused(
        servers: tuple[str, Issuer], tmp_path: Path) -> None:
    base, issuer = servers
    issuer.promises_iss = True
    with pytest.raises(HttpError) as err:
        await oauth(base, tmp_path).obtain(parse_challenge(None))
    assert str(err.value) == (f"secure: the authorization response names no issuer, "
                              f"although {base} says it always does: the code is refused")
    assert issuer.token_requests == []
    assert not (tmp_path / "tokens.json").exists()


async def test_metadata_naming_another_issuer_is_not_used(
        servers: tuple[str, Issuer], tmp_path: Path) -> None:
    base, issuer = servers
    issuer.in_metadata = "http://127.0.0.1:1"
    with pytest.raises(HttpError) as err:
        await oauth(base, tmp_path).obtain(parse_challenge(None))
    assert str(err.value) == (
        f"the authorization server metadata at {base}/.well-known/oauth-authorization-"
        f"server names issuer 'http://127.0.0.1:1', not {base!r}: refusing to use it")
    assert issuer.token_requests == []
    assert not (tmp_path / "tokens.json").exists()
