"""A remote MCP server for the tests, on the official SDK (mcp 2.x): Streamable HTTP
(optionally with an event store, so streams resume) or the legacy HTTP+SSE transport.

    python http_mcp_server.py streamable-http|sse [--resumable] [--json] [--token T]
                              [--idle-timeout S] [--port P] [--legacy]

Binds 127.0.0.1 (port 0 unless --port), prints `port N` on stdout, then serves.
"""
from __future__ import annotations

from tests.quietimports import collector_off

with collector_off(freeze=True):
    import argparse
    import asyncio
    import base64
    import hashlib
    import itertools
    import json
    import secrets
    import socket
    import sys
    from typing import Any
    from urllib.parse import urlencode

    import uvicorn
    from mcp.server import MCPServer
    from mcp.server.mcpserver import Context
    from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
    from mcp.server.transport_security import TransportSecuritySettings
    from mcp.types import JSONRPCMessage
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

server = MCPServer("remote")
_counter = itertools.count(1)


@server.tool()
def echo(text: str) -> str:
    """Say it back."""
    return text


@server.tool()
def add(a: int, b: int) -> int:
    """The sum of two integers."""
    return a + b


@server.tool()
async def resumed(ctx: Context) -> str:
    """Closes its response stream before answering: the client must resume (GET with
    Last-Event-ID) to get the answer."""
    await ctx.report_progress(1, 2)
    await ctx.close_sse_stream()
    await asyncio.sleep(0.3)
    await ctx.report_progress(2, 2)
    return "answer after the stream was closed"


@server.tool()
def count() -> int:
    """A number that goes up with every call (which process answered, and how often)."""
    return next(_counter)


@server.custom_route("/forget-sessions", methods=["POST"])
async def forget_sessions(request: Request) -> Response:
    """Ends every session as an expiry would: their ids answer 404 from now on."""
    manager = server.session_manager
    sessions = list(manager._server_instances.items())
    for sid, transport in sessions:
        await manager._discard_session(sid, transport)
    return PlainTextResponse(f"forgot {len(sessions)}")


class MemoryEvents(EventStore):
    """Every event kept in memory, numbered; replay is whatever came after on its stream."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, JSONRPCMessage | None]] = []

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        event_id = str(len(self.events) + 1)
        self.events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback
                                  ) -> str | None:
        found = [i for i, (eid, _, _) in enumerate(self.events) if eid == last_event_id]
        if not found:
            return None
        stream = self.events[found[0]][1]
        for eid, sid, msg in self.events[found[0] + 1:]:
            if sid == stream and msg is not None:
                await send_callback(EventMessage(msg, eid))
        return stream


class LegacyOnly:
    """ASGI middleware: a 2025-11-25 server, as the SDK 1.x ones are: `server/discover` is
    a method it does not have (the SDK 2.x below would answer it with 2026-07-28)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        parts = []
        while True:  # the body, read whole, then handed on as it came
            msg = await receive()
            parts.append(msg)
            if msg["type"] != "http.request" or not msg.get("more_body"):
                break
        body = b"".join(m.get("body", b"") for m in parts)
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        if isinstance(request, dict) and request.get("method") == "server/discover":
            answer = json.dumps({"jsonrpc": "2.0", "id": request.get("id"), "error": {
                "code": -32601, "message": "Method not found"}}).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": answer})
            return
        replay = iter(parts)

        async def again() -> Any:
            return next(replay, None) or await receive()

        await self.app(scope, again, send)


