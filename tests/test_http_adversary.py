"""The REST API under an adversary (issue 34, findings 7, 10, 11, 12, 14, 15 and 18;
decisions 158 and 159): a body is read only after its caller may make the call, and
decoded into the method's types within its route's limit; a task is never run for a
request that is refused; a revoked token's streams end; a token limited to some agents
is sent no other agent's events; every malformed body is a 400 problem; a refused HTTP
head is one counted log line at most; and every path docs/http.md names is served."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from corral import jsonrpc
from corral.daemon.http import route
from corral.daemon.http.resources import PREFIX, RESOURCES
from corral.daemon.http.rest import API_KEY

from .conftest import ROOT
from .daemon_harness import hello, problem, sleeper
from .test_gateway_stdio import wait_until_async
from .test_http_api import PROBLEM, SOCKET, Api, serving, sse_events
from .test_daemon_cli import tmp
from .test_http_hostile import STALL, Http, Probe, http
from .test_ui import login_link, page

__all__ = ["http", "tmp"]

MiB = 1024 * 1024


# -- finding 7: the scope before the body, the body within its route's limit --------------
def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def reset_peak(pid: int) -> int:
    """Start the process's peak RSS (VmHWM) again from its RSS now (clear_refs 5, as
    root); returns that RSS in bytes."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    assert _status_kib(pid, "VmHWM") <= _status_kib(pid, "VmRSS") + 1024
    return _status_kib(pid, "VmRSS") * 1024


def token(h: Http, name: str, *scopes: str) -> str:
    args = [a for s in scopes for a in ("--scope", s)]
    r = h.d.cli("token", "create", name, *args, "--json")
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)["token"])


async def post_all(port: int, path: str, secret: str, body: bytes, clients: int,
                   rounds: int) -> list[tuple[int, Any]]:
    """`rounds` requests on each of `clients` connections at once: each answer's status
    and its JSON."""
    got: list[tuple[int, Any]] = []
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}

    async def client() -> None:
        async with aiohttp.ClientSession() as s:
            for _ in range(rounds):
                async with s.post(f"http://127.0.0.1:{port}{path}", data=body,
                                  headers=headers) as r:
                    got.append((r.status, msgspec.json.decode(await r.read())))

    await asyncio.gather(*(client() for _ in range(clients)))
    return got


