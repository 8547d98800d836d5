# ruff: noqa: F405 - the results are corral.results', named by the methods
"""Who may call: the HTTP API's tokens, the dashboard's login links."""

from __future__ import annotations

from ..results import *  # noqa: F403
from .declaration import Params, method, rest


class TokenCreated(TokenInfo):
    """`corral token create --json`: the secret, shown this once."""

    token: str


@method("tokens.create", result=TokenCreated, scope="admin", mutating=True, seen=None,
        cli="token create", routes=(
    rest("POST", "/tokens", "Create a token (its secret shown once)",
         body=("name", "scopes", "agents", "expires_in")),
))
class TokensCreate(Params):
    """Create a bearer token for the HTTP API with scopes, optionally limited to agents
    whose names match a glob and to a lifetime; its secret is answered once and only its
    hash is kept."""

    name: str
    scopes: list[str]
    agents: str | None = None
    expires_in: float | None = None  # seconds from now
    tenant: str | None = None  # a tenant's token: it sees that tenant's objects only


@method("tokens.list", result=TokenList, scope="admin", seen=None, cli="token list", routes=(
    rest("GET", "/tokens", "The API's tokens"),
))
class TokensList(Params):
    """The HTTP API's tokens: name, scopes, agent glob, created, expires."""


@method("tokens.revoke", result=TokenInfo, scope="admin", mutating=True, seen=None,
        cli="token revoke", routes=(
    rest("DELETE", "/tokens/{name}", "Revoke a token"),
))
class TokensRevoke(Params):
    """Revoke a token: a request presenting it is refused from now on."""

    name: str


@method("ui.login", result=UiLoginResult, scope="admin", mutating=True, seen="unnamed",
        cli="ui", routes=(
    rest("POST", "/ui/login", "A one-time link that logs a browser in to the "
         "dashboard as this token (its tenant, agents and scopes)"),
))
class UiLogin(Params):
    """A one-time link that logs a browser in to the dashboard (/ui) with the caller's
    scopes: it works once, within a minute."""
