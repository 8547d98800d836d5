"""An attacker's pass over the A2A door, the tenant table, the dashboard's sessions, the
MCP gateway's /mcp/NAME, the model gateway's keys and agent packages (docs/security.md,
session 19's section). Real daemons over real HTTP. A hole not yet closed is a strict xfail
that names it; one closed, a test of its refusal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl

from corral.daemon.a2a.routes import KEPT_CARDS, A2aRoutes
from corral.daemon.caller import Caller
from corral.daemon.http.ui import MAX_CODES, MAX_SESSIONS
from corral.daemon.tokens import tokens_of

from .daemon_harness import free_port, hello, in_process

CARD = "/a2a/{agent}/.well-known/agent-card.json"


# -- the agent card: a Host of the caller's own, each a card the daemon keeps -------------

@pytest.mark.deadline(120)
async def test_an_agent_cards_hosts_are_kept_within_a_bound(tmp_path: Path) -> None:
    """The attack: anyone who reaches an `[a2a] anonymous` agent (or holds a token that
    sees one agent) asks for its card, each time with another `Host`. The card names its
    URL from the Host asked (`http://HOST/a2a/AGENT`), and the door kept the day each
    card's bytes were first served (its Last-Modified) by their digest, for the daemon's
    life: one entry a Host, never let go, and the card's route is not rated (it takes no
    token of `[http] rate_per_minute`). The door keeps at most KEPT_CARDS, and still
    answers every card, its ETag revalidated."""
    port = free_port()
    toml = (f'[http]\nlisten = "127.0.0.1:{port}"\n\n'
            '[a2a]\nanonymous = ["hello"]\n')
    async with in_process(tmp_path, hello("hello"), toml) as d:
        routes: A2aRoutes = d.http_server.posts.__self__
        url = f"http://127.0.0.1:{port}{CARD.format(agent='hello')}"
        async with aiohttp.ClientSession() as http:
            for i in range(KEPT_CARDS + 64):
                host = f"h{i}.example:{port}"
                async with http.get(url, headers={"Host": host}) as r:
                    assert r.status == 200, await r.text()
                    card: dict[str, Any] = await r.json()
                    etag = r.headers["ETag"]
                assert card["supportedInterfaces"][0]["url"] == f"http://{host}/a2a/hello"
            assert len(routes.cards) == KEPT_CARDS
            # the last card is kept, and revalidated by its ETag
            async with http.get(url, headers={"Host": host, "If-None-Match": etag}) as r:
                assert r.status == 304, await r.text()


# -- the dashboard: a tenant's links and sessions, and everyone else's --------------------

TENANTS = '''
[tenants.acme]
[tenants.other]
'''


async def _link(http: aiohttp.ClientSession, base: str, secret: str) -> str:
    async with http.post(f"{base}/api/v1/ui/login", json={},
                         headers={"Authorization": f"Bearer {secret}"}) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["path"])


async def _follow(own: aiohttp.ClientSession, base: str, path: str) -> tuple[int, Any]:
    """A link followed by `own` (a browser: a cookie jar of its own): the session's look at
    /ui/session by the cookie the link set, its status and (when 200) its body."""
    async with own.get(base + path, allow_redirects=False) as r:
        assert r.status == 303, await r.text()
    async with own.get(f"{base}/ui/session") as r:
        return r.status, (await r.json()) if r.status == 200 else None


async def _session(http: aiohttp.ClientSession, base: str, path: str) -> int:
    """A link followed by a browser of its own: the status of its session's look."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as own:
        return (await _follow(own, base, path))[0]


