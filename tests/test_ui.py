"""The dashboard (`/ui`, corral/daemon/http/ui.py): its vendored libraries are the npm
registry's files, byte for byte, and ship with the package."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import re
import shutil
import time
import tomllib
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import yarl

from corral import jsonrpc
from corral import methods as m
from corral.daemon.caller import Caller
from corral.daemon.daemon import Daemon
from corral.daemon.http.ui import COOKIE, CSP, SESSION_TTL
from corral.daemon.tokens import tokens_of
from corral.jsonrpc import RpcError
from corral.supervisor import State

from .conftest import ROOT
from .daemon_harness import hello, in_process, problem, running_daemon, shared_tmpdir
from .test_daemon_cli import wait_until
from .test_gateway_stdio import wait_until_async

# minutes of this file: a parallel run starts it first (tests/conftest.py longest_first)
pytestmark = pytest.mark.long

STATIC = ROOT / "corral" / "daemon" / "http" / "static"
VENDOR = STATIC / "vendor"


def recorded_hashes(vendor: Path) -> dict[str, str]:
    """File name -> sha256, from VENDORED.md's table of files."""
    rows = re.findall(r"^\| `([^`]+)` \|[^|]*\|[^|]*\| `([0-9a-f]{64})` \|$",
                      (vendor / "VENDORED.md").read_text(), re.MULTILINE)
    return dict(rows)


def vendor_mismatches(vendor: Path) -> list[str]:
    """What differs between the vendored files and VENDORED.md: a changed file, a file
    not recorded, a recorded file missing."""
    recorded = recorded_hashes(vendor)
    present = {p.name for p in vendor.iterdir() if p.name != "VENDORED.md"}
    out = [f"not recorded: {n}" for n in sorted(present - set(recorded))]
    out += [f"missing: {n}" for n in sorted(set(recorded) - present)]
    for name in sorted(present & set(recorded)):
        if hashlib.sha256((vendor / name).read_bytes()).hexdigest() != recorded[name]:
            out.append(f"changed: {name}")
    return out


def test_vendored_files_match_their_recorded_hashes() -> None:
    assert set(recorded_hashes(VENDOR)) == {
        "preact.mjs", "htm.mjs", "uPlot.iife.min.js", "uPlot.min.css",
        "LICENSE.preact", "LICENSE.htm", "LICENSE.uplot"}
    assert vendor_mismatches(VENDOR) == []


def test_a_changed_or_unrecorded_vendored_file_is_caught(tmp_path: Path) -> None:
    copy = tmp_path / "vendor"
    shutil.copytree(VENDOR, copy)
    with (copy / "htm.mjs").open("ab") as f:
        f.write(b"\n")
    (copy / "extra.js").write_text("")
    (copy / "LICENSE.uplot").unlink()
    assert vendor_mismatches(copy) == ["not recorded: extra.js", "missing: LICENSE.uplot",
                                       "changed: htm.mjs"]


def test_every_static_file_is_package_data() -> None:
    """An installed corral (not a checkout) serves the same page: every file under
    static/ matches a package-data glob of pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["corral.daemon.http"]
    base = STATIC.parent
    shipped = {p for g in globs for p in base.glob(g)}
    files = {p for p in STATIC.rglob("*") if p.is_file()}
    assert files and files <= shipped, sorted(str(p) for p in files - shipped)


# -- the rules of /ui, over plain HTTP, against a real daemon in this process ---------------
def running(tmp_path: Path, http: bool = True
            ) -> contextlib.AbstractAsyncContextManager[Daemon]:
    return in_process(tmp_path, hello("hello"),
                      '[http]\nlisten = "127.0.0.1:0"\n' if http else "")


OPERATOR = Caller(via="socket", uid=0)


async def login_link(d: Daemon, caller: Caller = OPERATOR) -> m.UiLoginResult:
    result: m.UiLoginResult = await d.dispatcher.call(caller, "ui.login")
    return result


async def audited(d: Daemon) -> list[str]:
    """The daemon log's audit lines, written as each call ends (the audit table's rows
    are written later, by the store's writer)."""
    lines = await d.dispatcher.call(OPERATOR, "logs.tail", {"names": ["corral"],
                                                             "lines": 500})
    return [ln.text for ln in lines.lines if ln.stream == "audit"]


