"""The HTTP gateway (`[gateway] listen`) against the official MCP SDK's Streamable HTTP
client: tokens, per-client filtering, progress, cancellation, list_changed, sessions across
a daemon restart, and the agent's own per-replica token (examples/gateway_agent.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon, running_daemon, shared_tmpdir
from .test_gateway_stdio import SCRIPTED, listed, pool, text, wait_until_async
from .test_mcp import everything_reason

mcp = pytest.importorskip("mcp")
import httpx2  # noqa: E402
from mcp import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402

pytestmark = pytest.mark.skipif(everything_reason() is not None,
                                reason=everything_reason() or "")
FULL, NOTES = "full-token-for-tests", "notes-token-for-tests"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def config() -> str:
    return pool("v2025-11") + f"""
[mcp_servers.big]  # its tool big answers as many MiB as asked
command = ["{PY}", "{SCRIPTED}", "v2025-11,resources"]
start_timeout = 30.0

[agents.gwagent]
command = ["{PY}", "{EXAMPLES}/gateway_agent.py"]
env = {{ PYTHONPATH = "{ROOT}" }}
tools = ["notes__*", "ev__echo"]

[gateway]
listen = "127.0.0.1:0"
tokens_file = "tokens.toml"
"""


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    tmp = shared_tmpdir()
    (tmp / "tokens.toml").write_text(f"""
[clients.full]
token_sha256 = "{sha(FULL)}"

[clients.notes-only]
token_sha256 = "{sha(NOTES)}"
tools = ["notes__*"]
""")
    with running_daemon(tmp, config()) as d:
        yield d


def url(d: Daemon) -> str:
    u: str = d.json("mcp", "status")["gateway"]["http"]["url"]
    return u


@asynccontextmanager
async def http_session(d: Daemon, token: str, seen: list[Any] | None = None,
                       at: str = "") -> AsyncIterator[ClientSession]:
    async def on_message(msg: Any) -> None:
        if seen is not None:
            seen.append(msg)

    client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                timeout=httpx2.Timeout(30, read=60))
    async with client, streamable_http_client(url(d) + at, http_client=client) as (r, w), \
            ClientSession(r, w, message_handler=on_message) as s:
        await s.initialize()
        yield s


async def test_http_clients_see_the_pool_filtered_by_their_token(daemon: Daemon) -> None:
    async with http_session(daemon, FULL) as s:
        names = set(await listed(s, "notes__add", "ev__echo", "sc__slow"))
        assert {"notes__add", "ev__echo", "sc__slow"} <= names
        res = await s.call_tool("ev__get-sum", {"a": 2, "b": 40})
        assert text(res) == "The sum of 2 and 40 is 42."
    async with http_session(daemon, NOTES) as s:
        names = set(await listed(s, "notes__add"))
        assert names == {"notes__add", "notes__get", "notes__search"}
        with pytest.raises(MCPError) as err:
            await s.call_tool("ev__echo", {"message": "x"})
        assert str(err.value) == ("tool ev__echo is not allowed for gateway client "
                                  "notes-only (its tools allowlist: ['notes__*'])")
    st = daemon.json("mcp", "status")["gateway"]
    assert st["clients"]["full"]["calls"] >= 1
    assert st["clients"]["notes-only"]["errors"] >= 1


async def test_a_server_is_seen_as_itself_at_its_own_path(daemon: Daemon) -> None:
    """/mcp/ev: server-everything by its own names, as a client configured for it would
    use it, through corral's allowlists, limits and audit."""
    async with http_session(daemon, FULL) as s:
        whole = set(await listed(s, "ev__echo"))
    async with http_session(daemon, FULL, at="/ev") as s:
        names = {t.name for t in (await s.list_tools()).tools}
        assert names == {n.removeprefix("ev__") for n in whole if n.startswith("ev__")}
        assert text(await s.call_tool("get-sum", {"a": 2, "b": 40})) == \
            "The sum of 2 and 40 is 42."
        prompts = [p.name for p in (await s.list_prompts()).prompts]
        assert "simple-prompt" in prompts and not any("__" in p for p in prompts)
        got = await s.get_prompt("simple-prompt")
        assert got.messages
        resources = (await s.list_resources()).resources
        assert resources and (await s.read_resource(resources[0].uri)).contents
    async with http_session(daemon, NOTES, at="/ev") as s:
        assert (await s.list_tools()).tools == []
        with pytest.raises(MCPError) as err:
            await s.call_tool("echo", {"message": "x"})
        assert str(err.value) == ("tool ev__echo is not allowed for gateway client "
                                  "notes-only (its tools allowlist: ['notes__*'])")


