"""One aiohttp runner, a site per listen address; the parts mounted on one application."""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ...supervisor.addresses import loopback
from ...supervisor.config import ConfigError, HttpSettings
from ...text import clip, one_line
from ...throttle import Throttle
from ..models.lean import MAX_FIELD, MAX_HEADERS, HttpConnection, LeanConnection, Posts
from .context import HttpContext
from .route import MAX_BODY

if TYPE_CHECKING:
    from ..handoff import Drain, Listeners


def tls_context(settings: HttpSettings) -> ssl.SSLContext | None:
    """HTTPS with tls_cert and tls_key, plain HTTP with neither; a non-loopback address
    needs TLS or `allow_insecure_remote = true`. Raises ConfigError."""
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
        # a daemon that drains takes no new work (503, as a load balancer expects); its
        # own faults (an extra not serving) are told with the 200 of a daemon that runs
        s = ctx.services
        line, problems = s.status_line(), s.notices()
        if s.draining() is not None:
            return web.json_response({"status": "draining", "detail": line,
                                      "problems": problems}, status=503)
        return web.json_response({"status": "ready", "detail": line, "problems": problems})

    return [web.get("/healthz", healthz), web.get("/readyz", readyz)]


log = logging.getLogger("corral.http")


class Refusals:
    """Requests aiohttp refused before any route saw them, counted, and told in one line
    a Throttle's interval at most: aiohttp's own traceback for each one was a journal any
    client could fill."""

    def __init__(self, counts: dict[tuple[str, str], int]) -> None:
        self.counts = counts
        self.told = Throttle(partial(log.warning, "%s"))

    def refused(self, status: int, remote: str | None, exc: BaseException) -> None:
        key = ("refused", str(status))
        self.counts[key] = self.counts.get(key, 0) + 1
        self.told(f"refused a request from {remote or '?'}: {status}, "
                  f"{clip(one_line(str(exc)), 200)}")


class _Server(web.Server):
    refusals: Refusals
    connection: Callable[..., HttpConnection]

    def __call__(self) -> RequestHandler:
        return self.connection(self, loop=self._loop, **self._kwargs)


class HttpRunner(web.AppRunner):
    """aiohttp's runner, its connections made by `connection`: an HttpConnection's kind
    (the [http] and gateway sites' read their POSTs of the common shape lean: models/lean.py)."""

    def __init__(self, app: web.Application, refusals: Refusals,
                 connection: Callable[..., HttpConnection] = HttpConnection, **kwargs: Any
                 ) -> None:
        super().__init__(app, max_line_size=MAX_FIELD, max_field_size=MAX_FIELD,
                         max_headers=MAX_HEADERS, **kwargs)
        self.refusals, self.connection = refusals, connection

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # the application's own server, making Connections
        assert isinstance(server, _Server)
        server.refusals, server.connection = self.refusals, self.connection
        return server


def listening_fd(site: web.BaseSite) -> int | None:
    sockets = getattr(getattr(site, "_server", None), "sockets", None) or []
    return sockets[0].fileno() if sockets else None


def drain(runner: web.BaseRunner, site: web.BaseSite, tls: ssl.SSLContext | None,
          served: Callable[[web.BaseSite], None]) -> Drain:
    """The drain of a site for `corral upgrade`: it stops accepting (its socket kept open
    by a dup for the next image) and each open connection is closed after its answer,
    which nothing waits for: a stream would hold the exec. `served`: told of the site
    that serves again if nothing is handed over."""

    async def go() -> tuple[int, Callable[[], Awaitable[None]]]:
        fd = listening_fd(site)
        assert fd is not None
        kept = socket.socket(fileno=os.dup(fd))
        await site.stop()
        if runner.server is not None:
            for conn in runner.server.connections:
                # (aiohttp's `close` leaves an idle keep-alive connection open, and its
                # `shutdown` waits out its whole timeout for one: whether a request is
                # being answered is its own attribute)
                if getattr(conn, "_request_in_progress", True):
                    conn.close()
                else:
                    conn.force_close()

        async def back() -> None:
            again = web.SockSite(runner, kept, ssl_context=tls)
            await again.start()
            served(again)

        return kept.fileno(), back

    return go