class Page:
    """A browser's side of the rules, by hand: a cookie jar, and Host, Origin and the
    CSRF header as a page of this origin sends them."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def close(self) -> None:
        await self.http.close()

    async def get(self, path: str, **kw: Any) -> tuple[int, dict[str, str], Any]:
        async with self.http.get(self.base + path, allow_redirects=False, **kw) as r:
            return r.status, dict(r.headers), await _body(r)

    async def login(self, link: str) -> None:
        status, headers, _ = await self.get(link.removeprefix(self.base))
        assert (status, headers["Location"]) == (303, "/ui/")
        status, _, body = await self.get("/ui/session")
        assert status == 200, body
        self.csrf = body["csrf"]

    async def call(self, method: str, params: Any = None, *, csrf: str | None = None,
                   origin: str | None = None, host: str | None = None
                   ) -> tuple[int, dict[str, str], Any]:
        headers = {"Origin": self.base if origin is None else origin,
                   "X-CSRF-Token": self.csrf if csrf is None else csrf}
        if host is not None:
            headers["Host"] = host
        headers = {k: v for k, v in headers.items() if v != "-"}  # "-": not sent
        async with self.http.post(f"{self.base}/ui/api/{method}", headers=headers,
                                  data=msgspec.json.encode(params or {})) as r:
            return r.status, dict(r.headers), await _body(r)


async def _body(r: aiohttp.ClientResponse) -> Any:
    raw = await r.read()
    if r.content_type.endswith("json"):
        return msgspec.json.decode(raw)
    return raw


@contextlib.asynccontextmanager
async def page(d: Daemon) -> AsyncIterator[Page]:
    p = Page(d.services.ui.url if d.services.ui else "")
    try:
        yield p
    finally:
        await p.close()


NO_SESSION = "unauthorized: no dashboard session (open the link that `corral ui` prints)"


@pytest.mark.deadline(90)
async def test_a_login_link_works_once_and_its_session_may_call(tmp_path: Path) -> None:
    async with running(tmp_path) as d, page(d) as p:
        link = await login_link(d)
        assert link.url == p.base + link.path
        assert link.path == f"/ui/login?code={link.code}"
        assert 55 < link.expires - time.time() <= 60
        # no cookie yet: the page and its files load, every call is refused
        status, headers, body = await p.get("/ui/")
        assert (status, headers["Content-Type"]) == (200, "text/html; charset=utf-8")
        status, _, body = await p.get("/ui/session")
        assert (status, body) == (401, problem(401, "unauthorized", NO_SESSION.removeprefix(
            "unauthorized: ")))
        status, _, body = await p.call("agents.status")
        assert (status, body) == (401, problem(401, "unauthorized", NO_SESSION,
                                               jsonrpc.UNAUTHORIZED))

        status, headers, _ = await p.get(link.path)
        assert (status, headers["Location"]) == (303, "/ui/")
        cookie = headers["Set-Cookie"]
        assert cookie.startswith("corral_ui=")
        assert {"HttpOnly", "Path=/ui", "SameSite=Strict", "Max-Age=43200"} <= {
            part.strip() for part in cookie.split(";")}
        status, _, session = await p.get("/ui/session")
        assert status == 200 and len(session["csrf"]) >= 32
        # what the page does (issue 36: run a task, add and remove agents) and nothing
        # of the daemon's own: no shutdown, reload, tokens or tenants' tables
        assert {"stats.get", "tasks.submit", "agents.add", "agents.remove", "agents.start",
                "agents.stop"} <= set(session["methods"])
        assert not {"daemon.shutdown", "config.reload", "tokens.create", "tenants.add",
                    "agents.signal", "packages.deploy"} & set(session["methods"])
        p.csrf = session["csrf"]
        status, _, body = await p.call("agents.status")
        assert status == 200 and [a["name"] for a in body["agents"]] == ["hello"]

        # the same link again, in another browser: refused, no second session
        async with page(d) as other:
            status, headers, body = await other.get(link.path)
            assert (status, body) == (401, problem(
                401, "unauthorized", "this login link is not valid: it was used "
                     "already, or it never was; run `corral ui` for a new one"))
            assert "Set-Cookie" not in headers
        assert d.services.ui is not None and len(d.services.ui.sessions) == 1

        # the login is audited (the code is not: ui.login has no params)
        assert await audited(d) == ["uid 0 pid -1: ui.login {} -> ok"]

        # a call the session makes is the operator's, audited as the dashboard's
        status, _, body = await p.call("agents.scale", {"name": "hello", "replicas": 2})
        assert (status, body) == (200, {"name": "hello", "replicas": 2})
        await d.sup.wait_state("hello", State.READY, timeout=20)
        assert (await audited(d))[-1] == (
            'token dashboard (uid 0): agents.scale {"name":"hello","replicas":2} -> ok')

        # logging out ends the session on the server
        async with p.http.post(f"{p.base}/ui/logout", headers={
                "Origin": p.base, "X-CSRF-Token": p.csrf}) as r:
            assert r.status == 204
        assert d.services.ui.sessions == {}
        status, _, body = await p.call("agents.status")
        assert (status, body["detail"]) == (401, NO_SESSION)


@pytest.mark.deadline(90)
async def test_an_expired_or_unknown_code_is_refused(tmp_path: Path) -> None:
    async with running(tmp_path) as d, page(d) as p:
        sessions = d.services.ui
        assert sessions is not None
        now = [time.time()]
        sessions.clock = lambda: now[0]
        link = await login_link(d)
        now[0] += 60.0  # the code's last instant is past
        status, headers, body = await p.get(link.path)
        assert (status, body) == (401, problem(
            401, "unauthorized",
            "this login link has expired; run `corral ui` for a new one"))
        assert "Set-Cookie" not in headers and sessions.sessions == {}
        # tried once, an expired code is gone too
        status, _, body = await p.get(link.path)
        assert body["detail"].startswith("this login link is not valid")
        status, _, body = await p.get("/ui/login?code=made-up")
        assert (status, body["detail"]) == (401, "this login link is not valid: it was "
                                                 "used already, or it never was; run "
                                                 "`corral ui` for a new one")
        status, _, body = await p.get("/ui/login")
        assert status == 401 and sessions.sessions == {}

        # a session past its life is gone: its cookie no longer calls
        await p.login((await login_link(d)).url)
        assert (await p.call("agents.status"))[0] == 200
        now[0] += SESSION_TTL
        status, _, body = await p.call("agents.status")
        assert (status, body["detail"]) == (401, NO_SESSION)
        assert sessions.sessions == {}


@pytest.mark.deadline(90)
async def test_writes_need_the_csrf_header_and_this_origin(tmp_path: Path) -> None:
    async with running(tmp_path) as d, page(d) as p:
        await p.login((await login_link(d)).url)
        agent = d.sup.agent("hello")
        pid = agent.replicas[0].pid

        def unchanged() -> None:
            assert [(r.state, r.pid) for r in agent.replicas] == [(State.READY, pid)]

        for csrf, detail in [("-", "forbidden: missing or wrong X-CSRF-Token header"),
                             # (its first character changed: one that was "x" is
                             # not the same token again)
                             (("y" if p.csrf[0] == "x" else "x") + p.csrf[1:],
                              "forbidden: missing or wrong X-CSRF-Token header")]:
            status, headers, body = await p.call("agents.scale",
                                                 {"name": "hello", "replicas": 3},
                                                 csrf=csrf)
            assert (status, body) == (403, problem(403, "forbidden", detail,
                                                   jsonrpc.FORBIDDEN))
            assert headers["Content-Security-Policy"] == CSP
            unchanged()
        for origin in ["http://evil.example", "-", "null",
                       p.base.replace("127.0.0.1", "localhost")]:
            status, _, body = await p.call("agents.restart", {"names": ["hello"]},
                                           origin=origin)
            detail = ("forbidden: a write needs this dashboard's Origin header, and none "
                      "was sent" if origin == "-" else
                      f"forbidden: Origin {origin!r} is not this dashboard's")
            assert (status, body) == (403, problem(403, "forbidden", detail,
                                                   jsonrpc.FORBIDDEN))
            unchanged()
        # logging out is a write too
        async with p.http.post(f"{p.base}/ui/logout",
                               headers={"Origin": "http://evil.example",
                                        "X-CSRF-Token": p.csrf}) as r:
            assert (r.status, await _body(r)) == (403, problem(
                403, "forbidden", "forbidden: Origin 'http://evil.example' is not this "
                                  "dashboard's", jsonrpc.FORBIDDEN))
        # the session cookie sent to the REST API is held to the same rules: a 403 that
        # says so, not a 401 (the cookie is a caller, only its write is refused)
        cookie = p.http.cookie_jar.filter_cookies(yarl.URL(f"{p.base}/ui/"))[COOKIE].value
        async with aiohttp.ClientSession() as bare, bare.post(
                f"{p.base}/api/v1/agents/hello/restart",
                headers={"Origin": "http://evil.example", "X-CSRF-Token": p.csrf,
                         "Cookie": f"{COOKIE}={cookie}"}) as r:
            assert (r.status, "WWW-Authenticate" in r.headers, await _body(r)) == (
                403, False, problem(403, "forbidden", "forbidden: Origin "
                                    "'http://evil.example' is not this dashboard's",
                                    jsonrpc.FORBIDDEN))
        assert d.services.ui is not None and len(d.services.ui.sessions) == 1
        # a method the page does not call is not reachable, session or not
        status, _, body = await p.call("daemon.shutdown")
        assert (status, body) == (404, problem(
            404, "not found", "daemon.shutdown is not a method the dashboard calls"))
        unchanged()
        # no audit row for any refused call
        assert [t.split(" {")[0] for t in await audited(d)] == ["uid 0 pid -1: ui.login"]


@pytest.mark.deadline(90)
async def test_a_foreign_host_is_misdirected_and_every_response_has_the_csp(
        tmp_path: Path) -> None:
    async with running(tmp_path) as d, page(d) as p:
        await p.login((await login_link(d)).url)
        port = yarl.URL(p.base).port
        pid = d.sup.agent("hello").replicas[0].pid
        for host in ["evil.example", f"evil.example:{port}", "127.0.0.1:1",
                     f"127.0.0.2:{port}", f"user@127.0.0.1:{port}", ""]:
            status, headers, body = await p.call("agents.restart", {"names": ["hello"]},
                                                 host=host)
            assert (status, body) == (421, problem(
                421, "misdirected request", f"Host {host!r} is not this server's"))
            assert headers["Content-Security-Policy"] == CSP
            status, _, _ = await p.get("/ui/", headers={"Host": host})
            assert status == 421
        assert d.sup.agent("hello").replicas[0].pid == pid
        # localhost with our port is ours
        status, _, _ = await p.get("/ui/", headers={"Host": f"localhost:{port}"})
        assert status == 200

        for path in ["/ui", "/ui/", "/ui/static/app.js", "/ui/static/vendor/preact.mjs",
                     "/ui/static/nope.js", "/ui/static/../ui.py", "/ui/session",
                     "/ui/login?code=x", "/ui/nothing"]:
            status, headers, _ = await p.get(path)
            assert headers["Content-Security-Policy"] == CSP, path
            assert headers["X-Content-Type-Options"] == "nosniff", path
            assert headers["Referrer-Policy"] == "no-referrer", path
            assert status in (200, 302, 401, 404), (path, status)
        assert (await p.get("/ui/static/nope.js"))[0] == 404
        assert (await p.get("/ui/static/../ui.py"))[0] == 404
        status, headers, body = await p.get("/ui/static/vendor/preact.mjs")
        assert (status, headers["Content-Type"]) == (200, "text/javascript; charset=utf-8")
        assert body == (VENDOR / "preact.mjs").read_bytes()


@pytest.mark.deadline(90)
async def test_ui_login_without_http_is_refused(tmp_path: Path) -> None:
    async with running(tmp_path, http=False) as d:
        with pytest.raises(RpcError) as err:
            await login_link(d)
        assert (err.value.code, err.value.message) == (
            jsonrpc.CONFLICT, "the dashboard is served by the HTTP server, and this "
                              "daemon has none: set [http] listen")
        # a caller without admin may not mint a login at all
        with pytest.raises(RpcError) as err:
            await login_link(d, Caller(via="http", token="r",
                                       scopes=frozenset({"agents:read"})))
        assert err.value.code == jsonrpc.FORBIDDEN


def test_corral_ui_prints_a_link_that_logs_in() -> None:
    with running_daemon(shared_tmpdir(), hello("hello"),
                        extra='[http]\nlisten = "127.0.0.1:0"\n') as d:
        r = d.cli("ui")
        assert r.returncode == 0, r.stderr
        link = r.stdout.strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/ui/login\?code=[\w-]{32}", link)
        assert re.fullmatch(r"corral: open this link in a browser on this machine within "
                            r"(59|60) s; it works once\n", r.stderr)
        r = d.cli("ui", "--json")
        assert r.returncode == 0, r.stderr
        # the answer as declared, strictly
        answer = msgspec.json.decode(r.stdout, type=m.UiLoginResult)
        assert msgspec.json.encode(answer) == msgspec.json.encode(
            msgspec.json.decode(r.stdout))
        assert answer.url.endswith(answer.path) and answer.code != link.rsplit("=")[-1]
        with urllib.request.urlopen(urllib.request.Request(link)) as resp:
            # the redirect followed to the page; the cookie was set on the way
            assert (resp.status, resp.url) == (200, link.split("/login")[0] + "/")
    with running_daemon(shared_tmpdir(), hello("hello")) as d:
        r = d.cli("ui")
        assert (r.returncode, r.stdout, r.stderr) == (
            1, "", "corral: the dashboard is served by the HTTP server, and this daemon "
                   "has none: set [http] listen\n")


def token_login(base: str, secret: str) -> str:
    """A dashboard link asked for over the REST API with a bearer token."""
    req = urllib.request.Request(base + "/api/v1/ui/login", method="POST", data=b"{}",
                                 headers={"Authorization": f"Bearer {secret}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        return str(msgspec.json.decode(resp.read())["url"])


async def test_a_dashboard_session_is_bounded_as_the_token_that_asked_for_it(
        tmp_path: Path) -> None:
    """A link asked for with a token (its tenant, or its agents glob) logs in to a
    session that sees what the token sees, and no more; the session ends with the token,
    and a token made again under its name with other powers does not bring it back."""
    agents = (hello("a1", extra='tenant = "a"\n') + hello("b1", extra='tenant = "b"\n')
              + hello("web-x"))
    async with in_process(tmp_path, agents, TENANTS) as d:
        tokens = tokens_of(d.services.store)
        _, of_a = await tokens.create("ta", ["admin"], None, None, "a")
        _, webs = await tokens.create("webs", ["admin"], "web-*", None)
        # a glob sees some of a tenant's agents only: not the tenants' use (decision 143)
        for token, seen, tenants in ((of_a, {"a1"}, ["a"]), (webs, {"web-x"}, None)):
            caller = Caller(via="http", token=token.name, scopes=token.scopes,
                            agents=token.agents, tenant=token.tenant)
            link = await login_link(d, caller)
            async with page(d) as p:
                await p.login(link.url)
                _, _, info = await p.get("/ui/session")
                assert info["tenant"] == token.tenant
                # the page is offered what the session may call, and asks nothing else
                assert ("tenants.list" in info["methods"]) is (tenants is not None)
                assert "nodes.list" not in info["methods"] and "agents.status" in info[
                    "methods"]
                status, _, body = await p.call("agents.status")
                assert status == 200 and {r["name"] for r in body["agents"]} == seen
                status, _, body = await p.call("tenants.list")
                if tenants is None:
                    assert (status, body["detail"]) == (403, (
                        f"forbidden: token dashboard ({token.name}) is limited to agents "
                        "matching web-*: "
                        "tenants.list is for callers that see whole tenants (a tenant's "
                        "use counts agents outside web-*)"))
                else:
                    assert [t["name"] for t in body["tenants"]] == tenants
                status, _, body = await p.call("agents.describe", {"name": "b1"})
                assert (status, body["detail"]) == (404, "no such agent: b1 (agents: "
                                                         f"{', '.join(sorted(seen))})")

        caller = Caller(via="http", token="ta", scopes=of_a.scopes, tenant="a")
        link = await login_link(d, caller)
        async with page(d) as p:
            await p.login(link.url)
            assert (await p.call("tenants.list"))[0] == 200
            await tokens.revoke("ta")
            await tokens.create("ta", ["admin"], None, None, "b")  # another token
            status, _, body = await p.call("tenants.list")
            assert (status, body["detail"]) == (401, "unauthorized: no dashboard session "
                                                     "(open the link that `corral ui` "
                                                     "prints)")
            assert (await p.get("/ui/session"))[0] == 401
        # the operator's session (a socket peer's, no token) is not ended by any of this
        async with page(d) as p:
            await p.login((await login_link(d)).url)
            status, _, body = await p.call("tenants.list")
            assert status == 200 and len(body["tenants"]) == 3


@pytest.mark.deadline(60)
async def test_a_dashboard_session_ends_when_the_token_that_asked_for_it_expires(
        tmp_path: Path) -> None:
    """The token's expiry is the session's too: a page left open past it is logged out,
    as one whose token was revoked is."""
    async with in_process(tmp_path, hello("a1", extra='tenant = "a"\n'), TENANTS) as d:
        _, token = await tokens_of(d.services.store).create("ta", ["admin"], None, 5, "a")
        caller = Caller(via="http", token="ta", scopes=token.scopes, tenant="a")
        async with page(d) as p:
            await p.login((await login_link(d, caller)).url)
            assert (await p.call("tenants.list"))[0] == 200
            await wait_until_async(lambda: token.expired(time.time()), timeout=15)
            status, _, body = await p.call("tenants.list")
            assert (status, body["detail"]) == (401, NO_SESSION)
            assert (await p.get("/ui/session"))[0] == 401


# -- the page in a real browser -------------------------------------------------------------
CHROMIUM = Path("/usr/bin/chromium")
# as this machine needs them: no GPU, no sandbox (root), and nothing reaching the network
# the tests do not have (Playwright adds --headless and a new, empty profile itself)
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]
ARTIFACTS = ROOT / "tests" / "artifacts"
# recorded before any page script runs: Playwright's init scripts are not subject to the
# page's CSP, so the listener sees every violation, the page's own included
WATCH_CSP = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"}`);
});
"""


needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium "
    "(scripts/browser.sh installs it; CI runs it)")


# this module's chromium and the Playwright that drives it, while `one_chromium` is on
SHARED: dict[str, Any] = {}


def close_shared_chromium() -> None:
    if "browser" in SHARED:
        try:
            SHARED.pop("browser").close()
        finally:
            SHARED.pop("playwright").__exit__(None, None, None)


@pytest.fixture(scope="module")
def chromium_of_module() -> Iterator[None]:
    """One chromium for the module's pages, launched by its first and closed at its end
    (decision 962): a launch is ~1.2 s of CPU and ~3 s, paid again by each test; each page
    is still a new context, its cookies, storage and cache its own as in a new profile.
    A module that does not use it launches a chromium per page."""
    SHARED["on"] = True
    try:
        yield
    finally:
        del SHARED["on"]
        close_shared_chromium()


@pytest.fixture(autouse=True)
def one_chromium(request: pytest.FixtureRequest, chromium_of_module: None) -> None:
    """Closed before a test of the event loop: Playwright's sync API holds its own loop
    as the thread's running one between its calls, and no other may run beside it."""
    if inspect.iscoroutinefunction(request.function):
        close_shared_chromium()


def shared_chromium() -> Any:
    from playwright.sync_api import sync_playwright

    if "browser" not in SHARED:
        driving = sync_playwright()
        pw = driving.__enter__()
        try:
            SHARED["browser"] = pw.chromium.launch(executable_path=str(CHROMIUM),
                                                   args=CHROMIUM_FLAGS)
        except BaseException:
            driving.__exit__(None, None, None)
            raise
        SHARED["playwright"] = driving
    return SHARED["browser"]