async def test_an_unknown_servers_path_is_404_and_a_session_keeps_its_path(
        daemon: Daemon) -> None:
    h = {"Authorization": f"Bearer {FULL}", "Accept": "application/json, text/event-stream"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}}
    async with httpx2.AsyncClient(headers=h, timeout=30) as c:
        r = await c.post(url(daemon) + "/nope", json=init)
        assert r.status_code == 404
        assert r.json()["error"]["message"] == "no MCP server nope this client may use"
        r = await c.post(url(daemon) + "/ev", json=init)
        assert r.status_code == 200
        sid = r.headers["Mcp-Session-Id"]
        r = await c.post(url(daemon), headers={"Mcp-Session-Id": sid}, json={
            "jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        assert (r.status_code, r.json()["id"], r.json()["error"]["message"]) == (
            404, 2, "this session is of /mcp/ev, not of /mcp: initialize again")
        r = await c.delete(url(daemon) + "/ev", headers={"Mcp-Session-Id": sid})
        assert r.status_code == 200


async def test_no_token_or_an_unknown_one_is_401(daemon: Daemon) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}}}
    async with httpx2.AsyncClient() as c:
        for headers in ({}, {"Authorization": "Bearer nope"}):
            r = await c.post(url(daemon), json=body, headers={
                **headers, "Accept": "application/json, text/event-stream"})
            assert r.status_code == 401
            assert r.headers["WWW-Authenticate"].startswith(
                'Bearer resource_metadata="http://127.0.0.1:')
        meta = (await c.get(url(daemon).replace(
            "/mcp", "/.well-known/oauth-protected-resource/mcp"))).json()
        assert meta["resource"] == url(daemon)
        assert meta["bearer_methods_supported"] == ["header"]


async def test_an_api_token_without_mcp_call_is_403_naming_the_scope(daemon: Daemon
                                                                    ) -> None:
    """A token the daemon knows, refused for its scopes, is told so (403), not sent to
    authenticate again as an unknown one is (401); `corral mcp serve --token` says it."""
    secret = daemon.json("token", "create", "reader", "--scope", "tasks:read")["token"]
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}}}
    said = "forbidden: token reader lacks the mcp:call scope the gateway needs"
    async with httpx2.AsyncClient() as c:
        r = await c.post(url(daemon), json=body, headers={
            "Authorization": f"Bearer {secret}",
            "Accept": "application/json, text/event-stream"})
    assert r.status_code == 403 and r.json()["error"]["message"] == said, r.text
    served = daemon.cli("mcp", "serve", "--token", secret, input="")
    assert served.returncode == 1 and served.stderr == f"corral mcp serve: {said}\n", served


async def test_http_progress_and_cancellation_reach_upstream(daemon: Daemon) -> None:
    steps: list[float] = []

    async def progress(p: float, total: float | None, message: str | None) -> None:
        steps.append(p)

    async with http_session(daemon, FULL) as s:
        res = await s.call_tool("sc__progress", {"steps": 3}, progress_callback=progress)
        assert text(res) == "done" and steps == [1, 2, 3]
        call = asyncio.ensure_future(s.call_tool("sc__slow", {"seconds": 60}))
        await wait_until_async(lambda: in_flight(daemon, "sc") > 0)
        call.cancel()
        await wait_until_async(lambda: "cancelled" in daemon.logs("sc"))
        assert text(await s.call_tool("sc__echo", {"text": "after"})) == "after"