class BearerOnly:
    """ASGI middleware: 401 unless the request carries `Authorization: Bearer TOKEN`."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") \
                != self.expected:
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"bad token"})
            return
        await self.app(scope, receive, send)


class MiniAuthServer:
    """An OAuth 2.1 authorization server just big enough for `corral mcp login`: metadata,
    dynamic registration, an authorization endpoint that approves at once (PKCE S256
    checked), tokens that live `lifetime` seconds, refresh; and the resource's metadata.
    Also the ASGI middleware that guards /mcp with those tokens."""

    def __init__(self, app: Any, base: str, lifetime: int) -> None:
        self.app = app
        self.base = base
        self.lifetime = lifetime
        self.clients: dict[str, list[str]] = {}
        self.codes: dict[str, tuple[str, str]] = {}  # code -> (challenge, redirect)
        self.access: set[str] = set()
        self.refresh: set[str] = set()
        self.refreshes = 0
        self.scopes: list[str | None] = []  # each token request's scope

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        route = {"/.well-known/oauth-protected-resource/mcp": self.prm,
                 "/.well-known/oauth-authorization-server": self.metadata,
                 "/register": self.register, "/authorize": self.authorize,
                 "/token": self.token, "/oauth-stats": self.stats}.get(scope["path"])
        if route is not None:
            response = await route(request)
        elif request.headers.get("authorization", "").removeprefix("Bearer ") \
                not in self.access:
            response = PlainTextResponse("unauthorized", 401, headers={
                "WWW-Authenticate": f'Bearer resource_metadata="{self.base}/.well-known/'
                                    'oauth-protected-resource/mcp"'})
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

    async def prm(self, request: Request) -> Response:
        return JSONResponse({"resource": f"{self.base}/mcp",
                             "authorization_servers": [self.base]})

    async def metadata(self, request: Request) -> Response:
        b = self.base
        return JSONResponse({
            "issuer": b, "authorization_endpoint": f"{b}/authorize",
            "token_endpoint": f"{b}/token", "registration_endpoint": f"{b}/register",
            "response_types_supported": ["code"], "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_basic"]})

    async def register(self, request: Request) -> Response:
        body = await request.json()
        client_id = f"client-{len(self.clients) + 1}"
        self.clients[client_id] = list(body["redirect_uris"])
        return JSONResponse({"client_id": client_id, "token_endpoint_auth_method": "none",
                             "redirect_uris": body["redirect_uris"]}, 201)

    async def authorize(self, request: Request) -> Response:
        q = request.query_params
        if q.get("redirect_uri") not in self.clients.get(q.get("client_id", ""), []) \
                or q.get("code_challenge_method") != "S256":
            return PlainTextResponse("bad authorization request", 400)
        code = secrets.token_urlsafe(8)
        self.codes[code] = (q["code_challenge"], q["redirect_uri"])
        query = urlencode({"code": code, "state": q["state"]})
        return RedirectResponse(f"{q['redirect_uri']}?{query}", 302)

    async def token(self, request: Request) -> Response:
        form = await request.form()
        scope = form.get("scope")
        self.scopes.append(scope if isinstance(scope, str) else None)
        if form.get("grant_type") == "authorization_code":
            challenge, redirect = self.codes.pop(str(form.get("code")), ("", ""))
            verifier = str(form.get("code_verifier", "")).encode()
            expected = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=")
            if not challenge or expected.decode() != challenge \
                    or form.get("redirect_uri") != redirect:
                return JSONResponse({"error": "invalid_grant"}, 400)
        elif form.get("grant_type") == "client_credentials":
            expected = "Basic " + base64.b64encode(b"machine:s3cret").decode()
            if request.headers.get("authorization") != expected:
                return JSONResponse({"error": "invalid_client"}, 401)
        elif form.get("grant_type") == "refresh_token":
            if form.get("refresh_token") not in self.refresh:
                return JSONResponse({"error": "invalid_grant"}, 400)
            self.refreshes += 1
        else:
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        access, refresh = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        self.access.add(access)
        self.refresh.add(refresh)
        return JSONResponse({"access_token": access, "token_type": "Bearer",
                             "expires_in": self.lifetime, "refresh_token": refresh})

    async def stats(self, request: Request) -> Response:
        return JSONResponse({"refreshes": self.refreshes, "clients": len(self.clients),
                             "scopes": self.scopes})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("transport", choices=["streamable-http", "sse"])
    p.add_argument("--resumable", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--token")
    p.add_argument("--oauth-lifetime", type=int, help="guard /mcp with OAuth tokens that "
                   "live this many seconds")
    p.add_argument("--idle-timeout", type=float)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--legacy", action="store_true", help="speak 2025-11-25 only")
    args = p.parse_args()
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    if args.transport == "sse":
        app: Any = server.sse_app(transport_security=security)
    else:
        app = server.streamable_http_app(
            json_response=args.json, transport_security=security,
            event_store=MemoryEvents() if args.resumable else None,
            retry_interval=100 if args.resumable else None,
            session_idle_timeout=args.idle_timeout)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(128)  # before the port is told: a client may connect at once
    if args.legacy:
        app = LegacyOnly(app)
    if args.token:
        app = BearerOnly(app, args.token)
    if args.oauth_lifetime:
        app = MiniAuthServer(app, f"http://127.0.0.1:{sock.getsockname()[1]}",
                             args.oauth_lifetime)
    print(f"port {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))


if __name__ == "__main__":
    sys.exit(main())