@contextlib.contextmanager
def chromium_page() -> Iterator[Any]:
    """A page of a new headless chromium profile (the module's chromium where it shares
    one, `one_chromium`), recording CSP violations (WATCH_CSP)."""
    from playwright.sync_api import sync_playwright

    if "on" in SHARED:
        context = shared_chromium().new_context(viewport={"width": 1280, "height": 800})
        try:
            page = context.new_page()
            page.add_init_script(WATCH_CSP)
            yield page
        finally:
            context.close()
        return
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.add_init_script(WATCH_CSP)
            yield page
        finally:
            browser.close()


CHART_IDS = ["tasks", "errors", "latency", "queue", "cpu", "memory"]


def wait_for_points(page: Any, n: int, timeout: float = 30_000) -> None:
    """Until every chart has at least `n` points (uPlot's own data, read in the page)."""
    page.wait_for_function(
        f"() => {CHART_IDS}.every(id => window.corralCharts[id] && "
        f"window.corralCharts[id].data[0].length >= {n})", timeout=timeout)


@needs_chromium
@pytest.mark.timeout(240)
def test_the_dashboard_in_chromium() -> None:
    from playwright.sync_api import ConsoleMessage, expect

    serving = re.compile(r"^(ready|idle|busy)$")

    ARTIFACTS.mkdir(exist_ok=True)
    # a history sample five times a second: the charts' last hour fills within the test
    with running_daemon(shared_tmpdir(), hello("hello"),
                        extra='[http]\nlisten = "127.0.0.1:0"\nhistory_interval = 0.2\n'
                        ) as d:
        task = d.json("run", "hello", "--input", '{"name": "ui"}')
        assert task["status"] == "succeeded"
        r = d.cli("ui")
        assert r.returncode == 0, r.stderr
        link = r.stdout.strip()
        problems: list[str] = []

        def on_console(msg: ConsoleMessage) -> None:
            if msg.type in ("error", "warning"):
                problems.append(f"console {msg.type}: {msg.text}")

        with chromium_page() as page:
            page.on("console", on_console)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            asked: list[str] = []  # every request the page makes, after /ui/
            page.on("request", lambda req: asked.append(req.url.split("/ui/", 1)[-1]))

            def shot(name: str) -> None:
                page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"),
                                full_page=True)

            # log in with the one-time link: the fleet, live
            page.goto(link)
            assert page.url == link.split("/login")[0] + "/"
            hello0 = page.locator('#fleet tr[data-agent="hello"][data-replica="0"]')
            expect(hello0.locator(".state")).to_have_text(serving)
            expect(page.locator("#live")).to_contain_text("live, updated")
            shot("fleet")

            # a state change reaches the page as it happens, from the fleet's stream:
            # no reload, and no request for the fleet's status
            page.evaluate("window.sameDocument = true")
            live = page.evaluate("window.corralLive")
            assert live["agents.snapshot"] == 1, live
            old_pid = d.json("status")["agents"][0]["pid"]
            r = d.cli("stop", "hello")
            assert r.returncode == 0, r.stderr
            expect(hello0.locator(".state")).to_have_text("terminated")
            expect(hello0.locator("td").nth(3)).to_have_text("\u2013")  # no pid: a dash
            r = d.cli("start", "hello")
            assert r.returncode == 0, r.stderr
            expect(hello0.locator(".state")).to_have_text(serving)
            new_pid = d.json("status")["agents"][0]["pid"]
            assert new_pid != old_pid
            expect(hello0.locator("td").nth(3)).to_have_text(str(new_pid))
            # ready -> shutting_down -> terminated, then starting -> ready (each sent;
            # the page draws the newest once per frame)
            assert page.evaluate("window.corralLive['agents.transition']") >= 4
            assert page.evaluate("window.sameDocument") is True
            # and the figures that change without a transition: each second
            samples = page.evaluate("window.corralLive['agents.sample']")
            page.wait_for_function(
                f"() => window.corralLive['agents.sample'] >= {samples + 2}", timeout=10_000)

            # an agent: scale it from the page, and see the new replica come up
            page.click('#fleet a[href="#/agent/hello"]')
            expect(page.locator("#replicas-table tbody tr")).to_have_count(1)
            page.fill("#replicas", "2")
            page.click("#scale")
            expect(page.locator('#replicas-table tr[data-replica="1"] .state')).to_have_text(
                serving, timeout=30_000)
            assert [(a["name"], a["replica"]) for a in d.json("status")["agents"]] == [
                ("hello", 0), ("hello", 1)]
            # the log tail follows: the new replica's lifecycle lines arrive
            expect(page.locator("#log")).to_contain_text("#1 event: starting -> ready")
            # the agent's own history, its last hour (the default range)
            wait_for_points(page, 3)
            expect(page.locator("#history-note")).to_contain_text(re.compile(
                r"^History of hello \(stats\.history\): a point per 0\.2 s, \d+ "
                r"samples from "))
            assert page.evaluate("window.corralCharts.memory.data[1]")[-1] > 0
            shot("agent")  # (README's picture is scripts/dashboard-shot.py's)

            # tasks: the one run above, its attempts and output
            page.click('nav a[href="#/tasks"]')
            row = page.locator(f'#tasks tr[data-task="{task["task_id"]}"]')
            expect(row).to_contain_text("succeeded")
            row.locator("a").click()
            expect(page.locator("#task-output")).to_contain_text("hello, ui")
            expect(page.locator("#attempts tbody tr")).to_have_count(1)
            shot("task")

            # charts with points: uPlot's own data, read in the page. The last hour
            # is the daemon's samples, the fleet's: it ran a task
            page.click('nav a[href="#/metrics"]')
            wait_for_points(page, 3)
            memory = page.evaluate("window.corralCharts.memory.data[1]")
            assert memory[-1] > 0, memory
            expect(page.locator("#history-note")).to_contain_text(re.compile(
                r"^History of the fleet \(stats\.history\): a point per 0\.2 s, \d+ "
                r"samples from "))
            # it is reloaded: new samples come in
            before = page.evaluate("window.corralCharts.tasks.data[0].length")
            wait_for_points(page, before + 3)
            # the samples, as the page plots them: tasks/min is the period's executions
            # over its minutes (the one task run above is in one of them)
            history = d.json("stats", "--since", "1h")
            assert history["resolution"] == "raw"
            [ran] = [x for x in history["samples"] if x["executions"]]
            assert ran["executions"] == 1
            times, per_minute = page.evaluate("window.corralCharts.tasks.data.slice(0, 2)")
            assert per_minute[times.index(ran["time"])] == pytest.approx(
                60 / ran["seconds"])
            shot("metrics")
            # the last day and week: the raw samples while the history is younger than
            # its first minute's roll-up; once a minute boundary has passed (a run that
            # started at :50 s), that roll-up, a point per minute
            page.click("#range-week")
            expect(page.locator("#range-week")).to_have_class("primary")
            note = page.locator("#history-note")
            expect(note).to_contain_text(re.compile(r"a point per (0\.2 s|minute),"))
            wait_for_points(page, 3 if "a point per 0.2 s" in note.inner_text() else 1)
            # live: the page's own points, one a second, from stats.get
            page.click("#range-live")
            expect(page.locator("#history-note")).to_contain_text(
                "Live: points of the fleet, one a second since this page opened")
            wait_for_points(page, 3)
            live_memory = page.evaluate("window.corralCharts.memory.data[1]")
            assert live_memory[-1] > 0, live_memory
            page.click("#range-hour")

            page.click('nav a[href="#/mcp"]')
            expect(page.locator("#mcp")).to_be_visible()
            page.click('nav a[href="#/audit"]')
            expect(page.locator("#audit")).to_contain_text("agents.scale")
            shot("audit")

            page.click('nav a[href="#/fleet"]')
            expect(page.locator('#fleet tr[data-agent="hello"]')).to_have_count(2)
            expect(page.locator('#fleet tr[data-replica="1"] .state')).to_have_text(serving)
            shot("fleet-scaled")

            assert page.evaluate("window.__cspViolations") == []
            assert problems == []
            # nothing live was polled: the fleet, the figures and the log came on one
            # stream each, opened once for the whole visit (the agent's log once per
            # opening of its view, a task's live output once per opening of its page; the
            # inbox's asks once, whatever the view, for the count in the page's nav);
            # the agent's spec was loaded when its view opened, when its list of
            # replicas changed and after the scale, not each second
            polled = [a for a in asked if a.startswith(
                ("api/agents.status", "api/stats.get", "api/logs.tail"))]
            assert polled == []
            streams = [a.split("?")[0] for a in asked if a.startswith("stream/")]
            # (the agent's view follows its boundary.refused events on one stream too)
            assert sorted(streams) == ["stream/agents.watch", "stream/approvals.watch",
                                       "stream/events.follow", "stream/logs.follow",
                                       "stream/stats.watch", "stream/tasks.stream"], streams
            assert asked.count("api/agents.describe") <= 4, asked
            assert page.evaluate("window.sameDocument") is True

            # and the watch can fail: an inline script is blocked, and seen
            page.evaluate("""() => { const s = document.createElement("script");
                s.textContent = "window.ran = 1"; document.body.append(s); }""")
            page.wait_for_function("window.__cspViolations.length > 0")
            assert page.evaluate("window.__cspViolations") == [
                "script-src-elem blocked inline"]
            assert page.evaluate("window.ran") is None