async def test_a_post_whose_call_is_cancelled_or_whose_session_ends_is_answered_so(
        daemon: Daemon) -> None:
    """A POST's one call runs in the POST's own handler: the client's
    notifications/cancelled of it answers that POST 202 with nothing (the spec: no
    response), the session's end (DELETE) answers it "request cancelled"; the server is
    told both times."""
    h = {"Authorization": f"Bearer {FULL}", "Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(headers=h, timeout=30) as c:
        r = await c.post(url(daemon), json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"}}})
        hs = {"Mcp-Session-Id": r.headers["Mcp-Session-Id"],
              "MCP-Protocol-Version": "2025-11-25"}
        told = daemon.cli("logs", "sc").stdout.count("cancelled")

        async def slow(rid: int) -> Any:
            call = asyncio.ensure_future(c.post(url(daemon), headers=hs, json={
                "jsonrpc": "2.0", "id": rid, "method": "tools/call",
                "params": {"name": "sc__slow", "arguments": {"seconds": 60}}}))
            await wait_until_async(lambda: in_flight(daemon, "sc") > 0)
            return call

        call = await slow(7)
        r = await c.post(url(daemon), headers=hs, json={
            "jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": 7}})
        assert r.status_code == 202
        got = await call
        assert (got.status_code, got.content) == (202, b"")
        await wait_until_async(lambda: in_flight(daemon, "sc") == 0)
        call = await slow(8)
        assert (await c.delete(url(daemon), headers=hs)).status_code == 200
        got = await call
        assert (got.status_code, got.json()) == (200, {"jsonrpc": "2.0", "id": 8, "error": {
            "code": -32003, "message": "request cancelled"}})
        await wait_until_async(
            lambda: daemon.logs("sc").count("cancelled") >= told + 2)


async def test_a_calls_trace_context_is_not_the_next_pipelined_requests() -> None:
    """A POST's call runs in its connection's request handler, which reads the request
    pipelined behind it: the client span the first was given (its client's traceparent,
    tracing off) ends with its call, and the second's call, which gave none, has none."""
    tmp = shared_tmpdir()
    record = tmp / "meta.jsonl"
    d = Daemon(tmp, f"""
[mcp_servers.rec]
command = ["{PY}", "{SCRIPTED}", "v2025-11"]
env = {{ SCRIPTED_RECORD = "{record}" }}
start_timeout = 30.0

[gateway]
listen = "127.0.0.1:0"
anonymous_tools = ["*"]
""")
    try:
        await asyncio.to_thread(d.start)
        where = (await asyncio.to_thread(url, d)).removeprefix("http://")
        host, port = where.removesuffix("/mcp").split(":")
        r, w = await asyncio.open_connection(host, int(port))

        def post(body: dict[str, Any], sid: str = "") -> bytes:
            data = json.dumps(body).encode()
            return (f"POST /mcp HTTP/1.1\r\nHost: {where}\r\nContent-Type: application/json"
                    f"\r\nAccept: application/json, text/event-stream\r\n"
                    f"{f'Mcp-Session-Id: {sid}' + chr(13) + chr(10) if sid else ''}"
                    f"Content-Length: {len(data)}\r\n\r\n").encode() + data

        async def answer() -> tuple[dict[str, str], bytes]:
            head = (await r.readuntil(b"\r\n\r\n")).decode().split("\r\n")
            fields = {k.lower(): v for k, v in (ln.split(": ", 1) for ln in head[1:] if ln)}
            return fields, await r.readexactly(int(fields["content-length"]))

        w.write(post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}}))
        sid = (await answer())[0]["mcp-session-id"]
        given = f"00-{'ab' * 16}-{'12' * 8}-01"
        w.write(b"".join(post({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {
            "name": "rec__echo", "arguments": {"text": "x"}, **extra}}, sid)
            for i, extra in ((2, {"_meta": {"traceparent": given}}), (3, {}))))
        got = [json.loads((await answer())[1]) for _ in range(2)]
        assert [(a["id"], a["result"]["content"][0]["text"]) for a in got] == [
            (2, "x"), (3, "x")], got
        w.close()
        seen = [json.loads(line) for line in record.read_text().splitlines()]
        assert [(s["meta"] or {}).get("traceparent") for s in seen] == [given, None]
        assert await asyncio.to_thread(d.stop) == 0
    finally:
        d.close()


