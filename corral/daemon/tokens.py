"""Bearer tokens of the HTTP API: random, shown once, kept as a hash (a fast one: a secret
of 256 bits of entropy leaves a slow hash nothing to protect). The table is read once into
memory; every change is committed before it is answered, so the memory and the database
never disagree about a revoked token.
"""

from __future__ import annotations

import hmac
import secrets
import time
import weakref
from typing import NamedTuple

import msgspec

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..supervisor.names import NAME_RE, RULE
from .api import scopes_of
from .sqlwrites import statement
from .store import StateStore
from .tokendigests import hash_token

PREFIX = "crl_"


class Token(msgspec.Struct, frozen=True):
    name: str
    scopes: frozenset[str]
    agents: str | None  # a glob the agent names it may see and touch must match
    created: float
    expires: float | None  # unix time, or None: never
    tenant: str | None = None  # whose objects alone it sees (None: every tenant's)

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


class TokenRevoked(NamedTuple):
    """A token was revoked, as it is: what it holds open ends (the HTTP server's streams,
    the dashboard's sessions)."""

    token: Token


class Tokens:
    """The tokens of one state database, in memory by hash; each revocation told on the
    store's stream as TokenRevoked."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.stream = store.stream
        self.by_hash: dict[str, Token] = {}
        self.hash_of: dict[str, str] = {}
        rows = store.db.execute(
            "SELECT name, hash, scopes, agents, created, expires, tenant FROM tokens")
        for name, hashed, scopes, agents, created, expires, tenant in rows:
            self._keep(hashed, Token(name, frozenset(msgspec.json.decode(scopes)), agents,
                                     created, expires, tenant))

    def _keep(self, hashed: str, token: Token) -> None:
        self.by_hash[hashed] = token
        self.hash_of[token.name] = hashed

    def authenticate(self, secret: str) -> Token | None:
        """The live token whose secret this is, or None."""
        if not secret.startswith(PREFIX):
            return None
        hashed = hash_token(secret)
        token = self.by_hash.get(hashed)
        # the dict lookup is not constant-time; comparing the found hash again is
        if token is None or not hmac.compare_digest(hashed, self.hash_of[token.name]):
            return None
        return None if token.expired(time.time()) else token

    async def create(self, name: str, scopes: list[str], agents: str | None,
                     expires_in: float | None, tenant: str | None = None
                     ) -> tuple[str, Token]:
        """A new token and its secret (the only time the secret exists outside the
        caller's hands)."""
        if not NAME_RE.fullmatch(name):
            raise RpcError(jsonrpc.INVALID_PARAMS, f"token name must be {RULE}")
        if not scopes:
            raise RpcError(jsonrpc.INVALID_PARAMS, "name at least one scope")
        with jsonrpc.invalid_params(ValueError):
            held = scopes_of(scopes)
        if agents is not None and not agents:
            raise RpcError(jsonrpc.INVALID_PARAMS, "an agents glob may not be empty")
        if expires_in is not None and expires_in <= 0:
            raise RpcError(jsonrpc.INVALID_PARAMS, "expires_in must be positive (seconds)")
        if name in self.hash_of:
            raise RpcError(jsonrpc.CONFLICT, f"token {name} exists (revoke it first)")
        secret = PREFIX + secrets.token_urlsafe(32)
        hashed = hash_token(secret)
        now = time.time()
        token = Token(name, held, agents, now,
                      now + expires_in if expires_in is not None else None, tenant)
        await self.store.commit([statement(
            "INSERT INTO tokens (name, hash, scopes, agents, created, expires, tenant) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", (name, hashed, msgspec.json.encode(
                sorted(held)).decode(), agents, now, token.expires, tenant))])
        if name in self.hash_of:  # created by a call that overtook this one's commit
            raise RpcError(jsonrpc.CONFLICT, f"token {name} exists (revoke it first)")
        self._keep(hashed, token)
        return secret, token

    def list(self) -> list[Token]:
        return sorted(self.by_hash.values(), key=lambda t: t.name)

    def named(self, name: str) -> Token | None:
        """The token of this name (expired or not), or None."""
        hashed = self.hash_of.get(name)
        return self.by_hash[hashed] if hashed is not None else None

    async def revoke(self, name: str) -> Token:
        hashed = self.hash_of.get(name)
        if hashed is None:
            raise jsonrpc.not_found("token", name)
        # refused at once, before the commit: a revoked token must not serve meanwhile
        token = self.by_hash.pop(hashed)
        del self.hash_of[name]
        self.stream.emit(TokenRevoked(token))
        try:
            await self.store.commit([statement("DELETE FROM tokens WHERE name = ?", (name,))])
        except BaseException:
            self._keep(hashed, token)
            raise
        return token


_OF: weakref.WeakKeyDictionary[StateStore, Tokens] = weakref.WeakKeyDictionary()


def tokens_of(store: StateStore) -> Tokens:
    """The one `Tokens` of a state database, made on first use."""
    tokens = _OF.get(store)
    if tokens is None:
        tokens = _OF[store] = Tokens(store)
    return tokens