@needs_chromium
@pytest.mark.timeout(120)
def test_the_charts_say_when_there_is_no_history_yet() -> None:
    """A daemon's first sample comes one history_interval after it starts: until then
    the history ranges are empty, and say so; live has its points meanwhile."""
    from playwright.sync_api import expect

    with running_daemon(shared_tmpdir(), hello("hello"),
                        extra='[http]\nlisten = "127.0.0.1:0"\nhistory_interval = 3600\n'
                        ) as d:
        r = d.cli("ui")
        assert r.returncode == 0, r.stderr
        with chromium_page() as page:
            page.goto(r.stdout.strip())
            page.click('nav a[href="#/metrics"]')
            # (the history's first read: a busy machine's took more than expect's 5 s)
            expect(page.locator("#history-note")).to_have_text(
                "No history samples yet for the fleet: the daemon takes one every "
                "hour ([http] history_interval).", timeout=30_000)
            wait_for_points(page, 0)
            assert page.evaluate(f"{CHART_IDS}.map(id => window.corralCharts[id]"
                                 f".data[0].length)") == [0] * 6
            page.click('#range-day')
            expect(page.locator("#history-note")).to_contain_text(
                "No history samples yet")
            page.click('#range-live')
            wait_for_points(page, 3)
            page.goto(page.url.split("#")[0] + "#/agent/hello")
            expect(page.locator("#history-note")).to_contain_text(
                "Live: points of hello, one a second")
            wait_for_points(page, 3)
            # a page opened at the view's address: the view comes once the session was
            # read, and loads the history then (it stayed "Loading the history…" before)
            page.goto(page.url.split("#")[0] + "#/metrics")
            page.reload()
            expect(page.locator("#history-note")).to_have_text(
                "No history samples yet for the fleet: the daemon takes one every "
                "hour ([http] history_interval).", timeout=30_000)
            assert page.evaluate("window.__cspViolations") == []