async def test_a_call_that_asked_for_progress_and_got_none_is_answered_as_json(
        daemon: Daemon) -> None:
    """The official SDK refuses an SSE event over 1 MiB: a 2 MiB result of a call that
    asked for progress (and got none) comes as one JSON body, which it reads; one whose
    progress came first is still a stream (issue 57 item 4)."""
    steps: list[float] = []

    async def progress(p: float, total: float | None, message: str | None) -> None:
        steps.append(p)

    async with http_session(daemon, FULL) as s:
        res = await s.call_tool("big__big", {"mb": 2}, progress_callback=progress)
        assert len(text(res)) == 2 * 1048576 and steps == []
        assert text(await s.call_tool("sc__progress", {"steps": 2},
                                      progress_callback=progress)) == "done"
        assert steps == [1, 2]
    body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "sc__echo", "arguments": {"text": "x"}, "_meta": {
            "progressToken": 1, "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}}}
    r = httpx2.post(url(daemon), json=body, headers={
        "Authorization": f"Bearer {FULL}", "Accept": "application/json, text/event-stream",
        "Mcp-Method": "tools/call", "Mcp-Name": "sc__echo"})
    assert r.headers["Content-Type"] == "application/json", r.headers
    assert r.json()["result"]["content"] == [{"type": "text", "text": "x"}]


async def test_posts_are_answered_lean_until_one_streams_then_by_aiohttp(
        daemon: Daemon) -> None:
    """On the gateway's own site a POST of /mcp is read and answered without aiohttp's
    request and response (models/lean.py: no Server header of aiohttp's) until one is
    answered with a stream: that one is handed to aiohttp as it came, and every later one
    of its connection is aiohttp's. Each is answered alike either way."""
    sse = {"Accept": "application/json, text/event-stream"}
    limits = httpx2.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx2.AsyncClient(limits=limits, timeout=30) as c:
        async def post(msg: dict[str, Any], **headers: str) -> Any:
            return await c.post(url(daemon), json={"jsonrpc": "2.0", **msg},
                                headers={**sse, **headers})

        init = {"id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}}
        r = await post(init)
        origin = url(daemon).removesuffix("/mcp")
        assert (r.status_code, r.text, r.headers["WWW-Authenticate"]) == (
            401, "no bearer token", f'Bearer resource_metadata="{origin}/.well-known/'
                                    'oauth-protected-resource/mcp"')
        assert "Server" not in r.headers, r.headers
        auth = {"Authorization": f"Bearer {FULL}"}
        r = await post(init, **auth)
        assert r.status_code == 200 and "Server" not in r.headers, r.headers
        assert r.json()["result"]["serverInfo"]["name"] == "corral"
        auth["Mcp-Session-Id"] = r.headers["Mcp-Session-Id"]
        r = await post({"method": "notifications/initialized"}, **auth)
        assert r.status_code == 202 and "Server" not in r.headers, r.headers
        r = await post({"id": 2, "method": "tools/call", "params": {
            "name": "sc__progress", "arguments": {"steps": 2},
            "_meta": {"progressToken": "p"}}}, **auth)
        assert r.headers["Content-Type"] == "text/event-stream", r.headers
        assert r.headers["Server"].startswith("Python/"), r.headers
        events = [json.loads(line[5:]) for line in r.text.splitlines()
                  if line.startswith("data:")]
        assert [e.get("params", {}).get("progress") for e in events] == [1, 2, None]
        assert events[-1]["result"]["content"] == [{"type": "text", "text": "done"}]
        # (the same connection, aiohttp's now: its 202 is aiohttp's own response)
        r = await post({"method": "notifications/initialized"}, **auth)
        assert r.status_code == 202 and r.headers["Server"].startswith("Python/"), r.headers
        r = await post({"id": 3, "method": "tools/call", "params": {
            "name": "sc__echo", "arguments": {"text": "after"}}}, **auth)
        assert r.json()["result"]["content"] == [{"type": "text", "text": "after"}]


def in_flight(d: Daemon, name: str) -> int:
    st = {s["name"]: s for s in d.json("mcp", "status")["mcp_servers"]}
    n: int = st[name]["in_flight"]
    return n


async def test_an_agent_uses_the_pool_with_its_own_token(daemon: Daemon) -> None:
    """examples/gateway_agent.py: the official SDK's ClientSession, no corral SDK."""
    r = await asyncio.to_thread(daemon.cli, "run", "gwagent", "--input",
                                '{"title": "otters", "text": "hold hands"}', "--json")
    res = json.loads(r.stdout)
    assert res["status"] == "succeeded", res
    assert res["output"]["tools"] == ["ev__echo", "notes__add", "notes__get",
                                      "notes__search"]
    assert res["output"]["stored"] == "stored otters"
    assert res["output"]["refused"].startswith("tool sc__echo is not allowed for agent "
                                               "gwagent (its tools allowlist: ")


async def test_list_changed_reaches_http_sessions_and_sessions_survive_restart(
        daemon: Daemon) -> None:
    seen: list[Any] = []
    async with http_session(daemon, FULL, seen=seen) as s:
        await listed(s, "sc__echo")
        r = await asyncio.to_thread(daemon.cli, "reload")
        assert r.returncode == 0
        original = daemon.config.read_text()
        daemon.config.write_text(original.replace("[mcp_servers.sc]", "[mcp_servers.sc2]"))
        try:
            assert (await asyncio.to_thread(daemon.cli, "reload")).returncode == 0
            await wait_until_async(lambda: any(
                getattr(m, "method", None) == "notifications/tools/list_changed"
                for m in seen))
        finally:
            daemon.config.write_text(original)
            assert (await asyncio.to_thread(daemon.cli, "reload")).returncode == 0


async def test_an_api_token_with_mcp_call_opens_the_gateway_narrowed_by_its_glob(
        daemon: Daemon) -> None:
    """One token for every door (issue 36): `corral token create --scope mcp:call` opens
    /mcp; its agent glob narrows the tools to what those agents may call; a token without
    the scope is refused for it (403), not as an unknown one (401)."""
    def made(*args: str) -> str:
        r = daemon.cli("token", "create", *args, "--json")
        assert r.returncode == 0, r.stderr
        token: str = json.loads(r.stdout)["token"]
        return token

    caller = made("mcp-all", "--scope", "mcp:call")
    narrowed = made("mcp-gw", "--scope", "mcp:call", "--agents", "gw*")
    reader = made("no-mcp", "--scope", "agents:read")
    async with http_session(daemon, caller) as s:
        names = set(await listed(s, "notes__add", "ev__echo"))
        assert {"notes__add", "ev__echo", "sc__slow"} <= names
        res = await s.call_tool("ev__get-sum", {"a": 2, "b": 40})
        assert text(res) == "The sum of 2 and 40 is 42."
    async with http_session(daemon, narrowed) as s:
        # gwagent's allowlist: notes__* and ev__echo
        names = set(await listed(s, "notes__add", "ev__echo"))
        assert names == {"notes__add", "notes__get", "notes__search", "ev__echo"}
        with pytest.raises(MCPError) as err:
            await s.call_tool("sc__slow", {"seconds": 0})
        assert "is not allowed for gateway client token mcp-gw" in str(err.value)
    async with httpx2.AsyncClient() as c:
        r = await c.post(url(daemon), json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}}},
            headers={"Authorization": f"Bearer {reader}",
                     "Accept": "application/json, text/event-stream"})
        assert r.status_code == 403, r.text
    # revoked: refused at once
    assert daemon.cli("token", "revoke", "mcp-all").returncode == 0
    with pytest.raises(Exception):  # noqa: B017 - the SDK's client raises its own group
        async with http_session(daemon, caller) as s:
            await s.list_tools()
    st = daemon.json("mcp", "status")["gateway"]
    assert st["clients"]["token mcp-all"]["calls"] >= 1