def held_across_upgrade(listeners: Listeners, name: str, listen: str, runner: web.BaseRunner,
                        site: web.BaseSite, tls: ssl.SSLContext | None) -> None:
    """Tell `listeners` of a started site's socket (what `corral upgrade` hands over), with
    its drain; a site that serves again after a refused hand-over is told of anew."""
    fd = listening_fd(site)
    if fd is not None:
        listeners.serving(name, listen, fd, drain(
            runner, site, tls,
            lambda again: held_across_upgrade(listeners, name, listen, runner, again, tls)))


class HttpServer:
    def __init__(self, ctx: HttpContext, listeners: Listeners | None = None) -> None:
        self.ctx = ctx
        # where its socket is held across `corral upgrade`'s exec, or taken from
        self.listeners = listeners
        self.app = web.Application(client_max_size=MAX_BODY)
        self.runner: web.AppRunner | None = None
        self.url = ""
        self._tls: ssl.SSLContext | None = None
        self.posts: Posts = lambda path: None  # (mount's: the A2A door's)

    def mount(self) -> None:
        from ..a2a import routes as a2a
        from . import metrics, rest, ui

        self.app.add_routes(health_routes(self.ctx))
        if self.ctx.services.http is not None:  # the MCP gateway's /mcp
            self.ctx.services.http.mount(self.app)
        rest.setup(self.app, self.ctx)
        self.posts = a2a.setup(self.app, self.ctx).posts
        metrics.setup(self.app, self.ctx)
        ui.setup(self.app, self.ctx)

    async def start(self) -> None:
        listen = self.ctx.settings.listen
        assert listen is not None
        tls = self._tls = tls_context(self.ctx.settings)
        self.mount()
        # the keep-alive timer runs from a connection's start: one that has not sent a
        # whole request within idle_timeout is closed. A client that goes away cancels
        # its handler, so a stream's slot is free when the connection closes
        # (the A2A door's messages read lean: models/lean.py)
        self.runner = HttpRunner(self.app, Refusals(self.ctx.requests), partial(
            LeanConnection, models=None, posts=self.posts), access_log=None,
                                 handler_cancellation=True,
                                 keepalive_timeout=self.ctx.settings.idle_timeout)
        await self.runner.setup()
        site: Any
        # the socket of the image before `corral upgrade`, if it served this address
        inherited = self.listeners.take("http", listen) if self.listeners else None
        if listen.startswith("unix:"):
            path = listen.removeprefix("unix:")
            site = (web.SockSite(self.runner, inherited, ssl_context=tls) if inherited
                    else web.UnixSite(self.runner, path, ssl_context=tls))
            self.url = f"http+unix://{path}"
        else:
            host, _, port = listen.rpartition(":")
            host = host.strip("[]")
            sock = inherited or socket.socket(socket.AF_INET6 if ":" in host
                                              else socket.AF_INET)
            if inherited is None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((host, int(port)))
                except OSError:
                    sock.close()  # retried (daemon/extras.py): no socket left per attempt
                    raise
            bound = sock.getsockname()[1]
            site = web.SockSite(self.runner, sock, ssl_context=tls)
            shown = host if ":" not in host else f"[{host}]"
            self.url = f"{'https' if tls else 'http'}://{shown}:{bound}"
        await site.start()
        self.ctx.url = self.url
        if self.listeners is not None and self.ctx.settings.listen:
            held_across_upgrade(self.listeners, "http", self.ctx.settings.listen, self.runner,
                                site, self._tls)

    async def close(self) -> None:
        if self.listeners is not None:
            self.listeners.gone("http")
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