@needs_chromium
def test_an_agent_is_rolled_back_from_the_dashboard() -> None:
    """The agent view's revisions: the one before the current is rolled back to with its
    button; the daemon records the rollback as a new revision, the page shows it current
    and the replicas it brings, and the audit says the page's session did it."""
    from playwright.sync_api import expect

    extra = '[http]\nlisten = "127.0.0.1:0"\n'
    with running_daemon(shared_tmpdir(), hello("hello"), extra=extra) as d:
        # revision 2: two replicas, by a reload of the config file
        d.config.write_text(d.config.read_text().replace("replicas = 1", "replicas = 2"))
        r = d.cli("reload")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: d.status().get("hello#1", {}).get("state") in ("ready", "idle", "busy"),
                   what="hello#1 serving")
        assert [(v["revision"], v["change"]) for v in d.json("history", "hello")[
            "revisions"]] == [(1, "created"), (2, "replicas 1 -> 2")]
        r = d.cli("ui")
        assert r.returncode == 0, r.stderr
        with chromium_page() as page:
            page.goto(r.stdout.strip())
            # logged in: the fleet is drawn; then the agent's view, as a user goes
            expect(page.locator('#fleet tr[data-agent="hello"][data-replica="1"]'
                                ' .state')).to_have_text(
                re.compile(r"^(ready|idle|busy)$"), timeout=30_000)
            page.click('#fleet a[href="#/agent/hello"]')
            revisions = page.locator("#revisions tbody tr")
            expect(revisions).to_have_count(2, timeout=30_000)
            expect(revisions.nth(1).locator("td").first).to_have_text("* 2")
            # the current revision has no button; the first one has
            expect(revisions.nth(1).locator("button")).to_have_count(0)
            expect(page.locator("#replicas-table tbody tr")).to_have_count(2)
            revisions.nth(0).locator("button", has_text="Roll back").click()
            expect(revisions).to_have_count(3, timeout=30_000)
            expect(revisions.nth(2).locator("td").first).to_have_text("* 3")
            expect(revisions.nth(2)).to_contain_text(
                "rollback to revision 1: replicas 2 -> 1")
            expect(page.locator("#replicas-table tbody tr")).to_have_count(
                1, timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "dashboard-rollback.png"),
                            full_page=True)
            assert page.evaluate("window.__cspViolations") == []
        hist = d.json("history", "hello")
        assert [(v["revision"], v["change"]) for v in hist["revisions"]][-1] == (
            3, "rollback to revision 1: replicas 2 -> 1")
        assert hist["revisions"][-1]["who"] == "token dashboard (uid 0)"
        assert sorted(d.status()) == ["hello#0"]