@pytest.mark.deadline(180)
def test_a_16_mib_body_of_tiny_values_is_refused_before_it_is_read(http: Http) -> None:
    """A token with agents:read alone sends 16 MiB of `[{},{},...]` to a write, three
    clients at once, twice each: every one is a 403 naming the scope, the daemon's peak
    RSS does not grow by the body's Python objects (about 400 MB a request when the body
    was decoded first) and its control socket keeps answering within the loop's budget.
    A token that holds the scope is refused by the route's limit, before reading too."""
    assert http.d.proc is not None
    pid = http.d.proc.pid
    reader = token(http, "reader", "agents:read")
    writer = token(http, "writer", "agents:write")
    body = b"[" + b"{}," * (16 * MiB // 3 - 1) + b"{}]"
    assert len(body) <= route.MAX_BODY
    rss0 = reset_peak(pid)
    probe = Probe(http.d)
    refused = asyncio.run(post_all(http.port, "/api/v1/agents/hello/stop", reader, body,
                                   clients=3, rounds=2))
    assert refused == [(403, problem(
        403, "forbidden", "forbidden: agents.stop needs the agents:write scope, which "
                          "token reader does not hold", jsonrpc.FORBIDDEN))] * 6
    too_big = asyncio.run(post_all(http.port, "/api/v1/agents/hello/stop", writer, body,
                                   clients=3, rounds=1))
    assert too_big == [(413, problem(
        413, "request too large", f"{len(body)} bytes is over the {route.SMALL_BODY}-byte "
                                  "limit"))] * 3
    seen = probe.result()
    grown = _status_kib(pid, "VmHWM") * 1024 - rss0
    assert grown < 48 * MiB, f"the daemon's peak RSS grew {grown / MiB:.0f} MiB"
    assert seen["calls"] > 10 and seen["worst"] < STALL, seen
    assert http.d.status()["hello#0"]["state"] == "ready"  # nothing was stopped


# -- finding 10: a task is never run for a refused request --------------------------------
@pytest.mark.deadline(60)
async def test_a_wait_without_tasks_read_is_refused_and_runs_nothing(tmp_path: Path
                                                                      ) -> None:
    async with serving(tmp_path, hello("web-1")) as api:
        await api.token("runner", "tasks:run")
        submit = {"agent": "web-1", "input": {"name": "a"}}
        for _ in range(2):  # a client retrying after the 403 runs nothing either
            status, body, r = await api.ask("POST", "/tasks?wait=5", "runner", submit)
            assert (status, r.content_type, body) == (403, PROBLEM, problem(
                403, "forbidden", "forbidden: tasks.get needs the tasks:read scope, which "
                                  "token runner does not hold", jsonrpc.FORBIDDEN))
        assert (await api.d.dispatcher.call(SOCKET, "tasks.list")).tasks == []
        # without the wait it needs tasks:run alone, and runs once
        status, body, _ = await api.ask("POST", "/tasks", "runner", submit)
        assert status == 202
        listed = (await api.d.dispatcher.call(SOCKET, "tasks.list")).tasks
        assert [t.task_id for t in listed] == [body["task_id"]]


# -- finding 11: revoking a token ends what it holds open ---------------------------------
async def ended(response: aiohttp.ClientResponse, timeout: float = 10.0) -> bytes:
    """What is left of a stream, read until it ends (a clean end of the chunked body:
    aiohttp raises on a broken one)."""
    rest = b""
    async with asyncio.timeout(timeout):
        while chunk := await response.content.read(65536):
            rest += chunk
    return rest


@pytest.mark.deadline(90)
async def test_revoking_a_token_ends_its_streams_and_its_dashboard_sessions(
        tmp_path: Path) -> None:
    async with serving(tmp_path, hello("web-1")) as api:
        d = api.d
        await api.token("ev", "events", "agents:read", "metrics:read", "admin")
        await api.token("other", "events")
        auth = {"Authorization": f"Bearer {api.tokens['ev']}"}
        ring = api_of(d).ring
        # a stream from the ring, one of the token's own follows, and the dashboard's
        # stream of a session the token logged in
        events = await api.http.get(api.base + "/events/stream?pattern=t.*", headers=auth)
        replicas = await api.http.get(api.base + "/replicas/stream", headers=auth)
        status, link, _ = await api.ask("POST", "/ui/login", "ev")
        assert status == 200
        async with page(d) as p:
            await p.login(link["url"])
            board = await p.http.get(p.base + "/ui/stream/stats.watch?interval=0.2")
            assert board.status == 200
            assert (await sse_events(board, 1))[0]["event"] == "stats.sample"
            others = await api.http.get(
                api.base + "/events/stream?pattern=t.*",
                headers={"Authorization": f"Bearer {api.tokens['other']}"})
            assert (await sse_events(replicas, 1))[0]["event"] == "agents.snapshot"
            await wait_until_async(lambda: len(ring.readers) == 2 and ring.task is not None
                                   and d.services.sup.events.followers)
            await d.dispatcher.call(SOCKET, "events.publish", {"topic": "t.before",
                                                                "data": 1})
            assert (await sse_events(events, 1))[0]["data"]["topic"] == "t.before"
            assert (await sse_events(others, 1))[0]["data"]["topic"] == "t.before"

            await d.dispatcher.call(SOCKET, "tokens.revoke", {"name": "ev"})
            await d.dispatcher.call(SOCKET, "events.publish", {"topic": "t.after",
                                                                "data": 2})
            # each of its streams ends, whole, and is sent nothing published after
            for stream in (events, replicas, board):
                assert b"t.after" not in await ended(stream)
            assert d.services.ui is not None and d.services.ui.sessions == {}
            assert (await p.get("/ui/session"))[0] == 401
            # another token's stream goes on
            assert (await sse_events(others, 1))[0]["data"]["topic"] == "t.after"
            others.close()
        await wait_until_async(lambda: api_of(d).streams.count == 0 and not api_of(
            d).held_by)

        # a token that expires ends its streams at its expiry, not when its client goes
        brief = await d.dispatcher.call(SOCKET, "tokens.create", {
            "name": "brief", "scopes": ["events"], "expires_in": 2.0})
        t0 = time.monotonic()
        async with api.http.get(api.base + "/events/stream", headers={
                "Authorization": f"Bearer {brief.token}"}) as stream:
            assert stream.status == 200
            await ended(stream)
        assert 1.0 < time.monotonic() - t0 < 8.0
        await wait_until_async(lambda: api_of(d).streams.count == 0)


def api_of(d: Any) -> Any:
    return d.http_server.app[API_KEY]
