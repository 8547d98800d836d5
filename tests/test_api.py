"""The one command layer (daemon/api.py): every front end calls one Dispatcher, so an HTTP
route for an existing method is one line, and the rules (params, scopes, audit, errors)
hold for it as they do for the socket. Against a real daemon, in this process."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from corral import jsonrpc
from corral.daemon.api import Dispatcher
from corral.daemon.caller import Caller, Discard
from corral.daemon.daemon import Daemon
from corral.daemon.http.route import route
from corral.jsonrpc import RpcError
from corral.methods import REGISTRY, SCOPES
from corral.supervisor import State

from .daemon_harness import free_port, hello, in_process

TOKENS = {
    "reader": frozenset({"agents:read"}),
    "writer": frozenset({"agents:read", "agents:write"}),
}


def bearer(request: web.Request) -> Caller:
    """A stand-in for the HTTP API's tokens: a name and its scopes."""
    token = request.headers.get("Authorization", "").removeprefix("Bearer ")
    if token not in TOKENS:
        raise RpcError(jsonrpc.UNAUTHORIZED, "unauthorized: no valid bearer token")
    return Caller(via="http", token=token, scopes=TOKENS[token])


def running(tmp_path: Path) -> contextlib.AbstractAsyncContextManager[Daemon]:
    return in_process(tmp_path, hello("hello"))


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _post(url: str, token: str | None, body: Any = None) -> tuple[int, str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.post(
            url, data=msgspec.json.encode(body) if body is not None else b"",
            headers=headers) as r:
        return r.status, r.content_type, await r.json(content_type=None)


@pytest.mark.deadline(90)
async def test_an_http_route_for_an_existing_method_needs_no_handler(tmp_path: Path) -> None:
    async with running(tmp_path) as d:
        app = web.Application()
        # the whole of serving a method over HTTP: one line each
        app.router.add_post("/api/v1/agents/status", route(d.dispatcher, "agents.status",
                                                           bearer))
        app.router.add_post("/api/v1/agents/stop", route(d.dispatcher, "agents.stop", bearer))
        sup = d.sup
        pid = sup.agent("hello").replicas[0].pid
        async with serving(app) as base:
            # the same answer as the socket's (the same handler)
            status, kind, body = await _post(f"{base}/api/v1/agents/status", "reader")
            assert (status, kind) == (200, "application/json")
            socket_answer = msgspec.to_builtins(
                await d.dispatcher.call(Caller(via="socket"), "agents.status"))
            steady = ("name", "replica", "state", "pid", "restarts", "last_exit")
            assert set(body) == set(socket_answer)
            assert [{k: a[k] for k in steady} for a in body["agents"]] == [
                {k: a[k] for k in steady} for a in socket_answer["agents"]]
            assert [(a["name"], a["state"], a["pid"]) for a in body["agents"]] == [
                ("hello", "ready", pid)]

            # no token: 401, nothing run
            status, kind, body = await _post(f"{base}/api/v1/agents/stop", None,
                                              {"names": ["hello"]})
            assert (status, kind, body["detail"]) == (
                401, "application/problem+json", "unauthorized: no valid bearer token")

            # a token without the scope: 403 naming it; the agent untouched, no audit row
            status, kind, body = await _post(f"{base}/api/v1/agents/stop", "reader",
                                              {"names": ["hello"]})
            assert (status, kind) == (403, "application/problem+json")
            assert body == {"type": "about:blank", "title": "forbidden", "status": 403,
                            "code": jsonrpc.FORBIDDEN,
                            "detail": "forbidden: agents.stop needs the agents:write "
                                      "scope, which token reader does not hold"}
            r = sup.agent("hello").replicas[0]
            assert (r.state, r.pid) == (State.READY, pid)

            # params of the wrong shape: 400 with the path of the fault
            status, _, body = await _post(f"{base}/api/v1/agents/stop", "writer",
                                          {"names": "hello"})
            assert (status, body["detail"]) == (
                400, "invalid params: Expected `array`, got `str` - at `$.names`")
            assert (r.state, r.pid) == (State.READY, pid)

            # an unknown agent: 404, as the socket says it
            status, _, body = await _post(f"{base}/api/v1/agents/stop", "writer",
                                          {"names": ["nobody"]})
            assert (status, body["detail"]) == (404, "no such agent: nobody (agents: hello)")

            # the writer may: the agent stops, and the call is audited under its name
            status, _, body = await _post(f"{base}/api/v1/agents/stop", "writer",
                                          {"names": ["hello"]})
            assert (status, body) == (200, {"stopped": ["hello"]})
            assert r.state == State.TERMINATED
        lines = await d.dispatcher.call(Caller(via="socket"), "logs.tail",
                                        {"names": ["corral"], "lines": 200})
        audit = [ln.text for ln in lines.lines if ln.stream == "audit"]
        assert 'token writer: agents.stop {"names":["hello"],"all":false} -> ok' in audit
        assert not any("token reader" in t for t in audit)
        # an error is audited too, with its message
        assert ('token writer: agents.stop {"names":["nobody"],"all":false} -> error: '
                'no such agent: nobody (agents: hello)') in audit


def test_every_method_names_a_known_scope_and_has_a_handler() -> None:
    from corral.daemon.commandtable import HANDLERS

    assert sorted(set(REGISTRY) - set(HANDLERS.table)) == []
    assert {m.scope for m in REGISTRY.values()} <= SCOPES
    # a read never needs a write scope, and only writes are audited (a decision on an
    # ask is a write of the approvals scope, which holds its reads too)
    assert [m.name for m in REGISTRY.values() if m.mutating and not (
        m.scope.endswith((":write", ":run"))
        or m.scope in ("admin", "events", "mcp:call", "approvals"))] == []


async def test_calls_wait_for_the_services_and_bad_calls_are_refused_before() -> None:
    from corral.daemon.commandtable import HANDLERS

    audited: list[tuple[str, str]] = []
    d: Dispatcher[Any] = Dispatcher(HANDLERS, lambda c, m, p, o, line=True: audited.append((m, o)))
    caller = Caller(via="test", scopes=frozenset({"agents:read"}))
    # refused at once, before any service exists: unknown method, wrong params, scope
    with pytest.raises(RpcError) as e:
        d.dispatch(caller, "agents.nothing", None, Discard())
    assert (e.value.code, e.value.message) == (jsonrpc.METHOD_NOT_FOUND,
                                               "method not found: agents.nothing")
    # a caller's method name never names a module to import (handlers are imported by
    # domain on first use, from a fixed table: decision 926)
    before = set(sys.modules)
    for name in ("os.system", "importlib.import_module", "..handlers", "agents", ""):
        with pytest.raises(RpcError) as e:
            d.dispatch(caller, name, None, Discard())
        assert (e.value.code, e.value.message) == (
            jsonrpc.METHOD_NOT_FOUND, f"method not found: {name or repr(name)}")
    assert set(sys.modules) - before == set()
    with pytest.raises(RpcError) as e:
        d.dispatch(caller, "agents.status", {"names": 1}, Discard())
    assert e.value.code == jsonrpc.INVALID_PARAMS
    with pytest.raises(RpcError) as e:
        d.dispatch(caller, "daemon.shutdown", None, Discard())
    assert (e.value.code, e.value.message) == (
        jsonrpc.FORBIDDEN, "forbidden: daemon.shutdown needs the admin scope, which uid -1 "
                           "pid -1 does not hold")
    assert audited == []

    # a good call waits until the services are there
    class Fake:
        def __init__(self) -> None:
            self.stopped = 0

        def request_stop(self, now: bool) -> None:
            self.stopped += 1

        def __getattr__(self, name: str) -> None:
            return None  # the daemon's other parts, which a shutdown does not use

    admin = Caller(via="test")
    waiting = asyncio.ensure_future(d.call(admin, "daemon.shutdown"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not waiting.done()
    fake = Fake()
    d.serve(fake)
    assert msgspec.to_builtins(await asyncio.wait_for(waiting, 5)) == {
        "stopping": True, "drained": None}
    await asyncio.sleep(0)  # the stop is asked for in the next turn
    assert fake.stopped == 1
    assert audited == [("daemon.shutdown", "ok")]