# -- tenants on the dashboard (issue 23) ----------------------------------------------------
TENANTS = '''
[tenants.a]
max_agents = 2
max_replicas = 3
max_queue = 50
rate_per_minute = 600
[tenants.b]
max_replicas = 4
[http]
listen = "127.0.0.1:0"
'''


def tenant_cells(tenant: dict[str, Any]) -> list[str]:
    """A tenant's row as the page must show it, from `corral tenants --json`."""
    def beside(used: float, quota: float | None) -> str:
        return f"{used:g} / {quota:g}" if quota else f"{used:g}"

    q, u = tenant["quotas"], tenant["use"]
    shown = {"max_agents", "max_replicas", "max_queue", "max_concurrent_tasks",
             "tokens_per_minute"}
    # as JavaScript writes a number: 600.0 is 600
    other = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in q.items() if k not in shown) or "\u2013"
    revision = f" (revision {tenant['revision']})" if tenant["revision"] else ""
    return [tenant["name"], beside(u["agents"], q.get("max_agents")),
            beside(u["replicas"], q.get("max_replicas")),
            beside(u["queued"], q.get("max_queue")),
            beside(u["running"], q.get("max_concurrent_tasks")),
            beside(u["tokens_last_minute"], q.get("tokens_per_minute")),
            str(u["oom_kills"]), other, tenant["origin"] + revision]