@pytest.mark.deadline(120)
async def test_a_tenants_dashboard_links_end_no_other_tenants_link_or_session(
        tmp_path: Path) -> None:
    """The attack: tenant acme's admin (a dashboard of acme alone is its to open) asks
    for MAX_CODES links, and follows MAX_SESSIONS of them. The links and sessions were
    one store each, the oldest dropped past its bound whoever's it was: the operator's
    link (printed by `corral ui`, not yet opened) no longer logged in, and the operator's
    open dashboard and other tenant's were logged out. Each party's links and sessions
    (a tenant, the operator, a token's agent glob) are now bounded apart: a party past
    its bound drops its own oldest, never another's."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    toml = TENANTS + f'[http]\nlisten = "127.0.0.1:{port}"\nrate_per_minute = 0\n'
    async with in_process(tmp_path, hello("hello"), toml) as d:
        tokens = tokens_of(d.services.store)
        acme, _ = await tokens.create("acme-admin", ["admin"], None, None, "acme")
        other, _ = await tokens.create("other-admin", ["admin"], None, None, "other")
        operator = Caller(via="socket", uid=0)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as op:
            # the operator's dashboard, open; and the other tenant's
            async with op.get(base + (await d.dispatcher.call(operator, "ui.login")).path,
                              allow_redirects=False) as r:
                assert r.status == 303
            async with aiohttp.ClientSession() as http:
                others = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
                async with others:
                    async with others.get(base + await _link(http, base, other),
                                          allow_redirects=False) as r:
                        assert r.status == 303
                    # the operator's link, printed and not yet followed
                    waiting = (await d.dispatcher.call(operator, "ui.login")).path
                    # acme's flood: links it never follows, then sessions
                    for _ in range(MAX_CODES):
                        await _link(http, base, acme)
                    for _ in range(MAX_SESSIONS):
                        assert await _session(http, base, await _link(http, base, acme)) \
                            == 200
                    async with op.get(f"{base}/ui/session") as r:
                        assert r.status == 200, await r.text()
                    async with others.get(f"{base}/ui/session") as r:
                        assert r.status == 200, await r.text()
                    assert await _session(http, base, waiting) == 200


@pytest.mark.deadline(120)
async def test_a_dashboard_session_makes_no_session_that_outlives_its_token(
        tmp_path: Path) -> None:
    """The attack: a tenant's admin token asks for a dashboard link and logs in. The
    session's cookie is also an authenticator of the REST API (with this dashboard's
    Origin and its CSRF token, as every write of a session), so the session asks
    `POST /api/v1/ui/login` for a link of its own. That link's session was made as a
    caller of the dashboard, not of a token, so it ended with no token: revoked, the
    token's own session ended, and the one it made went on, with the admin scope of its
    tenant, and could make the next before its 12 hours were up. A session asks for no
    link: refused (403, saying so), nothing issued."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    toml = TENANTS + f'[http]\nlisten = "127.0.0.1:{port}"\nrate_per_minute = 0\n'
    async with in_process(tmp_path, hello("hello"), toml) as d:
        tokens = tokens_of(d.services.store)
        acme, _ = await tokens.create("acme-admin", ["admin"], None, None, "acme")
        async with aiohttp.ClientSession() as http:
            path = await _link(http, base, acme)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as own:
            csrf = (await _follow(own, base, path))[1]["csrf"]
            cookie = {"corral_ui": own.cookie_jar.filter_cookies(
                yarl.URL(f"{base}/ui/"))["corral_ui"].value}
        issued = len(d.services.ui.codes)
        async with aiohttp.ClientSession() as http, http.post(
                f"{base}/api/v1/ui/login", json={}, cookies=cookie,
                headers={"Origin": base, "X-CSRF-Token": csrf}) as r:
            body = await r.json()
            assert r.status == 403, body
            assert body["detail"] == (
                "forbidden: a dashboard session asks for no login link (the session it "
                "would open would not end with the token this one came from): ask with "
                "that token"), body
        assert len(d.services.ui.codes) == issued