async def test_a_token_that_opened_the_gateway_is_refused_once_its_client_is_removed(
        daemon: Daemon) -> None:
    """A token's digest is computed once (tokendigests.py): once its client is gone from
    the tokens file, the same token, known before, is 401."""
    tokens = daemon.dir / "tokens.toml"
    before = tokens.read_text()
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}}}
    secret = "gone-soon-token-for-tests"
    headers = {"Authorization": f"Bearer {secret}",
               "Accept": "application/json, text/event-stream"}
    try:
        tokens.write_text(before + f'\n[clients.gone]\ntoken_sha256 = "{sha(secret)}"\n')
        assert "client gone added" in (await asyncio.to_thread(daemon.cli, "reload")).stdout
        async with httpx2.AsyncClient() as c:
            for _ in range(2):  # the second time, from what the first one made known
                r = await c.post(url(daemon), json=body, headers=headers)
                assert r.status_code == 200, r.text
            tokens.write_text(before)
            said = (await asyncio.to_thread(daemon.cli, "reload")).stdout
            assert "client gone removed" in said
            r = await c.post(url(daemon), json=body, headers=headers)
            assert r.status_code == 401, r.text
    finally:
        if tokens.read_text() != before:
            tokens.write_text(before)
            await asyncio.to_thread(daemon.cli, "reload")


def test_reload_says_what_it_changed_of_the_gateway(daemon: Daemon) -> None:
    tokens = daemon.dir / "tokens.toml"
    before = tokens.read_text()
    try:
        tokens.write_text(before + f'\n[clients.extra]\ntoken_sha256 = "{sha("x" * 20)}"\n')
        r = daemon.cli("reload")
        assert r.returncode == 0, r.stderr
        rows = [" ".join(line.split()) for line in r.stdout.splitlines()]
        assert "gateway client extra added" in rows, r.stdout
        assert "nothing changed" not in r.stdout
        assert daemon.json("reload")["gateway"] == []  # applied: nothing more to say
    finally:
        tokens.write_text(before)
        assert "client extra removed" in daemon.cli("reload").stdout
