"""OAuth 2.1 for remote MCP servers, as the MCP authorization spec (2025-11-25) describes
(docs/mcp.md): discovery from the server's 401, client registration, the code grant with
PKCE, client credentials or an ID-JAG. A 403 `insufficient_scope` asks once for the union
of scopes, never in a loop. Tokens are kept in the state directory, mode 0600.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import aiohttp
import msgspec

from ..statefiles import make_dir, replace_file
from .http import Auth, HttpError

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
REFRESH_MARGIN = 60.0  # seconds before expiry at which a token is refreshed
JSON_ACCEPT = {"Accept": "application/json"}


class Redirect(msgspec.Struct, frozen=True):
    """What the authorization server's redirect carried back: the code, and the issuer
    it names itself by (RFC 9207's `iss`), when it names one."""

    code: str
    iss: str | None = None


# given the authorization URL, the redirect URI and the state: what the redirect carried
Authorize = Callable[[str, str, str], Awaitable[Redirect]]


class OAuthSettings(msgspec.Struct, kw_only=True):
    client_id: str | None = None  # pre-registered; else CIMD or dynamic registration
    client_secret: str | None = None
    client_metadata_url: str | None = None  # a client id metadata document (SEP-991)
    scopes: list[str] = []  # default: what the server asks for
    grant: Literal["authorization_code", "client_credentials", "id_jag"] = \
        "authorization_code"
    # "id_jag" (enterprise-managed authorization, SEP-990): an ID token from the
    # enterprise's identity provider is exchanged there for an identity assertion grant,
    # which the authorization server takes as a JWT bearer grant
    idp_token_endpoint: str | None = None
    idp_id_token: str | None = None
    idp_client_id: str | None = None
    private_key_pem: str | None = None  # client credentials with private_key_jwt
    signing_algorithm: str | None = None
    redirect_uri: str = "http://127.0.0.1/callback"


class OAuthClient(msgspec.Struct, kw_only=True):
    client_id: str
    client_secret: str | None = None
    auth_method: str = "none"  # token endpoint auth: none | client_secret_basic | _post
    redirect_uri: str | None = None


class OAuthTokens(msgspec.Struct, kw_only=True):
    access_token: str
    token_type: str = "Bearer"
    refresh_token: str | None = None
    expires_at: float | None = None  # wall clock
    scope: str | None = None


class TokenFile(msgspec.Struct, kw_only=True):
    """The token file: what a daemon needs to use and refresh the tokens."""

    server_url: str
    resource: str | None = None
    issuer: str | None = None
    token_endpoint: str | None = None
    client: OAuthClient | None = None
    tokens: OAuthTokens | None = None


class Challenge(msgspec.Struct):
    """The parameters of a `WWW-Authenticate: Bearer ...` header."""

    resource_metadata: str | None = None
    scope: str | None = None
    error: str | None = None


_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str | None) -> Challenge:
    values = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in _PARAM.finditer(header or "")}
    return Challenge(values.get("resource_metadata"), values.get("scope"),
                     values.get("error"))


