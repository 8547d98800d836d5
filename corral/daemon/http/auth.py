"""Who an HTTP request is: a bearer token of the state database (daemon/tokens.py), or
whatever another part of the server set up (the dashboard's session cookie). No caller is
exempt, loopback ones included."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from ... import jsonrpc
from ...jsonrpc import RpcError
from ..caller import Caller
from ..tokens import Tokens
from .context import HttpContext

NO_TOKEN = "unauthorized: no bearer token (send Authorization: Bearer <token>)"
BAD_TOKEN = "unauthorized: the bearer token is not valid (unknown, revoked or expired)"


def bearer(tokens: Tokens) -> Callable[[web.Request], Caller | None]:
    def authenticate(request: web.Request) -> Caller | None:
        header = request.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        token = tokens.authenticate(secret.strip())
        if token is None:
            raise RpcError(jsonrpc.UNAUTHORIZED, BAD_TOKEN)
        return Caller(via="http", token=token.name, scopes=token.scopes,
                      agents=token.agents, tenant=token.tenant, since=token.created)

    return authenticate


def authenticate(ctx: HttpContext, request: web.Request) -> Caller:
    for way in ctx.authenticators:
        caller = way(request)
        if caller is not None:
            return caller
    raise RpcError(jsonrpc.UNAUTHORIZED, NO_TOKEN)