@needs_chromium
@pytest.mark.timeout(240)
def test_the_dashboard_breaks_the_fleet_down_by_tenant() -> None:
    """Each tenant's quotas beside its use, as `corral tenants --json` has them, kept up
    to date as samples come; the fleet filtered to a tenant or grouped by tenant; a
    tenant's token's dashboard shows its tenant only, and ends with the token."""
    from playwright.sync_api import ConsoleMessage, expect

    serving = re.compile(r"^(ready|idle|busy)$")
    agents = (hello("a1", extra='tenant = "a"\n') + hello("a2", extra='tenant = "a"\n')
              + hello("b1", extra='tenant = "b"\n') + hello("plain"))
    with running_daemon(shared_tmpdir(), agents, extra=TENANTS) as d:
        link = d.json("ui")["url"]
        base = link.split("/ui/")[0]
        problems: list[str] = []

        def on_console(msg: ConsoleMessage) -> None:
            # the one error a revoked session's page may log: its refused calls (401)
            if msg.type in ("error", "warning") and "401" not in msg.text:
                problems.append(f"console {msg.type}: {msg.text}")

        def same_as_cli(page: Any, names: list[str]) -> None:
            """The tenants table, row by row, is `corral tenants --json` (read until
            they agree: the page reads it again at each sample)."""
            seen: list[Any] = []

            def agree() -> bool:
                want = [tenant_cells(t) for t in d.json("tenants")["tenants"]
                        if t["name"] in names]
                got = page.evaluate("""() => [...document.querySelectorAll(
                    '#tenants tbody tr')].map(r => [...r.cells].map(c => c.innerText))""")
                seen[:] = [got, want]
                return bool(got == want)

            try:
                wait_until(agree, timeout=15, what="the tenants table as the CLI")
            except AssertionError:
                raise AssertionError(f"the page's tenants, then the CLI's: {seen}") from None

        with chromium_page() as page:
            page.on("console", on_console)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.goto(link)
            for name in ("a1", "a2", "b1", "plain"):
                expect(page.locator(f'#fleet tr[data-agent="{name}"] .state')).to_have_text(
                    serving)
            # the operator's view: every tenant, quotas beside use
            expect(page.locator("#tenants tbody tr")).to_have_count(3)
            same_as_cli(page, ["a", "b", "default"])
            a_row = page.locator('#tenants tr[data-tenant="a"]')
            expect(a_row.locator('td[data-use="agents"]')).to_have_text("2 / 2")
            expect(a_row.locator('td[data-use="replicas"]')).to_have_text("2 / 3")
            expect(a_row).to_contain_text("rate_per_minute=600")

            # a scale shows in the use without a reload (the next sample's read)
            page.evaluate("window.sameDocument = true")
            r = d.cli("scale", "a1", "2")
            assert r.returncode == 0, r.stderr
            expect(a_row.locator('td[data-use="replicas"]')).to_have_text("3 / 3")
            same_as_cli(page, ["a", "b", "default"])
            assert page.evaluate("window.sameDocument") is True

            # filtered to one tenant: its row's link, and the select back to all
            a_row.locator("a").click()
            assert page.url.endswith("#/fleet/a")
            # (each agent's summary row, then its replicas' rows)
            rows = page.locator("#fleet tbody tr")
            expect(rows).to_have_count(5)
            assert sorted({rows.nth(i).get_attribute("data-agent") for i in range(5)}
                          - {None}) == ["a1", "a2"]
            expect(page.locator("#fleet tbody tr.summary")).to_have_count(2)
            expect(page.locator("#tenant-filter")).to_have_value("a")
            page.select_option("#tenant-filter", "b")
            expect(page.locator("#fleet tbody tr")).to_have_count(2)
            expect(page.locator('#fleet tr[data-agent="b1"]')).to_have_count(1)
            page.select_option("#tenant-filter", "")
            expect(page.locator("#fleet tbody tr[data-agent]")).to_have_count(5)

            # grouped: a header per tenant, each followed by its agents' replicas
            page.check("#group-by-tenant")
            expect(page.locator("#fleet tr.group")).to_have_count(3)
            order = page.evaluate("""() => [...document.querySelectorAll('#fleet tbody tr')]
                .map(r => r.dataset.group !== undefined ? `[${r.dataset.group}]`
                          : r.dataset.summary !== undefined ? `=${r.dataset.summary}`
                          : r.dataset.agent)""")
            assert order == ["[a]", "=a1", "a1", "a1", "=a2", "a2", "[b]", "=b1", "b1",
                             "[default]", "=plain", "plain"]
            expect(page.locator('#fleet tr[data-group="a"]')).to_have_text(
                "tenant a: 3 replicas")
            page.screenshot(path=str(ARTIFACTS / "dashboard-tenants.png"), full_page=True)
            assert page.evaluate("window.__cspViolations") == []

        # tenant a's token (every scope: the tenant bounds it still) asks for its link
        secret = d.cli("token", "create", "ta", "--tenant", "a", "--scope", "admin"
                       ).stdout.strip()
        tenant_link = token_login(base, secret)
        with chromium_page() as page:
            page.on("console", on_console)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.goto(tenant_link)
            expect(page.locator('#fleet tr[data-agent="a2"] .state')).to_have_text(serving)
            expect(page.locator("#tenants tbody tr")).to_have_count(1)
            same_as_cli(page, ["a"])
            # b's agents and b's row are not there; nor are the operator's other tenants
            expect(page.locator("#fleet tbody tr[data-agent]")).to_have_count(3)
            assert page.locator('#fleet tr[data-agent="b1"]').count() == 0
            assert page.locator('#fleet tr[data-summary="b1"]').count() == 0
            assert page.locator('#fleet tr[data-agent="plain"]').count() == 0
            assert page.locator('#tenants tr[data-tenant="b"]').count() == 0
            # its filter names its own tenant only
            assert page.evaluate("""() => [...document.querySelectorAll(
                '#tenant-filter option')].map(o => o.value)""") == ["", "a"]
            # and b named in the address is an empty list, not b's agents
            page.goto(tenant_link.split("/login")[0] + "/#/fleet/b")
            expect(page.locator("#no-agents")).to_have_text("No agents in tenant b.")
            assert page.locator("#fleet tbody tr").count() == 0
            page.screenshot(path=str(ARTIFACTS / "dashboard-tenant-a.png"), full_page=True)

            # the token revoked: its session ends, and its streams with it at once (decision
            # 159); the page says which of its calls or streams was refused first, and why
            # (the inbox's approvals.watch is one of the streams it follows for the visit)
            r = d.cli("token", "revoke", "ta")
            assert r.returncode == 0, r.stderr
            expect(page.locator("#login")).to_contain_text(re.compile(
                r"(agents\.watch|stats\.watch|approvals\.watch|tenants\.list) was refused: "
                r"unauthorized: no dashboard session \(open the link that `corral ui` prints\)"),
                timeout=15_000)
            assert page.evaluate("window.__cspViolations") == []
        assert problems == []