class OAuth(Auth):
    """The OAuth side of one remote server's connections (an `Auth` for HttpTransport)."""

    def __init__(self, name: str, server_url: str, settings: OAuthSettings, path: Path, *,
                 authorize: Authorize | None = None) -> None:
        self.name = name
        self.server_url = server_url
        self.settings = settings
        self.path = path
        self.authorize = authorize  # None in the daemon: there, login is an operator's act
        self._mtime: float | None = None
        self.stored = TokenFile(server_url=server_url)
        self._lock = asyncio.Lock()
        self._requested: set[str] | None = None  # the scopes of the last authorization
        self.load()

    @classmethod
    def for_server(cls, name: str, url: str, settings: OAuthSettings, state_dir: Path,
                   authorize: Authorize | None = None) -> OAuth:
        return cls(name, url, settings, state_dir / "oauth" / f"{name}.json", authorize=authorize)

    # -- the token file ---------------------------------------------------------------------
    def load(self) -> None:
        try:
            st = self.path.stat()
            if st.st_mtime == self._mtime:
                return
            stored = msgspec.json.decode(self.path.read_bytes(), type=TokenFile)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return
        self._mtime = st.st_mtime
        if stored.server_url == self.server_url:
            self.stored = stored

    def save(self) -> None:
        """Atomically, mode 0600 from the start (the tokens are never readable by others).
        A configured client secret is not written: it stays in the config's ${VARIABLE}."""
        make_dir(self.path.parent)
        stored = self.stored
        if stored.client is not None and stored.client.client_id == self.settings.client_id:
            stored = msgspec.structs.replace(
                stored, client=msgspec.structs.replace(stored.client, client_secret=None))
        replace_file(self.path, msgspec.json.encode(stored), secret=True)
        self._mtime = self.path.stat().st_mtime

    # -- Auth -------------------------------------------------------------------------------
    async def headers(self) -> dict[str, str]:
        self.load()  # `corral mcp login` may have written new tokens
        tokens = self.stored.tokens
        if tokens is None:
            return {}
        if (tokens.expires_at is not None and tokens.refresh_token
                and tokens.expires_at - time.time() < REFRESH_MARGIN):
            async with self._lock:
                if self.stored.tokens is tokens:
                    # on failure the old token is tried; a 401 then says what to do
                    with contextlib.suppress(HttpError):
                        await self._refresh(tokens)
        tokens = self.stored.tokens
        return {"Authorization": f"Bearer {tokens.access_token}"} if tokens else {}

    async def on_unauthorized(self, resp: aiohttp.ClientResponse) -> bool:
        challenge = parse_challenge(resp.headers.get("WWW-Authenticate"))
        sent = resp.request_info.headers.get("Authorization")
        await resp.read()
        async with self._lock:
            current = self.stored.tokens
            if current is not None and sent != f"Bearer {current.access_token}":
                return True  # new tokens came while this request was out: try them
            if resp.status == 403:
                if challenge.error != "insufficient_scope":
                    return False
                wanted = set((challenge.scope or "").split()) | (self._requested or set())
                if self._requested is not None and wanted <= self._requested:
                    return False  # asking again for the same scopes would loop
                challenge.scope = " ".join(sorted(wanted)) or None
            elif self.stored.tokens is not None and self.stored.tokens.refresh_token:
                # (a refresh token no good either: authorized anew)
                with contextlib.suppress(HttpError):
                    await self._refresh(self.stored.tokens)
                    return True
            await self.obtain(challenge)
            return True

    # -- the flows --------------------------------------------------------------------------
    async def obtain(self, challenge: Challenge) -> None:
        """Discover, register, and get tokens by the configured grant."""
        if self.settings.grant == "authorization_code" and self.authorize is None:
            raise HttpError(f"MCP server {self.name} needs authorization: run "
                            f"`corral mcp login {self.name}`")
        async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=30)) as http:
            prm = await self._resource_metadata(http, challenge)
            if prm is not None:
                resource = self._check_resource(prm)
                servers = prm.get("authorization_servers") or []
                if not servers:
                    raise HttpError(f"{self.name}: the protected-resource metadata names no "
                                    "authorization server")
                issuer = str(servers[0])
            else:  # 2025-03-26: the MCP server's origin is the authorization server
                resource = None
                issuer = _origin(self.server_url)
            meta = await _as_metadata(http, issuer, legacy=prm is None)
            issuer = str(meta.setdefault("issuer", issuer))
            scopes = self._scopes(challenge, prm, meta)
            client = await self._client(http, meta, issuer)
            if self.settings.grant == "client_credentials":
                form = {"grant_type": "client_credentials"}
            elif self.settings.grant == "id_jag":
                form = {"grant_type": JWT_BEARER,
                        "assertion": await self._id_jag(http, meta, issuer, resource)}
                scopes = []
            else:
                form = await self._authorization_code(meta, client, scopes, resource)
            if scopes:
                form.setdefault("scope", " ".join(scopes))
            if resource:
                form["resource"] = resource
            token_endpoint = str(meta["token_endpoint"])
            tokens = await _token_request(http, token_endpoint, client, form,
                                          self.settings, issuer)
        self._requested = set(scopes)
        self.stored = TokenFile(server_url=self.server_url, resource=resource, issuer=issuer,
                                token_endpoint=token_endpoint, client=client, tokens=tokens)
        self.save()

    async def _id_jag(self, http: aiohttp.ClientSession, meta: dict[str, Any], issuer: str,
                      resource: str | None) -> str:
        """RFC 8693 token exchange at the identity provider: ID token -> ID-JAG."""
        s = self.settings
        if not (s.idp_token_endpoint and s.idp_id_token):
            raise HttpError(f"{self.name}: enterprise-managed authorization needs the "
                            "identity provider's token endpoint and an ID token")
        form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                "requested_token_type": "urn:ietf:params:oauth:token-type:id-jag",
                "audience": str(meta.get("issuer") or issuer),
                "subject_token": s.idp_id_token,
                "subject_token_type": "urn:ietf:params:oauth:token-type:id_token"}
        if resource:
            form["resource"] = resource
        if s.idp_client_id:
            form["client_id"] = s.idp_client_id
        data = await _post_form(http, s.idp_token_endpoint, form, JSON_ACCEPT,
                                "token exchange")
        return str(data["access_token"])

    async def _refresh(self, tokens: OAuthTokens) -> None:
        st = self.stored
        if not tokens.refresh_token or st.token_endpoint is None or st.client is None:
            raise HttpError(f"{self.name}: nothing to refresh the token with")
        form = {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token}
        if st.resource:
            form["resource"] = st.resource
        client = st.client
        if client.client_id == self.settings.client_id and client.client_secret is None:
            client = msgspec.structs.replace(client, client_secret=self.settings.client_secret)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            new = await _token_request(http, st.token_endpoint, client, form,
                                       self.settings, st.issuer or st.token_endpoint)
        if new.refresh_token is None:  # the server may keep the old one valid
            new.refresh_token = tokens.refresh_token
        st.tokens = new
        self.save()

    async def _resource_metadata(self, http: aiohttp.ClientSession, challenge: Challenge
                                 ) -> dict[str, Any] | None:
        parts = urlsplit(self.server_url)
        origin = _origin(self.server_url)
        candidates = []
        if challenge.resource_metadata:
            candidates.append(challenge.resource_metadata)
        path = parts.path.rstrip("/")
        if path:
            candidates.append(f"{origin}/.well-known/oauth-protected-resource{path}")
        candidates.append(f"{origin}/.well-known/oauth-protected-resource")
        for url in candidates:
            found = await _get_json(http, url)
            if found is not None:
                return found
        return None

    def _check_resource(self, prm: dict[str, Any]) -> str:
        """RFC 8707/9728: the metadata must be about this server, or a token for it could
        be handed to someone else."""
        resource = prm.get("resource")
        if not isinstance(resource, str):
            raise HttpError(f"{self.name}: the protected-resource metadata has no resource")
        if not _covers(resource, self.server_url):
            raise HttpError(
                f"{self.name}: the protected-resource metadata is for {resource}, not "
                f"{self.server_url}: refusing to authorize")
        return resource

    def _scopes(self, challenge: Challenge, prm: dict[str, Any] | None,
                meta: dict[str, Any]) -> list[str]:
        if self.settings.scopes:
            scopes = list(self.settings.scopes)
        elif challenge.scope:
            scopes = challenge.scope.split()
        elif prm is not None and isinstance(prm.get("scopes_supported"), list):
            scopes = [str(s) for s in prm["scopes_supported"]]
        else:
            return []
        offered = meta.get("scopes_supported")
        if (self.settings.grant == "authorization_code" and isinstance(offered, list)
                and "offline_access" in offered and "offline_access" not in scopes):
            scopes.append("offline_access")  # so that a refresh token is issued
        return scopes

    async def _client(self, http: aiohttp.ClientSession, meta: dict[str, Any], issuer: str
                      ) -> OAuthClient:
        s = self.settings
        methods = meta.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        if s.client_id is not None:  # pre-registered
            if s.private_key_pem:
                method = "private_key_jwt"
            elif s.client_secret is None:
                method = "none"
            elif "client_secret_post" in methods and "client_secret_basic" not in methods:
                method = "client_secret_post"
            else:
                method = "client_secret_basic"
            return OAuthClient(client_id=s.client_id, client_secret=s.client_secret,
                               auth_method=method, redirect_uri=s.redirect_uri)
        if meta.get("client_id_metadata_document_supported") and s.client_metadata_url:
            return OAuthClient(client_id=s.client_metadata_url, auth_method="none",
                               redirect_uri=s.redirect_uri)
        old = self.stored.client
        # a registration is the authorization server's that made it: a server whose
        # metadata now names another one gets a registration there (SEP-2352)
        if old is not None and old.redirect_uri == s.redirect_uri \
                and self.stored.issuer == issuer:
            return old
        endpoint = meta.get("registration_endpoint")
        if not endpoint:
            raise HttpError(f"{self.name}: the authorization server offers no dynamic "
                            "client registration: set oauth_client_id")
        method = next((m for m in ("none", "client_secret_basic", "client_secret_post")
                       if m in methods), "client_secret_basic")
        body = {"client_name": "corral", "redirect_uris": [s.redirect_uri],
                "application_type": application_type(s.redirect_uri),
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"], "token_endpoint_auth_method": method}
        async with http.post(str(endpoint), json=body, headers=JSON_ACCEPT) as resp:
            if resp.status >= 400:
                raise HttpError(f"{self.name}: client registration at {endpoint} failed: "
                                f"HTTP {resp.status}: {await _snippet(resp)}")
            reg = await resp.json(content_type=None)
        secret = reg.get("client_secret")
        return OAuthClient(client_id=str(reg["client_id"]), client_secret=secret,
                           auth_method=str(reg.get("token_endpoint_auth_method")
                                           or ("client_secret_basic" if secret else "none")),
                           redirect_uri=s.redirect_uri)

    async def _authorization_code(self, meta: dict[str, Any], client: OAuthClient,
                                  scopes: list[str], resource: str | None
                                  ) -> dict[str, str]:
        assert self.authorize is not None
        methods = meta.get("code_challenge_methods_supported")
        if methods is not None and "S256" not in methods:
            raise HttpError(f"{self.name}: the authorization server does not support PKCE "
                            "with S256, which OAuth 2.1 requires")
        verifier = secrets.token_urlsafe(64)
        challenge = base64.urlsafe_b64encode(
            hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        state = secrets.token_urlsafe(24)
        redirect = client.redirect_uri or self.settings.redirect_uri
        query = {"response_type": "code", "client_id": client.client_id,
                 "redirect_uri": redirect, "code_challenge": challenge,
                 "code_challenge_method": "S256", "state": state}
        if scopes:
            query["scope"] = " ".join(scopes)
        if resource:
            query["resource"] = resource
        endpoint = str(meta["authorization_endpoint"])
        sep = "&" if "?" in endpoint else "?"
        got = await self.authorize(f"{endpoint}{sep}{urlencode(query)}", redirect, state)
        self._check_iss(meta, got)
        return {"grant_type": "authorization_code", "code": got.code, "redirect_uri": redirect,
                "code_verifier": verifier}

    def _check_iss(self, meta: dict[str, Any], got: Redirect) -> None:
        """RFC 9207: a redirect must name the issuer asked, as it is, or none where the
        server does not say it always names itself: else a code from another
        authorization server (a mix-up attack) would be redeemed here."""
        issuer = meta.get("issuer")
        if got.iss is not None and got.iss != issuer:
            raise HttpError(f"{self.name}: the authorization response names issuer "
                            f"{got.iss!r}, not {issuer!r}: the code is refused")
        if got.iss is None and meta.get("authorization_response_iss_parameter_supported"):
            raise HttpError(f"{self.name}: the authorization response names no issuer, "
                            f"although {issuer} says it always does: the code is refused")


def application_type(redirect_uri: str) -> str:
    """OpenID registration's application_type (SEP-837): "native" for a redirect to this
    machine's loopback or to a private scheme, else "web"."""
    parts = urlsplit(redirect_uri)
    return "native" if parts.scheme not in ("http", "https") \
        or parts.hostname in ("localhost", "127.0.0.1", "::1") else "web"


def _origin(url: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "", "", ""))


def _covers(resource: str, url: str) -> bool:
    """The same origin, and a path that is the URL's or a parent of it."""
    r, u = urlsplit(resource), urlsplit(url)
    if (r.scheme.lower(), r.netloc.lower()) != (u.scheme.lower(), u.netloc.lower()):
        return False
    rpath, upath = r.path.rstrip("/"), u.path.rstrip("/")
    return upath == rpath or upath.startswith(rpath + "/")


async def _get_json(http: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    try:
        async with http.get(url, headers=JSON_ACCEPT) as resp:
            if resp.status != 200:
                return None
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, ValueError):
        return None
    return data if isinstance(data, dict) else None


async def _as_metadata(http: aiohttp.ClientSession, issuer: str, *, legacy: bool
                       ) -> dict[str, Any]:
    """RFC 8414 and OpenID Discovery, in the order the MCP spec gives."""
    origin = _origin(issuer)
    path = urlsplit(issuer).path.rstrip("/")
    candidates = [f"{origin}/.well-known/oauth-authorization-server{path}",
                  f"{origin}/.well-known/openid-configuration{path}"]
    if path:
        candidates.append(f"{origin}{path}/.well-known/openid-configuration")
    for url in candidates:
        found = await _get_json(http, url)
        if found is not None and found.get("token_endpoint"):
            named = found.get("issuer")
            if named is not None and named != issuer and not legacy:
                # RFC 8414 3.3: metadata of another issuer than the one asked is not used
                raise HttpError(f"the authorization server metadata at {url} names issuer "
                                f"{named!r}, not {issuer!r}: refusing to use it")
            return found
    if legacy:  # 2025-03-26: default endpoints at the server's origin
        return {"authorization_endpoint": f"{origin}/authorize",
                "token_endpoint": f"{origin}/token", "registration_endpoint":
                f"{origin}/register"}
    raise HttpError(f"no authorization server metadata for {issuer} (tried "
                    f"{', '.join(candidates)})")


async def _token_request(http: aiohttp.ClientSession, endpoint: str, client: OAuthClient,
                         form: dict[str, str], settings: OAuthSettings, issuer: str
                         ) -> OAuthTokens:
    headers = dict(JSON_ACCEPT)
    form = dict(form)
    method = client.auth_method
    if method == "client_secret_basic" and client.client_secret is not None:
        # RFC 6749 2.3.1: each part form-urlencoded before base64
        pair = f"{quote(client.client_id, safe='')}:{quote(client.client_secret, safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    else:
        form["client_id"] = client.client_id
        if method == "client_secret_post" and client.client_secret is not None:
            form["client_secret"] = client.client_secret
        elif method == "private_key_jwt" and settings.private_key_pem:
            form["client_assertion_type"] = \
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            # RFC 7523bis: the audience is the authorization server's issuer identifier
            form["client_assertion"] = _client_assertion(client.client_id, issuer, settings)
    data = await _post_form(http, endpoint, form, headers, "token request")
    expires_in = data.get("expires_in")
    return OAuthTokens(access_token=data["access_token"],
                       token_type=str(data.get("token_type") or "Bearer"),
                       refresh_token=data.get("refresh_token"),
                       expires_at=time.time() + float(expires_in)
                       if isinstance(expires_in, int | float) else None,
                       scope=data.get("scope"))


async def _post_form(http: aiohttp.ClientSession, endpoint: str, form: dict[str, str],
                     headers: dict[str, str], what: str) -> dict[str, Any]:
    """A token endpoint's answer, which must carry an access_token."""
    async with http.post(endpoint, data=form, headers=headers) as resp:
        if resp.status >= 400:
            raise HttpError(f"{what} to {endpoint} failed: HTTP {resp.status}: "
                            f"{await _snippet(resp)}")
        data = await resp.json(content_type=None)
    if not isinstance(data, dict) or not isinstance(data.get("access_token"), str):
        raise HttpError(f"{what} to {endpoint}: no access_token in the answer")
    return data


def _client_assertion(client_id: str, audience: str, settings: OAuthSettings) -> str:
    """A private_key_jwt client assertion (RFC 7523), signed with the configured key.
    PyJWT (with cryptography) is needed only here, by whoever configures such a key."""
    import jwt

    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": audience, "iat": now,
              "exp": now + 300, "jti": secrets.token_urlsafe(16)}
    assert settings.private_key_pem is not None
    return str(jwt.encode(claims, settings.private_key_pem,
                          algorithm=settings.signing_algorithm or "ES256"))


async def _snippet(resp: aiohttp.ClientResponse) -> str:
    return (await resp.content.read(300)).decode("utf-8", "replace").strip()