@pytest.mark.deadline(120)
async def test_a_dashboard_sessions_calls_are_rated_as_its_tokens_are(
        tmp_path: Path) -> None:
    """The attack: a tenant's admin token is held to `[http] rate_per_minute` on the REST
    API (the one bound on how fast a tenant's caller makes the daemon work for it, past
    its quotas). It asks for a dashboard link and calls the same methods through the
    session's `POST /ui/api/METHOD`, which took no token of any rate: as many as it
    sent. The sessions a token opened share one bucket of the same rate (the token's
    own is its scripts'), refused past it as REST refuses (429, Retry-After)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    toml = TENANTS + f'[http]\nlisten = "127.0.0.1:{port}"\nrate_per_minute = 6\n'
    async with in_process(tmp_path, hello("hello"), toml) as d:
        tokens = tokens_of(d.services.store)
        acme, _ = await tokens.create("acme-admin", ["admin"], None, None, "acme")
        async with aiohttp.ClientSession() as http:
            path = await _link(http, base, acme)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as own:
            csrf = (await _follow(own, base, path))[1]["csrf"]
            answers: list[tuple[int, Any, str | None]] = []
            for _ in range(12):
                async with own.post(f"{base}/ui/api/agents.status", json={}, headers={
                        "Origin": base, "X-CSRF-Token": csrf}) as r:
                    answers.append((r.status, await r.json(), r.headers.get("Retry-After")))
            served = [a for a in answers if a[0] == 200]
            refused = [a for a in answers if a[0] != 200]
            # (a token refills each 10 s: one more may have come while they were sent)
            assert 6 <= len(served) <= 7 and refused, [a[:1] for a in answers]
            status, body, after = refused[0]
            assert (status, body["detail"]) == (
                429, "token dashboard (acme-admin) is over its 6 requests per minute"), body
            assert after is not None and int(after) >= 1


@pytest.mark.deadline(120)
async def test_a_public_card_says_it_varies_by_the_host_it_names(tmp_path: Path) -> None:
    """The attack: an `[a2a] anonymous` agent's card is answered `Cache-Control: public`
    and names its interfaces' URL from the request's Host. Behind a caching proxy that
    passes the client's Host on and keys its cache by the path (nginx's default key
    names the upstream, not the Host), a caller's request with `Host: evil.example` put
    a card whose interfaces are at evil.example in the cache, served to every client for
    its max-age: their messages, and their bearer tokens, sent to that host. The card
    says it varies by Host (`Vary: Host`), on a 304 too."""
    port = free_port()
    toml = (f'[http]\nlisten = "127.0.0.1:{port}"\n\n'
            '[a2a]\nanonymous = ["hello"]\n')
    async with in_process(tmp_path, hello("hello"), toml):
        url = f"http://127.0.0.1:{port}{CARD.format(agent='hello')}"
        async with aiohttp.ClientSession() as http:
            async with http.get(url, headers={"Host": "evil.example"}) as r:
                assert r.status == 200, await r.text()
                card: dict[str, Any] = await r.json()
                assert card["supportedInterfaces"][0]["url"] == \
                    "http://evil.example/a2a/hello"
                assert r.headers["Cache-Control"] == "public, max-age=300"
                assert r.headers.get("Vary") == "Host", dict(r.headers)
                etag = r.headers["ETag"]
            async with http.get(url, headers={"Host": "evil.example",
                                              "If-None-Match": etag}) as r:
                assert (r.status, r.headers.get("Vary")) == (304, "Host")


@pytest.mark.deadline(120)
async def test_a_socket_peers_dashboard_session_ends_when_its_group_is_not_its_tenants(
        tmp_path: Path) -> None:
    """The attack: a user in `[tenants.acme] group` (here `daemon`, uid 1) opens a
    dashboard on the control socket (`corral ui`): the session is acme's. The operator
    takes the group off the tenant and reloads: on the socket the user is acme's no
    more, but the session, tied to no token, stayed acme's, with the peer's scopes, for
    its 12 hours. A peer's session is asked at each request, as a token's is, whether its
    uid and group still call as its tenant: here it ends (401)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "corral.toml"
    toml = ('[tenants.acme]\ngroup = "daemon"\n' + TENANTS.replace("[tenants.acme]\n", "")
            + f'[http]\nlisten = "127.0.0.1:{port}"\nrate_per_minute = 0\n')
    async with in_process(tmp_path, hello("hello"), toml) as d:
        peer = Caller(via="socket", uid=1, gid=1, pid=1, tenant="acme")
        path = (await d.dispatcher.call(peer, "ui.login")).path
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as own:
            status, body = await _follow(own, base, path)
            assert (status, body["tenant"]) == (200, "acme")
            config.write_text(config.read_text().replace('group = "daemon"\n', ""))
            await d.dispatcher.call(Caller(via="socket", uid=0), "config.reload", {})
            async with own.get(f"{base}/ui/session") as r:
                assert r.status == 401, await r.text()
