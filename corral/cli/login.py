"""`corral mcp login NAME`: the OAuth authorization code flow (with PKCE) for a remote
server with `auth = "oauth"`, run once by an operator: the tokens are written where the
daemon reads them (`STATE_DIR/oauth/NAME.json`, 0600), at its next connection attempt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from ..timeouts import waited

LOGIN_TIMEOUT = 600.0  # seconds to wait for the browser's redirect


class LoginError(Exception):
    pass


def server_and_state_dir(config: Path, name: str) -> tuple[str, object, Path]:
    """The server's URL and spec, and the state directory, from the config file."""
    from ..paths import default_state_dir, resolve
    from ..supervisor.config import ConfigError
    from ..supervisor.configload import load_config

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        raise LoginError(f"invalid config: {exc}") from None
    spec = cfg.mcp_servers.get(name)
    if spec is None:
        raise LoginError(f"no MCP server {name} in {config}")
    if spec.url is None or spec.auth != "oauth":
        raise LoginError(f"MCP server {name} is not a remote server with auth = \"oauth\"")
    state_dir = resolve(config.parent, cfg.supervisor.state_dir) or default_state_dir()
    return spec.url, spec, state_dir


async def login(config: Path, name: str, port: int, say: Callable[[str], None]) -> Path:
    from aiohttp import web

    from ..mcp.http import HttpError
    from ..mcp.oauth import OAuth, Redirect, parse_challenge
    from ..supervisor.config import ConfigError, McpServerSpec
    from ..supervisor.remote import oauth_settings

    url, spec, state_dir = server_and_state_dir(config, name)
    assert isinstance(spec, McpServerSpec)
    redirected: asyncio.Future[tuple[Redirect, str]] = asyncio.get_running_loop().create_future()

    async def callback(request: web.Request) -> web.Response:
        q = request.query
        if not redirected.done():
            if "error" in q:
                redirected.set_exception(LoginError(
                    f"the authorization server refused: {q.get('error')}"
                    + (f": {q['error_description']}" if "error_description" in q else "")))
            else:
                redirected.set_result((Redirect(q.get("code", ""), q.get("iss")),
                                       q.get("state", "")))
        return web.Response(text=f"corral: authorization for {name} received; you may "
                                 "close this page.\n")

    app = web.Application()
    app.router.add_get("/callback", callback)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        redirect = f"http://127.0.0.1:{runner.addresses[0][1]}/callback"

        async def authorize(auth_url: str, redirect_uri: str, state: str) -> Redirect:
            say(f"Open this URL in a browser to authorize corral for {name}:\n\n"
                f"  {auth_url}\n\nWaiting for the redirect to {redirect_uri} ...")
            try:
                answer, got = await waited(redirected, LOGIN_TIMEOUT)
            except TimeoutError:
                raise LoginError(f"no redirect within {LOGIN_TIMEOUT:g} s") from None
            if got != state:
                raise LoginError("the redirect's state does not match the request's: "
                                 "the code is refused")
            return answer

        settings = oauth_settings(spec)
        settings.redirect_uri = redirect
        oauth = OAuth.for_server(name, url, settings, state_dir, authorize=authorize)
        challenge = parse_challenge(await _challenge(url))
        try:
            await oauth.obtain(challenge)
        except (HttpError, ConfigError) as exc:
            raise LoginError(str(exc)) from None
        return oauth.path
    finally:
        await runner.cleanup()


async def _challenge(url: str) -> str | None:
    """The server's WWW-Authenticate for an unauthenticated request (where it names its
    protected-resource metadata), or None when it gives none."""
    import aiohttp

    body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http, \
                http.post(url, data=body, headers={
                    "Content-Type": "application/json",
                    "Accept": "application/json, text/event-stream"}) as resp:
            return resp.headers.get("WWW-Authenticate") if resp.status == 401 else None
    except (aiohttp.ClientError, OSError) as exc:
        raise LoginError(f"cannot reach {url}: {exc}") from None
