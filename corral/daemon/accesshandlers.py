"""Who may call: the HTTP API's tokens created, listed and revoked, and the dashboard's
one-time login links (corral.methods.access)."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from .. import jsonrpc
from .. import methods as m
from ..jsonrpc import RpcError
from ..supervisor.quotas import Tenancy
from .api import Commands, by_name
from .caller import Caller, Channel
from .services import Services, Web
from .store import StateStore
from .tokens import Token, tokens_of


class AccessServices(msgspec.Struct, frozen=True):
    store: StateStore  # the tokens' table
    quotas: Tenancy  # the tenants there are: a token names one
    web: Web  # the dashboard's logins, once [http] serves it
    extras: Callable[[], list[m.ExtraStatus]]  # whether the HTTP server serves


COMMANDS: Commands[Services, AccessServices] = Commands(by_name(AccessServices))
implements = COMMANDS.implements


def _token_info(t: Token) -> m.TokenInfo:
    return m.TokenInfo(name=t.name, scopes=sorted(t.scopes), agents=t.agents,
                       created=t.created, expires=t.expires, tenant=t.tenant)


@implements(m.TokensCreate)
async def tokens_create(d: AccessServices, p: m.TokensCreate, caller: Caller, c: Channel
                        ) -> m.TokenCreated:
    if p.tenant is not None and not d.quotas.known(p.tenant):
        raise RpcError(jsonrpc.INVALID_PARAMS, d.quotas.unknown(f"token {p.name}",
                                                                     p.tenant))
    secret, t = await tokens_of(d.store).create(p.name, p.scopes, p.agents, p.expires_in,
                                                p.tenant)
    return m.TokenCreated(**msgspec.structs.asdict(_token_info(t)), token=secret)


@implements(m.TokensList)
async def tokens_list(d: AccessServices, p: m.TokensList, caller: Caller, c: Channel
                      ) -> m.TokenList:
    return m.TokenList(tokens=[_token_info(t) for t in tokens_of(d.store).list()])


@implements(m.TokensRevoke)
async def tokens_revoke(d: AccessServices, p: m.TokensRevoke, caller: Caller, c: Channel
                        ) -> m.TokenInfo:
    return _token_info(await tokens_of(d.store).revoke(p.name))


@implements(m.UiLogin)
async def ui_login(d: AccessServices, p: m.UiLogin, caller: Caller, c: Channel
                   ) -> m.UiLoginResult:
    ui = d.web.logins
    if ui is not None and not ui.url:
        # configured, but not serving (its port taken, as by another daemon's dashboard):
        # a link to its address would log in to whatever answers there
        down = next((e for e in d.extras() if e.name == "HTTP server" and not e.serving),
                    None)
        where = f" on {down.address}" if down else ""
        why = f" ({down.error})" if down and down.error else ""
        raise RpcError(jsonrpc.UNAVAILABLE, f"the dashboard's HTTP server{where} is not "
                       f"serving{why}; it is tried again with backoff: free that address, "
                       "or give [http] listen another and restart the daemon")
    if ui is None:
        raise RpcError(jsonrpc.CONFLICT, "the dashboard is served by the HTTP server, and "
                                         "this daemon has none: set [http] listen")
    code, expires = ui.issue(caller)
    path = f"/ui/login?code={code}"
    return m.UiLoginResult(code=code, path=path, url=ui.url + path, expires=expires)
