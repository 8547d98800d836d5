"""One aiohttp runner, a site per listen address; the parts mounted on one application."""

from __future__ import annotations

import socket
from typing import Any

from aiohttp import web

from .context import HttpContext


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
        self.app = web.Application()
        self.runner: web.AppRunner | None = None
        self.url = ""

    def mount(self) -> None:
        from . import metrics, rest, ui

        self.app.add_routes(health_routes(self.ctx))
        rest.setup(self.app, self.ctx)
        metrics.setup(self.app, self.ctx)
        ui.setup(self.app, self.ctx)

    async def start(self) -> None:
        listen = self.ctx.settings.listen
        assert listen is not None
        self.mount()
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site: Any
        if listen.startswith("unix:"):
            path = listen.removeprefix("unix:")
            site = web.UnixSite(self.runner, path)
            self.url = f"http+unix://{path}"
        else:
            host, _, port = listen.rpartition(":")
            host = host.strip("[]")
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, int(port)))
            bound = sock.getsockname()[1]
            site = web.SockSite(self.runner, sock)
            self.url = f"http://{host if ':' not in host else f'[{host}]'}:{bound}"
        await site.start()
        self.ctx.url = self.url

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
