"""One aiohttp runner, a site per listen address; the parts mounted on one application."""

from __future__ import annotations

import socket
import ssl
from typing import Any

from aiohttp import web

from ...supervisor.config import ConfigError, HttpSettings
from ..addresses import loopback
from .context import HttpContext
from .route import MAX_BODY


def tls_context(settings: HttpSettings) -> ssl.SSLContext | None:
    """HTTPS with tls_cert and tls_key, plain HTTP with neither; a non-loopback address
    needs TLS or `allow_insecure_remote = true` (a bearer token in clear text crosses
    the network otherwise). Raises ConfigError."""
    listen = settings.listen or ""
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("[http] tls_cert and tls_key go together: give both or neither")
    if not listen.startswith("unix:"):
        host = listen.rpartition(":")[0].strip("[]")
        if not settings.tls_cert and not loopback(host) and not settings.allow_insecure_remote:
            raise ConfigError(
                f"{host} is not a loopback address: give [http] tls_cert and tls_key, or "
                "set allow_insecure_remote = true to send tokens in clear text")
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[http] tls_cert/tls_key: {exc}") from None
    return context


def health_routes(ctx: HttpContext) -> list[web.RouteDef]:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        line = ctx.services.status_line()
        return web.json_response({"status": "ready", "detail": line})

    return [web.get("/healthz", healthz), web.get("/readyz", readyz)]


class HttpServer:
    def __init__(self, ctx: HttpContext) -> None:
        self.ctx = ctx
        self.app = web.Application(client_max_size=MAX_BODY)
        self.runner: web.AppRunner | None = None
        self.url = ""

    def mount(self) -> None:
        from . import metrics, rest, ui

        self.app.add_routes(health_routes(self.ctx))
        if self.ctx.services.http is not None:  # the MCP gateway's /mcp
            self.ctx.services.http.mount(self.app)
        rest.setup(self.app, self.ctx)
        metrics.setup(self.app, self.ctx)
        ui.setup(self.app, self.ctx)

    async def start(self) -> None:
        listen = self.ctx.settings.listen
        assert listen is not None
        tls = tls_context(self.ctx.settings)
        self.mount()
        # a connection that has not sent a whole request within idle_timeout is closed
        # (aiohttp's keep-alive timer runs from the connection's start); a request's head
        # is bounded by aiohttp's parser: lines of 8190 bytes, 128 headers. A client that
        # goes away cancels its handler, as on the control socket: a stream's slot is
        # free when the kernel says the connection closed, not at the next write to it
        self.runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True,
                                    keepalive_timeout=self.ctx.settings.idle_timeout,
                                    max_line_size=8190, max_field_size=8190,
                                    max_headers=128)
        await self.runner.setup()
        site: Any
        if listen.startswith("unix:"):
            path = listen.removeprefix("unix:")
            site = web.UnixSite(self.runner, path, ssl_context=tls)
            self.url = f"http+unix://{path}"
        else:
            host, _, port = listen.rpartition(":")
            host = host.strip("[]")
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, int(port)))
            bound = sock.getsockname()[1]
            site = web.SockSite(self.runner, sock, ssl_context=tls)
            shown = host if ":" not in host else f"[{host}]"
            self.url = f"{'https' if tls else 'http'}://{shown}:{bound}"
        await site.start()
        self.ctx.url = self.url

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
